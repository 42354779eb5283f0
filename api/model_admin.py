"""/v1/models/... administration: move aliases (promote, roll back), train, optimize, benchmark, evaluate, report.

Training, optimizing and benchmarking are `train` jobs executed on the `training` queue by workers; the API only
validates, stores the job and publishes its id (it never imports TensorFlow).
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import PurePath
from typing import Any

from flask import Response, jsonify, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Field

from api.auth import current_tenant
from api.deps import db, services
from api.models import model_public
from api.webhooks import attach_job_webhook, read_job_webhook
from shared.config.errors import ModelNotFound, ModelNotOptimizable, PayloadTooLarge, ValidationFailed
from shared.db.models import ModelVersion
from shared.jobs import lifecycle as jobstore
from shared.registry.model_jobs import (
    MNIST,
    UPLOAD_SUFFIXES,
    EvaluateCreate,
    ExportCreate,
    Operation,
    OptimizeCreate,
    TrainingCreate,
    check_training_dataset,
    create_model_job,
)
from shared.registry.versions import (
    ALIAS_PATTERN,
    NAME_PATTERN,
    check_name_usable,
    get_version,
    list_versions,
    move_alias,
    parse_ref,
)
from shared.runtime.celery_app import TRAIN_TASK, train_time_limit
from shared.schemas.public import JobPublic, JsonInt, ModelPublic, Problem
from shared.tenancy.quotas import admit_job

log = logging.getLogger(__name__)
bp = APIBlueprint(
    "model_admin",
    __name__,
    url_prefix="/v1/models",
    abp_tags=[Tag(name="models")],
    abp_responses={"404": Problem, "422": Problem},
)


class ModelPath(BaseModel):
    name: str = Field(description="The model's name, e.g. mnist-cnn.", pattern=NAME_PATTERN)


class AliasPath(BaseModel):
    name: str = Field(description="The model's name.", pattern=NAME_PATTERN)
    alias: str = Field(
        description="The alias to create or move, e.g. production or canary.",
        pattern=ALIAS_PATTERN,
    )


class VersionPath(BaseModel):
    name: str = Field(description="The model's name.", pattern=NAME_PATTERN)
    version: int = Field(ge=1, le=2**31 - 1, description="The version number.")


class AliasMove(BaseModel):
    """Where an alias should point."""

    version: JsonInt = Field(ge=1, le=2**31 - 1, description="An existing version of the model.")


class ReportRow(BaseModel):
    """One version in the comparison report."""

    ref: str
    format: str
    variant: str
    parent: str | None
    aliases: list[str]
    size_bytes: int
    test_accuracy: float | None
    latency_ms_batch1: float | None = Field(description="Median ms of one forward pass of 1 image, on a worker.")
    throughput_batch64: float | None = Field(description="Images per second at batch 64, on a worker.")
    realworld_accuracy: float | None = Field(
        None,
        description="Accuracy on held-out digits rendered as users send them (POST .../evaluate; `overall`), "
        "None until evaluated.",
    )


class ModelReport(BaseModel):
    name: str
    rows: list[ReportRow]


def _model_name(name: str) -> str:
    ref = parse_ref(name)  # 422 unless a valid model name
    if ref.version is not None or ref.alias is not None:
        raise ValidationFailed(f"{name!r} is a model reference; this path takes a model name only")
    return ref.name


def _model_public(name: str) -> ModelPublic:
    session, tenant = db(), current_tenant()
    return model_public(session, name, list_versions(session, name, tenant_id=tenant), tenant)


@bp.put(
    "/<name>/aliases/<alias>",
    summary="Promote or roll back: point an alias at a version",
    responses={"200": ModelPublic},
)
def put_alias(path: AliasPath, body: AliasMove) -> Response:
    """Creates or moves `name@alias`; workers use the new version from their next job (no restart)."""
    ref = parse_ref(f"{path.name}@{path.alias}")
    session = db()
    move_alias(session, name=ref.name, alias=ref.alias or "", version=body.version, tenant_id=current_tenant())
    session.commit()
    log.info("alias %s now points at version %d", ref, body.version)
    return jsonify(_model_public(ref.name).model_dump(mode="json"))


def _queue(
    operation: Operation, model_ref: str, params: dict[str, Any], webhook: dict[str, Any] | None = None
) -> tuple[Response, int, dict[str, str]]:
    session = db()
    job = create_model_job(
        session=session, operation=operation, model_ref=model_ref, params=params, tenant_id=current_tenant()
    )
    attach_job_webhook(session, job, webhook)
    admit_job(session, job, services().settings)  # 429 queue-full past the tenant's caps
    session.commit()
    _dispatch(job.id)
    session.refresh(job)
    return jsonify(JobPublic.of(job).model_dump(mode="json")), 202, {"Location": f"/v1/jobs/{job.id}"}


def _dispatch(job_id: uuid.UUID) -> None:
    svc = services()
    try:
        svc.celery.send_task(TRAIN_TASK, args=[str(job_id)], time_limit=train_time_limit(svc.settings))
    except Exception:  # the job row stays queued; POST again or cancel it
        log.warning("publishing training-queue job %s failed", job_id, exc_info=True)
        return
    with svc.sessions.begin() as session:
        jobstore.mark_dispatched(session, [job_id])


@bp.post(
    "/<name>/trainings",
    summary="Train a new version",
    responses={"202": JobPublic, "404": Problem, "413": Problem, "422": Problem},
)
def create_training(path: ModelPath, body: TrainingCreate) -> tuple[Response, int, dict[str, str]]:
    """Queues a training job; poll `GET /v1/jobs/{id}` for the live per-epoch history in `result.history`.
    On success the new version is registered (with no alias: promote it with PUT .../aliases/{alias}).
    `dataset` is `mnist` or an uploaded dataset's id: it must be labelled with two classes or more and hold
    28x28 arrays or decodable image files (422 `dataset-not-trainable`), be this tenant's (404) and hold at most
    INFERQ_TRAIN_MAX_ITEMS images (413). The new version's labels are the dataset's classes."""
    name = _model_name(path.name)
    check_name_usable(db(), name, current_tenant())  # another tenant's private model: 404, as if absent
    settings = services().settings
    body.check_limits(settings)
    if body.dataset != MNIST:
        check_training_dataset(session=db(), settings=settings, dataset_id=body.dataset, tenant_id=current_tenant())
    webhook = read_job_webhook(request, settings)
    return _queue(Operation.TRAIN, name, body.model_dump(exclude={"webhook", "webhook_events_filter"}), webhook)


def _dataset_read(mv: ModelVersion) -> dict[str, str]:
    """{"dataset": id} when the version was trained on an uploaded dataset: optimizing or evaluating it reads that
    dataset's test split again, and a dataset named so by an unfinished job cannot be deleted (409 dataset-in-use)."""
    dataset = str(mv.params.get("dataset_request") or MNIST)
    return {} if dataset == MNIST else {"dataset": dataset}


def _source(path: VersionPath) -> ModelVersion:
    return get_version(db(), _model_name(path.name), path.version, tenant_id=current_tenant())


@bp.post(
    "/<name>/versions/<version>/optimize",
    summary="Compress and quantize a version to TFLite",
    responses={"202": JobPublic, "409": Problem},
)
def create_optimization(path: VersionPath, body: OptimizeCreate) -> tuple[Response, int, dict[str, str]]:
    """Queues a conversion of a Keras version to TFLite (dynamic-range, float16 or int8), evaluated on the same
    test split and registered as a new version whose `variant` is the method and `parent` the source."""
    mv = _source(path)
    if mv.format != "keras":
        raise ModelNotOptimizable(f"{mv.ref} is a {mv.format} model; only keras versions can be converted")
    return _queue(Operation.OPTIMIZE, mv.ref, {**body.model_dump(), **_dataset_read(mv)})


@bp.post(
    "/<name>/versions/<version>/benchmark",
    summary="Measure a version's latency and throughput on a worker",
    responses={"202": JobPublic},
)
def create_benchmark(path: VersionPath) -> tuple[Response, int, dict[str, str]]:
    """Queues a benchmark (latency at batch 1, throughput at batch 64) stored in the version's metrics."""
    mv = _source(path)
    return _queue(Operation.BENCHMARK, mv.ref, {})


@bp.post(
    "/<name>/versions/<version>/evaluate",
    summary="Measure a version's accuracy on pictures as users send them",
    responses={"202": JobPublic},
)
def create_evaluation(path: VersionPath, body: EvaluateCreate) -> tuple[Response, int, dict[str, str]]:
    """Queues the real-world evaluation: held-out test digits (never a training image) rendered through named
    corruptions (edge crops, 8x8 bitmaps, photos, JPEG, ruled lines, ...) and blank or noise pictures, each as
    PNG/JPEG bytes read by the same preprocessing and served model as a classify job. The job's `result` holds
    accuracy per corruption, `overall` and `non_digits_labelled` (should be 0); the version's metrics keep it as
    `realworld` and the report shows `realworld_accuracy`."""
    mv = _source(path)
    return _queue(Operation.EVALUATE, mv.ref, {**body.model_dump(), **_dataset_read(mv)})


@bp.post(
    "/<name>/versions/<version>/export",
    summary="Export a version for TF Serving or as ONNX",
    responses={"202": JobPublic, "409": Problem},
)
def create_export(path: VersionPath, body: ExportCreate) -> tuple[Response, int, dict[str, str]]:
    """Queues an export of a Keras version: `tf-serving` writes a SavedModel in TF Serving's `<name>/<version>/`
    layout under `data_dir/exports/tf-serving/`; `onnx` writes `data_dir/exports/onnx/<name>/<version>/model.onnx`
    (tf2onnx, opset 17), checked with onnx.checker and compared with Keras on a few inputs (`result.max_abs_diff`,
    at most 1e-4, and `result.size_bytes`). The file's path relative to data_dir is the job's `result.path`."""
    mv = _source(path)
    if mv.format != "keras":
        raise ModelNotOptimizable(f"{mv.ref} is a {mv.format} model; only keras versions can be exported")
    return _queue(Operation.EXPORT, mv.ref, body.model_dump())


@bp.post("/<name>/uploads", summary="Bring your own model", responses={"202": JobPublic, "413": Problem})
def create_upload(path: ModelPath) -> tuple[Response, int, dict[str, str]]:
    """Multipart: `file` (.keras, .tflite, or a .zip of a TensorFlow SavedModel), `labels` (a JSON list, one per
    output class) and optional `input_spec` (JSON; default MNIST 28x28x1 in [0, 1]). A worker loads it in safe
    mode (Keras Lambda layers are refused), smoke-tests it on one input and registers it as a new version."""
    name = _model_name(path.name)
    check_name_usable(db(), name, current_tenant())  # another tenant's private model: 404, as if absent
    svc = services()
    upload = request.files.get("file")
    if upload is None or not upload.filename:
        raise ValidationFailed("send the model as a multipart file field named 'file'")
    suffix = PurePath(upload.filename).suffix.lower()
    if suffix not in UPLOAD_SUFFIXES:
        raise ValidationFailed(f"the file must end in one of {', '.join(UPLOAD_SUFFIXES)}, got {upload.filename!r}")
    data = upload.stream.read(svc.settings.model_upload_max_bytes + 1)
    if len(data) > svc.settings.model_upload_max_bytes:
        raise PayloadTooLarge(
            f"the model file is over {svc.settings.model_upload_max_bytes} bytes (INFERQ_MODEL_UPLOAD_MAX_BYTES)"
        )
    labels = _json_field("labels", list)
    if not labels or not all(isinstance(x, str) and x for x in labels):
        raise ValidationFailed("labels must be a JSON list of non-empty strings, one per output class")
    params = {"filename": PurePath(upload.filename).name, "suffix": suffix, "labels": labels}
    spec = _json_field("input_spec", dict, required=False)
    if spec is not None:
        params["input_spec"] = spec
    session = db()
    job = create_model_job(
        session=session, operation=Operation.IMPORT, model_ref=name, params=params, tenant_id=current_tenant()
    )
    key = f"model-uploads/{job.id}/model{suffix}"
    svc.store.put(key, data)
    job.params = {**job.params, "blob_key": key}
    try:
        admit_job(session, job, svc.settings)  # 429 queue-full past the tenant's caps
        session.commit()
    except BaseException:
        session.rollback()
        svc.store.delete(key)
        raise
    _dispatch(job.id)
    session.refresh(job)
    return jsonify(JobPublic.of(job).model_dump(mode="json")), 202, {"Location": f"/v1/jobs/{job.id}"}


def _json_field(field: str, kind: type, required: bool = True) -> Any:
    raw = request.form.get(field)
    if raw in (None, ""):
        if required:
            raise ValidationFailed(f"the form field {field!r} is required")
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        raise ValidationFailed(f"the form field {field!r} is not valid JSON") from None
    if not isinstance(value, kind):
        raise ValidationFailed(f"the form field {field!r} must be a JSON {kind.__name__}")
    return value


def report_row(mv: ModelVersion, refs: dict[int, str], aliases: list[str]) -> ReportRow:
    """One version's size, accuracy and measured speed (None where not measured yet)."""
    bench = mv.metrics.get("benchmark") or {}
    return ReportRow(
        ref=mv.ref,
        format=mv.format,
        variant=mv.variant,
        parent=refs.get(mv.parent_id) if mv.parent_id else None,
        aliases=sorted(aliases),
        size_bytes=mv.size_bytes,
        test_accuracy=mv.metrics.get("test_accuracy"),
        latency_ms_batch1=bench.get("latency_ms_batch1"),
        throughput_batch64=bench.get("throughput_batch64"),
        realworld_accuracy=(mv.metrics.get("realworld") or {}).get("overall"),
    )


@bp.get("/<name>/report", summary="Compare a model's versions", responses={"200": ModelReport})
def get_report(path: ModelPath) -> Response:
    """Every version with file size, test accuracy, and latency/throughput measured by a worker."""
    session, tenant = db(), current_tenant()
    versions = list_versions(session, _model_name(path.name), tenant_id=tenant)
    if not versions:
        raise ModelNotFound(f"model {path.name!r} does not exist; GET /v1/models lists the models")
    refs = {mv.id: mv.ref for mv in versions}
    shown = model_public(session, versions[0].name, versions, tenant)
    aliases = {v.version: v.aliases for v in shown.versions}
    rows = [report_row(mv, refs, aliases[mv.version]) for mv in sorted(versions, key=lambda v: v.version)]
    return jsonify(ModelReport(name=versions[0].name, rows=rows).model_dump(mode="json"))
