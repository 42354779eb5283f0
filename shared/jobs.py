"""Job data functions: create, compare-and-set status, idempotent result writes, paging (leases: shared.leases)."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, and_, bindparam, case, func, or_, select, update
from sqlalchemy.orm import Session

from shared import metrics
from shared.errors import JobNotCancelable, JobNotFound, ValidationFailed
from shared.models import Job, JobItem, utcnow
from shared.status import ItemStatus, JobKind, JobStatus
from shared.storage import BlobStore
from shared.webhooks import jobs_with_receivers, on_progress, on_started, on_status_change, tenants_listening


@dataclass(frozen=True)
class Upload:
    """One accepted input image."""

    filename: str | None
    data: bytes


@dataclass(frozen=True)
class ItemResult:
    """What the worker learned about one item: a prediction (label None when there is nothing to read, with its
    warnings saying why) or an error."""

    item_id: int
    label: str | None = None
    confidence: float | None = None
    top_k: list[dict[str, Any]] | None = None
    warnings: list[str] | None = None
    error_type: str | None = None
    error: str | None = None
    batch_size: int | None = None
    input_image: bytes | None = None  # 28x28 uint8, with the job option explain
    explanation: bytes | None = None  # 28x28 uint8 saliency map, with the job option explain


def input_key(job_id: uuid.UUID, idx: int) -> str:
    """Where the bytes of input `idx` of a job are stored."""
    return f"inputs/{job_id}/{idx:05d}"


def create_classify_job(
    *,
    session: Session,
    store: BlobStore,
    uploads: Sequence[Upload],
    model_ref: str,
    top_k: int,
    tenant_id: str = "default",
    explain: bool = False,
) -> Job:
    """Store the inputs durably, then add the job and its items to the session (the caller commits)."""
    job = Job(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        kind=JobKind.CLASSIFY.value,
        status=JobStatus.QUEUED.value,
        model_ref=model_ref,
        params={"top_k": top_k, "explain": True} if explain else {"top_k": top_k},
        total_items=len(uploads),
        created_at=utcnow(),
    )
    for idx, up in enumerate(uploads):
        store.put(input_key(job.id, idx), up.data)
    session.add(job)
    session.add_all(
        JobItem(job_id=job.id, idx=idx, filename=up.filename, input_key=input_key(job.id, idx))
        for idx, up in enumerate(uploads)
    )
    session.flush()  # one flush: the unit of work inserts the job before its items (their foreign key)
    return job


def delete_inputs(store: BlobStore, job_id: uuid.UUID, count: int) -> None:
    """Remove the stored inputs of a job that was never committed."""
    for idx in range(count):
        store.delete(input_key(job_id, idx))


def set_status(session: Session, job_id: uuid.UUID, new: JobStatus, **fields: Any) -> bool:
    """Compare-and-set: move the job to `new` only from a status that allows it; True if it moved."""
    sources = [s.value for s in JobStatus.sources_of(new)]
    values: dict[str, Any] = {"status": new.value, "updated_at": utcnow(), **fields}
    if new.is_terminal():
        values.setdefault("finished_at", utcnow())
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(sources))
        .values(**values)
        .returning(Job.kind, Job.created_at, Job.started_at, Job.finished_at)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        return False
    on_status_change(session, job_id, new)  # webhook outbox rows, in this same transaction
    kind, created, started, finished = row
    if new.is_terminal():
        metrics.observe_finished([(kind, new.value, created, finished)])
    elif new is JobStatus.RUNNING:
        metrics.observe_started(kind, created, started)
    return True


def start_attempt(session: Session, job_id: uuid.UUID, model_version_id: int | None) -> bool:
    """Count a delivery: queued -> running (first time), or running again on redelivery; False if terminal."""
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_([JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
        .values(
            status=JobStatus.RUNNING.value,
            attempts=Job.attempts + 1,
            model_version_id=model_version_id,
            started_at=func.coalesce(Job.started_at, now),
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )
    started = bool(res.rowcount)  # type: ignore[attr-defined]
    if started:
        on_started(session, job_id)  # webhook outbox row (once per job), in this same transaction
    return started


@dataclass(frozen=True)
class Claim:
    """A first delivery of a classify job, taken in one statement: what the worker needs to run it."""

    job_id: uuid.UUID
    model_ref: str
    tenant_id: str
    top_k: int
    items: list[tuple[int, str | None]]  # (item id, input key) of the pending items, in index order
    explain: bool = False  # the job option: saliency maps and the pictures the model saw


def claim_first_attempt(session: Session, job_id: uuid.UUID) -> Claim | None:
    """queued -> running for a job never attempted before (counting the attempt), plus its pending items.
    None when the job is missing, terminal or was attempted before: the caller takes the careful path."""
    now = utcnow()
    row = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value, Job.attempts == 0)
        .values(status=JobStatus.RUNNING.value, attempts=1, started_at=now, updated_at=now)
        .returning(Job.model_ref, Job.tenant_id, Job.params, Job.kind, Job.created_at)
        .execution_options(synchronize_session=False)
    ).one_or_none()
    if row is None:
        return None
    model_ref, tenant_id, params, kind, created = row
    metrics.observe_started(kind, created, now)
    if (params or {}).get("webhook") or tenants_listening(session, {tenant_id}):
        on_started(session, job_id)  # webhook outbox row, in this same transaction
    params = params or {}
    items = pending_inputs(session, job_id)
    return Claim(job_id, model_ref, tenant_id, int(params.get("top_k", 1)), items, bool(params.get("explain")))


def pending_inputs(session: Session, job_id: uuid.UUID) -> list[tuple[int, str | None]]:
    """(item id, input key) of the job's items that have no result yet, in index order."""
    q = (
        select(JobItem.id, JobItem.input_key)
        .where(JobItem.job_id == job_id, JobItem.status == ItemStatus.PENDING.value)
        .order_by(JobItem.idx)
    )
    return [(item_id, key) for item_id, key in session.execute(q)]


def mark_dispatched(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """Record when the jobs' messages were published (the reconciler's lease starts here)."""
    session.execute(update(Job).where(Job.id.in_(job_ids)).values(dispatched_at=utcnow()))


def mark_undispatched(session: Session, job_id: uuid.UUID) -> None:
    """Clear the dispatch stamp of a queued job whose publish failed, so the reconciler takes it at once."""
    session.execute(
        update(Job).where(Job.id == job_id, Job.status == JobStatus.QUEUED.value).values(dispatched_at=None)
    )


def write_results(session: Session, results: Sequence[ItemResult], model_version_id: int | None) -> int:
    """Write predictions/errors of pending items only, so a redelivered batch changes nothing twice (one
    executemany round trip for the whole batch); returns how many items were written."""
    if not results:
        return 0
    items = JobItem.__table__
    assert isinstance(items, Table)
    stmt = (
        update(items)
        .where(items.c.id == bindparam("b_id"), items.c.status == ItemStatus.PENDING.value)
        .values(
            status=bindparam("b_status"),
            label=bindparam("b_label"),
            confidence=bindparam("b_confidence"),
            top_k=bindparam("b_top_k"),
            warnings=bindparam("b_warnings"),
            error_type=bindparam("b_error_type"),
            error=bindparam("b_error"),
            batch_size=bindparam("b_batch_size"),
            input_image=bindparam("b_input_image"),
            explanation=bindparam("b_explanation"),
            model_version_id=bindparam("b_model_version_id"),
            completed_at=bindparam("b_completed_at"),
        )
    )
    now = utcnow()
    rows = [
        {
            "b_id": r.item_id,
            "b_status": (ItemStatus.FAILED if r.error_type else ItemStatus.SUCCEEDED).value,
            "b_label": r.label,
            "b_confidence": r.confidence,
            "b_top_k": r.top_k,
            "b_warnings": None if r.error_type else list(r.warnings or []),  # every prediction has a list
            "b_error_type": r.error_type,
            "b_error": r.error,
            "b_batch_size": r.batch_size,
            "b_input_image": r.input_image,
            "b_explanation": r.explanation,
            "b_model_version_id": model_version_id,
            "b_completed_at": now,
        }
        for r in results
    ]
    res = session.connection().execute(stmt, rows)
    if metrics.enabled:
        failed = sum(1 for r in results if r.error_type)
        metrics.IMAGES.labels("succeeded").inc(len(results) - failed)
        metrics.IMAGES.labels("failed").inc(failed)
    return int(res.rowcount)


def refresh_counts(session: Session, job_id: uuid.UUID) -> tuple[int, int, int]:
    """Recompute the job's item counts from its items; returns (total, succeeded, failed)."""
    q = select(JobItem.status, func.count()).where(JobItem.job_id == job_id).group_by(JobItem.status)
    rows: dict[str, int] = {status: n for status, n in session.execute(q)}
    ok, bad = rows.get(ItemStatus.SUCCEEDED.value, 0), rows.get(ItemStatus.FAILED.value, 0)
    total = sum(rows.values())
    changed = session.execute(
        update(Job)
        .where(Job.id == job_id, or_(Job.completed_items != ok, Job.failed_items != bad))
        .values(completed_items=ok, failed_items=bad)
    )
    if changed.rowcount:  # type: ignore[attr-defined]
        on_progress(session, job_id)  # webhook outbox row (throttled), in this same transaction
    return total, ok, bad


def finish_if_done(session: Session, job_id: uuid.UUID) -> JobStatus | None:
    """When no item is pending, move running -> succeeded (or failed if every item failed)."""
    total, ok, bad = refresh_counts(session, job_id)
    if ok + bad < total:
        return None
    if ok == 0 and total > 0:
        moved = set_status(
            session,
            job_id,
            JobStatus.FAILED,
            error_type="all-items-failed",
            error=f"none of the {total} images could be classified; see each item's error",
        )
        return JobStatus.FAILED if moved else None
    return JobStatus.SUCCEEDED if set_status(session, job_id, JobStatus.SUCCEEDED) else None


def settle_jobs(
    session: Session, job_ids: Sequence[uuid.UUID], model_version_id: int | None
) -> dict[uuid.UUID, JobStatus]:
    """After a batch's results are written: recount its jobs and finish the done ones, in a fixed number of
    statements for the whole batch (jobs with webhook receivers take the per-job path, which records events).
    Returns the jobs that reached a terminal state here."""
    ids = sorted(set(job_ids))
    finished: dict[uuid.UUID, JobStatus] = {}
    hooked = jobs_with_receivers(session, ids)
    for job_id in ids:
        if job_id in hooked and (status := finish_if_done(session, job_id)) is not None:
            finished[job_id] = status
    plain = [j for j in ids if j not in hooked]
    if model_version_id is not None:
        session.execute(
            update(Job)
            .where(Job.id.in_(ids), Job.model_version_id.is_(None))
            .values(model_version_id=model_version_id)
            .execution_options(synchronize_session=False)
        )
    if not plain:
        return finished
    counted = select(func.count()).where(JobItem.job_id == Job.id).correlate(Job)
    session.execute(
        update(Job)
        .where(Job.id.in_(plain))
        .values(
            completed_items=counted.where(JobItem.status == ItemStatus.SUCCEEDED.value).scalar_subquery(),
            failed_items=counted.where(JobItem.status == ItemStatus.FAILED.value).scalar_subquery(),
        )
        .execution_options(synchronize_session=False)
    )
    all_failed = and_(Job.completed_items == 0, Job.total_items > 0)
    now = utcnow()
    done = session.execute(
        update(Job)
        .where(Job.id.in_(plain), Job.status == JobStatus.RUNNING.value)
        .where(Job.completed_items + Job.failed_items >= Job.total_items)
        .values(
            status=case((all_failed, JobStatus.FAILED.value), else_=JobStatus.SUCCEEDED.value),
            error_type=case((all_failed, "all-items-failed"), else_=Job.error_type),
            error=case((all_failed, "none of the images could be classified; see each item's error"), else_=Job.error),
            finished_at=now,
            updated_at=now,
        )
        .returning(Job.id, Job.status, Job.kind, Job.created_at, Job.finished_at)
        .execution_options(synchronize_session=False)
    ).all()
    finished.update((row.id, JobStatus(row.status)) for row in done)
    metrics.observe_finished((row.kind, row.status, row.created_at, row.finished_at) for row in done)
    return finished


def fail_job(session: Session, job_id: uuid.UUID, error_type: str, detail: str) -> bool:
    """Fail a non-terminal job and every item still pending, with the reason."""
    moved = set_status(session, job_id, JobStatus.FAILED, error_type=error_type, error=detail)
    if moved:
        session.execute(
            update(JobItem)
            .where(JobItem.job_id == job_id, JobItem.status == ItemStatus.PENDING.value)
            .values(status=ItemStatus.FAILED.value, error_type=error_type, error=detail, completed_at=utcnow())
        )
        refresh_counts(session, job_id)
    return moved


def get_job(session: Session, job_id: uuid.UUID, *, tenant_id: str | None = None) -> Job:
    """The job, or JobNotFound (also for another tenant's job)."""
    job = session.get(Job, job_id)
    if job is None or (tenant_id is not None and job.tenant_id != tenant_id):
        raise JobNotFound(f"job {job_id} does not exist")
    return job


def cancel_job(session: Session, job_id: uuid.UUID, *, tenant_id: str | None = None) -> Job:
    """Cancel a job that has not finished (409 if it has)."""
    job = get_job(session, job_id, tenant_id=tenant_id)
    if not set_status(session, job_id, JobStatus.CANCELED, error_type="canceled", error="canceled by the client"):
        session.refresh(job)
        raise JobNotCancelable(f"job {job_id} is already {job.status}; only queued or running jobs can be canceled")
    session.refresh(job)
    return job


def items_page(session: Session, job_id: uuid.UUID, *, after: int, limit: int) -> list[JobItem]:
    """Items of a job in index order, starting after index `after`."""
    q = select(JobItem).where(JobItem.job_id == job_id, JobItem.idx > after).order_by(JobItem.idx).limit(limit)
    return list(session.scalars(q))


def jobs_page(
    session: Session, *, tenant_id: str, status: JobStatus | None, cursor: str | None, limit: int
) -> tuple[list[Job], str | None]:
    """Newest jobs first, keyset-paginated by (created_at, id); returns the page and the next cursor."""
    q = select(Job).where(Job.tenant_id == tenant_id)
    if status is not None:
        q = q.where(Job.status == status.value)
    if cursor:
        created, last_id = decode_cursor(cursor)
        q = q.where(or_(Job.created_at < created, and_(Job.created_at == created, Job.id < last_id)))
    rows = list(session.scalars(q.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit]
    return rows, (encode_cursor(rows[-1]) if more and rows else None)


def encode_cursor(job: Job) -> str:
    """An opaque cursor pointing just after `job`."""
    raw = f"{job.created_at.isoformat()}|{job.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Read a cursor made by encode_cursor (422 if it was not)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, job_id = raw.split("|")
        return datetime.fromisoformat(created), uuid.UUID(job_id)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValidationFailed("cursor is not valid; pass the next_cursor of a previous page") from exc
