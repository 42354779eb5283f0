"""Score jobs: create one from a stored dataset (one Celery message per chunk), stream its output and errors."""

from __future__ import annotations

import csv
import io
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any, Literal

from flask import Response, jsonify, request, stream_with_context
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.auth import current_tenant
from api.deps import db, services
from api.openapi import QueryModel
from api.outputs import parquet_stream
from api.uploads import read_deadline
from api.webhooks import attach_job_webhook
from shared.config.errors import JobHasNoFiles, JobNotFound, ValidationFailed
from shared.config.settings import Settings
from shared.config.status import ItemStatus, JobKind, JobStatus
from shared.db.models import Dataset, Job, JobItem, utcnow
from shared.inputs.datasets import chunk_size_for, get_dataset, iter_index
from shared.jobs import lifecycle as jobstore
from shared.registry.versions import parse_ref
from shared.runtime.celery_app import SCORE_CHUNK_TASK
from shared.schemas.public import DEADLINE_DOC, JobPublic, JsonFloat, JsonInt, Problem
from shared.tenancy.quotas import admit_job

log = logging.getLogger(__name__)
PAGE = 1000  # item rows fetched per query while streaming a file
# warnings last: a column added after the first release, so readers that go by position keep working
OUTPUT_COLUMNS = ["custom_id", "index", "label", "confidence", "top_k", "true_label", "warnings"]
ERROR_COLUMNS = ["custom_id", "index", "error_type", "error"]
MEDIA = {"csv": "text/csv", "jsonl": "application/jsonl", "parquet": "application/vnd.apache.parquet"}

bp = APIBlueprint(
    "scoring",
    __name__,
    url_prefix="/v1/jobs",
    abp_tags=[Tag(name="jobs")],
    abp_responses={"404": Problem, "415": Problem, "422": Problem},
)


class ScoreJobCreate(BaseModel):
    """A score job: every item of a stored dataset through one model, in chunks."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    kind: Literal["score"]
    dataset: str = Field(description="The id of an uploaded dataset.")
    model: str | None = Field(None, description="'name', 'name:version' or 'name@alias'; default model if absent.")
    top_k: JsonInt | None = Field(None, ge=1, description="How many ranked labels to keep per item.")
    deadline_s: JsonFloat | None = Field(None, gt=0, description=DEADLINE_DOC)
    webhook: str | None = Field(None, description="URL that receives this job's events (see Webhooks).")
    webhook_events_filter: list[str] | str | None = Field(None, description="start, progress, completed.")


def create_score_job(
    body: dict[str, Any], webhook: dict[str, Any] | None = None
) -> tuple[Response, int, dict[str, str]]:
    """Validate, insert the job (no item rows yet: chunks insert them), commit, then publish one task per chunk."""
    svc = services()
    settings = svc.settings
    req = ScoreJobCreate.model_validate(body)
    top_k = settings.default_top_k if req.top_k is None else req.top_k
    if top_k > settings.max_top_k:
        raise ValidationFailed(f"top_k must be at most {settings.max_top_k} (INFERQ_MAX_TOP_K)")
    session = db()
    tenant = current_tenant()
    ds = get_dataset(session, req.dataset, tenant_id=tenant, lock="share")  # DELETE waits for the commit
    ref = parse_ref(req.model or settings.default_model)
    svc.known_refs.check(session, ref, default_alias=settings.default_alias, tenant_id=tenant)
    chunk_size = chunk_size_for(settings, ds)
    job = Job(
        id=uuid.uuid4(),
        tenant_id=tenant,
        kind=JobKind.SCORE.value,
        status=JobStatus.QUEUED.value,
        model_ref=str(ref),
        params={"dataset_id": str(ds.id), "chunk_size": chunk_size, "top_k": top_k},
        total_items=ds.item_count,
        created_at=utcnow(),
        deadline_at=read_deadline(request, req.deadline_s, settings),
    )
    session.add(job)
    attach_job_webhook(session, job, webhook)
    admit_job(session, job, settings)  # 429 queue-full past the tenant's caps
    session.commit()
    dispatch_chunks(job.id, ds.item_count, chunk_size)
    session.refresh(job)
    return jsonify(JobPublic.of(job).model_dump(mode="json")), 202, {"Location": f"/v1/jobs/{job.id}"}


def dispatch_chunks(job_id: uuid.UUID, total: int, chunk_size: int) -> None:
    """Publish one message per chunk (ids only), then record the dispatch."""
    svc = services()
    try:
        for index in range((total + chunk_size - 1) // chunk_size):
            svc.celery.send_task(SCORE_CHUNK_TASK, args=[str(job_id), index])
    except Exception:
        log.warning("publishing the chunks of job %s failed", job_id, exc_info=True)
        return
    with svc.sessions.begin() as session:
        jobstore.mark_dispatched(session, [job_id])


class FilePath(BaseModel):
    job_id: str = Field(description="The score job's id (a UUID).")


class FileQuery(QueryModel):
    format: Literal["csv", "jsonl", "parquet"] = Field(
        "csv", description="csv, jsonl, or parquet (one row group per scoring chunk; top_k as a list of structs)."
    )


@bp.get("/<job_id>/output", summary="Download a score job's predictions (streamed)", responses={"409": Problem})
def get_output(path: FilePath, query: FileQuery) -> Response:
    """One row per scored item: custom_id, index, label, confidence, top_k, true_label when known, and warnings
    (a list of codes, JSON text in CSV; see the `warnings` of a prediction). label, confidence and top_k are empty
    when there is nothing to read (`no-ink`, `no-digit`)."""
    return _file(path.job_id, query.format, errors=False)


@bp.get(
    "/<job_id>/errors",
    summary="Download a score job's items that could not be scored (streamed)",
    responses={"409": Problem},
)
def get_errors(path: FilePath, query: FileQuery) -> Response:
    """One row per failed item: custom_id, index, error_type, error."""
    return _file(path.job_id, query.format, errors=True)


def _file(job_text: str, fmt: str, *, errors: bool) -> Response:
    try:
        job_id = uuid.UUID(job_text)
    except ValueError:
        raise JobNotFound(f"job {job_text!r} does not exist (job ids are UUIDs)") from None
    job = jobstore.get_job(db(), job_id, tenant_id=current_tenant())
    if job.kind != JobKind.SCORE.value:
        raise JobHasNoFiles(f"job {job_id} is a {job.kind} job; output files exist for score jobs only")
    ds = db().get(Dataset, uuid.UUID(job.params["dataset_id"]))
    svc = services()
    rows = _rows(svc.sessions, svc.settings, job_id, ds, errors=errors)
    body: Iterator[Any]
    if fmt == "parquet":
        body = parquet_stream(rows, errors=errors, chunk_size=int(job.params["chunk_size"]))
    else:
        body = _csv(rows, ERROR_COLUMNS if errors else OUTPUT_COLUMNS) if fmt == "csv" else _jsonl(rows)
    name = f"{job_id}-{'errors' if errors else 'output'}.{fmt}"
    resp = Response(stream_with_context(body), mimetype=MEDIA[fmt])
    resp.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return resp


def _rows(
    sessions: sessionmaker[Session], settings: Settings, job_id: uuid.UUID, ds: Dataset | None, *, errors: bool
) -> Iterator[dict[str, Any]]:
    """Item rows in index order, paged from the database, joined with the dataset's true labels."""
    status = ItemStatus.FAILED if errors else ItemStatus.SUCCEEDED
    truth = iter_index(settings, ds.id, ds.layout) if ds is not None and ds.labelled and not errors else None
    pending: tuple[int, str, str | None] | None = None
    after = -1
    with sessions() as session:
        while True:
            q = (
                select(JobItem)
                .where(JobItem.job_id == job_id, JobItem.status == status.value, JobItem.idx > after)
                .order_by(JobItem.idx)
                .limit(PAGE)
            )
            page = list(session.scalars(q))
            if not page:
                return
            for item in page:
                if errors:
                    yield {
                        "custom_id": item.filename,
                        "index": item.idx,
                        "error_type": item.error_type,
                        "error": item.error,
                    }
                    continue
                true_label = None
                if truth is not None:
                    while pending is None or pending[0] < item.idx:
                        pending = next(truth, (1 << 62, "", None))
                    true_label = pending[2] if pending[0] == item.idx else None
                yield {
                    "custom_id": item.filename,
                    "index": item.idx,
                    "label": item.label,
                    "confidence": item.confidence,
                    "top_k": item.top_k,
                    "true_label": true_label,
                    "warnings": list(item.warnings or []),
                }
            after = page[-1].idx
            session.expunge_all()


def _csv(rows: Iterator[dict[str, Any]], columns: list[str]) -> Iterator[str]:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for n, row in enumerate(rows, start=1):
        if row.get("top_k") is not None:
            row = {**row, "top_k": json.dumps(row["top_k"])}
        if row.get("warnings") is not None:
            row = {**row, "warnings": json.dumps(row["warnings"])}
        writer.writerow(row)
        if n % 500 == 0:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


def _jsonl(rows: Iterator[dict[str, Any]]) -> Iterator[str]:
    chunk: list[str] = []
    for row in rows:
        chunk.append(json.dumps(row))
        if len(chunk) >= 500:
            yield "\n".join(chunk) + "\n"
            chunk = []
    if chunk:
        yield "\n".join(chunk) + "\n"
