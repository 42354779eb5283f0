"""Request and response bodies (named by role) and the task payloads that travel through Redis."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from shared.config.status import JobKind, JobStatus
from shared.db.models import PUBLIC_ALIAS, Job, JobItem, ModelVersion, utcnow
from shared.inputs.imaging import WARNINGS, pixels_png


def _json_number(value: Any) -> Any:
    """A JSON number, not a boolean or a string: pydantic's lax mode would read true as 1 and "5" as 5, and its
    strict mode would refuse 5.0, which JSON Schema counts as an integer."""
    if isinstance(value, bool | str | bytes):
        raise ValueError("must be a JSON number")
    return value


JsonInt = Annotated[int, BeforeValidator(_json_number)]  # 5 or 5.0; not 5.5, "5" or true
JsonFloat = Annotated[float, BeforeValidator(_json_number)]  # 0.5 or 1; not "0.5" or true


DEADLINE_HEADER = "Inferq-Deadline-S"
DEADLINE_DOC = (
    "Seconds from submission within which the job must start; one that has not started by then ends as `expired` "
    "without running (a score job: its chunks not started by then are skipped, and `counts.expired` says how many "
    f"items that left). The `{DEADLINE_HEADER}` request header says the same; at most INFERQ_MAX_DEADLINE_S."
)

PRIORITY_DOC = (
    "0 (low), 1 (normal, the default) or 2 (high): workers take a waiting higher-priority classify job before lower "
    "ones queued earlier (docs/lanes.md). A tenant may be capped below 2 (INFERQ_MAX_PRIORITY, "
    "INFERQ_TENANT_MAX_PRIORITY): 403 priority-not-allowed above its cap."
)


class ImageIn(BaseModel):
    """One image sent as JSON."""

    data: str = Field(description="The encoded image file (PNG, JPEG, WebP, BMP or GIF), base64.")
    filename: str | None = Field(None, max_length=255, description="A name to show with the prediction.")


class JobCreate(BaseModel):
    """A classify job sent as JSON (the same fields are accepted as multipart form fields with files)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    images: list[ImageIn] = Field(min_length=1, description="The images to classify.")
    model: str | None = Field(None, description="'name', 'name:version' or 'name@alias'; default model if absent.")
    top_k: JsonInt | None = Field(None, ge=1, description="How many ranked labels to return per image.")
    explain: bool = Field(
        False,
        description="Also return, per prediction, the 28x28 picture the model saw (`input_image`) and a saliency "
        "map (`explanation`): which pixels drove the predicted label. Costs extra model passes in the worker.",
    )
    deadline_s: JsonFloat | None = Field(None, gt=0, description=DEADLINE_DOC)
    priority: JsonInt | None = Field(None, ge=0, le=2, description=PRIORITY_DOC)
    webhook: str | None = Field(None, description="URL that receives this job's events, signed (see Webhooks).")
    webhook_events_filter: list[str] | None = Field(None, description="Events to send: start, progress, completed.")


class LabelScore(BaseModel):
    label: str
    confidence: float


def _warnings_doc() -> str:
    """The `warnings` field's description: every code and its meaning, from shared.inputs.imaging.WARNINGS."""
    codes = "; ".join(f"`{code}`: {meaning}" for code, meaning in WARNINGS.items())
    return (
        "What preprocessing and the model's confidence noticed about this image, as codes; always a list, empty "
        f"when nothing was noticed (and for a failed image). Codes: {codes}"
    )


_NOTHING_TO_READ = " Null when the image failed, or when there is nothing to read (warning `no-ink` or `no-digit`)."


class PredictionPublic(BaseModel):
    """The outcome for one image: its prediction (with warnings), or why it failed."""

    index: int
    filename: str | None = None
    status: str
    label: str | None = Field(None, description="The most likely label." + _NOTHING_TO_READ)
    confidence: float | None = Field(None, description="The model's probability for `label`." + _NOTHING_TO_READ)
    top_k: list[LabelScore] | None = Field(
        None, description="The most likely labels, best first (the job's `top_k` of them)." + _NOTHING_TO_READ
    )
    warnings: list[str] = Field(default_factory=list, description=_warnings_doc())
    error: dict[str, str] | None = None
    model_version: str | None = None
    input_image: str | None = Field(
        None, description="With `explain`: the 28x28 greyscale picture the model saw, as a base64 PNG."
    )
    explanation: str | None = Field(
        None,
        description="With `explain`: a 28x28 greyscale saliency map as a base64 PNG (brighter = that pixel pushed "
        "the predicted label more; gradient x input for Keras models, occlusion for TFLite ones).",
    )

    @classmethod
    def of(cls, item: JobItem, versions: dict[int, str]) -> PredictionPublic:
        """Render a job item."""
        error = {"type": item.error_type or "", "detail": item.error or ""} if item.error_type else None
        return cls(
            index=item.idx,
            filename=item.filename,
            status=item.status,
            label=item.label,
            confidence=item.confidence,
            top_k=[LabelScore(**t) for t in item.top_k] if item.top_k else None,
            warnings=list(item.warnings or []),
            error=error,
            model_version=versions.get(item.model_version_id or -1),
            input_image=_png64(item.input_image),
            explanation=_png64(item.explanation),
        )


def _png64(pixels: bytes | None) -> str | None:
    """Stored 28x28 pixels as a base64 PNG (None stays None)."""
    return base64.b64encode(pixels_png(pixels)).decode("ascii") if pixels else None


class Counts(BaseModel):
    total: int
    completed: int
    failed: int
    expired: int = Field(0, description="Items that never ran because the job's deadline passed first.")


class JobPublic(BaseModel):
    """A job as clients see it."""

    model_config = ConfigDict(protected_namespaces=())

    id: uuid.UUID
    kind: JobKind
    status: JobStatus
    model: str = Field(description="The model reference the client asked for.")
    model_version: str | None = Field(None, description="The version that actually ran ('name:version').")
    top_k: int | None = None
    counts: Counts
    attempts: int
    error: dict[str, str] | None = None
    created_at: datetime
    deadline_at: datetime | None = Field(None, description="When the job must have started by (deadline_s).")
    priority: int | None = Field(None, description="Classify jobs: 0 low, 1 normal, 2 high (see `priority`).")
    started_at: datetime | None = None
    finished_at: datetime | None = None
    result: dict[str, Any] | None = Field(
        None, description="Kind-specific summary, e.g. a training job's live per-epoch history."
    )
    dataset: str | None = Field(None, description="Score jobs: the id of the dataset being scored.")
    request_counts: Counts | None = Field(None, description="Score jobs: items total, completed and failed so far.")
    eta_seconds: float | None = Field(None, description="Score jobs: estimated seconds left, from the rate so far.")
    files: dict[str, str] | None = Field(None, description="Score jobs: where to download the output and errors.")
    predictions: list[PredictionPublic] | None = Field(
        None, description="Every prediction once the job is finished (up to the job's image limit)."
    )
    links: dict[str, str]

    @classmethod
    def of(cls, job: Job, items: list[JobItem] | None = None) -> JobPublic:
        """Render a job (with its predictions when `items` is given)."""
        mv = job.model_version
        versions = {mv.id: mv.ref} if mv is not None else {}
        error = {"type": job.error_type or "", "detail": job.error or ""} if job.error_type else None
        return cls(
            id=job.id,
            kind=JobKind(job.kind),
            status=JobStatus(job.status),
            model=job.model_ref,
            model_version=mv.ref if mv else None,
            top_k=job.params.get("top_k"),
            counts=counts_of(job),
            attempts=job.attempts,
            error=error,
            created_at=job.created_at,
            deadline_at=job.deadline_at,
            priority=job.priority if job.kind == JobKind.CLASSIFY else None,
            started_at=job.started_at,
            finished_at=job.finished_at,
            result=job.result,
            **score_fields(job),
            predictions=[PredictionPublic.of(i, versions) for i in items] if items is not None else None,
            links={
                "self": f"/v1/jobs/{job.id}",
                "results": f"/v1/jobs/{job.id}/results",
                "cancel": f"/v1/jobs/{job.id}/cancel",
            },
        )


def counts_of(job: Job) -> Counts:
    """A job's item counts; an expired job's items that never ran count as expired."""
    expired = job.total_items - job.completed_items - job.failed_items if job.status == JobStatus.EXPIRED else 0
    return Counts(total=job.total_items, completed=job.completed_items, failed=job.failed_items, expired=expired)


def score_fields(job: Job) -> dict[str, Any]:
    """The extra fields of a score job: dataset, request counts, ETA from the rate so far, file links."""
    if job.kind != JobKind.SCORE.value:
        return {}
    done, total = job.completed_items + job.failed_items, job.total_items
    eta: float | None = None
    if JobStatus(job.status).is_terminal():
        eta = 0.0
    elif job.started_at is not None and done > 0:
        elapsed = (utcnow() - job.started_at).total_seconds()
        eta = round(max(total - done, 0) * elapsed / done, 1)
    return {
        "dataset": job.params.get("dataset_id"),
        "request_counts": counts_of(job),
        "eta_seconds": eta,
        "files": {"output": f"/v1/jobs/{job.id}/output", "errors": f"/v1/jobs/{job.id}/errors"},
    }


class JobsPublic(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None = Field(None, description="Pass as ?cursor= for the next page; null at the end.")


class ResultsPublic(BaseModel):
    job_id: uuid.UUID
    status: JobStatus
    data: list[PredictionPublic]
    next_cursor: str | None = None


class ModelVersionPublic(BaseModel):
    """One version of a model, with its aliases and metrics."""

    model_config = ConfigDict(protected_namespaces=())

    name: str
    version: int
    ref: str
    format: str
    variant: str
    aliases: list[str]
    size_bytes: int
    labels: list[str]
    input_spec: dict[str, Any]
    metrics: dict[str, Any]
    created_at: datetime

    @classmethod
    def of(cls, mv: ModelVersion, aliases: list[str] | None = None) -> ModelVersionPublic:
        """Render a model version with the aliases its viewer sees (by default only the public ones)."""
        if aliases is None:
            aliases = [a.alias for a in mv.aliases if a.tenant_id == PUBLIC_ALIAS]
        return cls(
            name=mv.name,
            version=mv.version,
            ref=mv.ref,
            format=mv.format,
            variant=mv.variant,
            aliases=sorted(aliases),
            size_bytes=mv.size_bytes,
            labels=mv.labels,
            input_spec=mv.input_spec,
            metrics=mv.metrics,
            created_at=mv.created_at,
        )


class ModelPublic(BaseModel):
    name: str
    aliases: dict[str, int] = Field(description="alias -> version number")
    versions: list[ModelVersionPublic]


class ModelsPublic(BaseModel):
    data: list[ModelPublic]


class Problem(BaseModel):
    """An RFC 9457 problem detail (media type application/problem+json)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class ClassifyTask(BaseModel):
    """The whole message of a classify task: a reference to a job row, never image bytes."""

    model_config = ConfigDict(frozen=True)

    job_id: uuid.UUID
