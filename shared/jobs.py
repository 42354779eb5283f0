"""Job data functions: create, compare-and-set status, idempotent result writes, paging, reconciling."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.orm import Session

from shared.errors import JobNotCancelable, JobNotFound, ValidationFailed
from shared.models import Job, JobItem, utcnow
from shared.status import ItemStatus, JobKind, JobStatus
from shared.storage import BlobStore
from shared.webhooks import on_progress, on_started, on_status_change


@dataclass(frozen=True)
class Upload:
    """One accepted input image."""

    filename: str | None
    data: bytes


@dataclass(frozen=True)
class ItemResult:
    """What the worker learned about one item: a prediction or an error."""

    item_id: int
    label: str | None = None
    confidence: float | None = None
    top_k: list[dict[str, Any]] | None = None
    error_type: str | None = None
    error: str | None = None
    batch_size: int | None = None


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
) -> Job:
    """Store the inputs durably, then add the job and its items to the session (the caller commits)."""
    job = Job(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        kind=JobKind.CLASSIFY.value,
        status=JobStatus.QUEUED.value,
        model_ref=model_ref,
        params={"top_k": top_k},
        total_items=len(uploads),
        created_at=utcnow(),
    )
    for idx, up in enumerate(uploads):
        store.put(input_key(job.id, idx), up.data)
    session.add(job)
    session.flush()
    session.add_all(
        JobItem(job_id=job.id, idx=idx, filename=up.filename, input_key=input_key(job.id, idx))
        for idx, up in enumerate(uploads)
    )
    session.flush()
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
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.in_(sources))
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    moved = bool(res.rowcount)  # type: ignore[attr-defined]
    if moved:
        on_status_change(session, job_id, new)  # webhook outbox rows, in this same transaction
    return moved


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


def mark_dispatched(session: Session, job_ids: Sequence[uuid.UUID]) -> None:
    """Record when the jobs' messages were published (the reconciler's lease starts here)."""
    session.execute(update(Job).where(Job.id.in_(job_ids)).values(dispatched_at=utcnow()))


def write_results(session: Session, results: Sequence[ItemResult], model_version_id: int | None) -> int:
    """Write predictions/errors of pending items only, so a redelivered batch changes nothing twice."""
    now, written = utcnow(), 0
    for r in results:
        status = ItemStatus.FAILED if r.error_type else ItemStatus.SUCCEEDED
        res = session.execute(
            update(JobItem)
            .where(JobItem.id == r.item_id, JobItem.status == ItemStatus.PENDING.value)
            .values(
                status=status.value,
                label=r.label,
                confidence=r.confidence,
                top_k=r.top_k,
                error_type=r.error_type,
                error=r.error,
                batch_size=r.batch_size,
                model_version_id=model_version_id,
                completed_at=now,
            )
            .execution_options(synchronize_session=False)
        )
        written += res.rowcount  # type: ignore[attr-defined]
    return written


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


def stale_queued_jobs(
    session: Session, *, lease_s: float, limit: int = 500, include_dispatched: bool = True
) -> list[uuid.UUID]:
    """Queued jobs whose dispatch is older than the lease (or never happened), oldest first; with
    include_dispatched=False only the never-published ones (a backlog in the broker is not a lost message)."""
    cutoff = utcnow() - timedelta(seconds=lease_s)
    stale = (
        or_(Job.dispatched_at.is_(None), Job.dispatched_at < cutoff)
        if include_dispatched
        else Job.dispatched_at.is_(None)
    )
    q = (
        select(Job.id)
        .where(Job.status == JobStatus.QUEUED.value, Job.kind == JobKind.CLASSIFY.value)
        .where(stale, Job.created_at < cutoff)
        .order_by(Job.created_at)
        .limit(limit)
    )
    return list(session.scalars(q))


def claim_for_redispatch(session: Session, job_id: uuid.UUID, *, lease_s: float) -> bool:
    """Take the re-dispatch lease of one stale queued job (compare-and-set on dispatched_at)."""
    cutoff = utcnow() - timedelta(seconds=lease_s)
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.QUEUED.value)
        .where(or_(Job.dispatched_at.is_(None), Job.dispatched_at < cutoff))
        .values(dispatched_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]


def stale_running_jobs(session: Session, *, lease_s: float, limit: int = 500) -> list[uuid.UUID]:
    """Running classify jobs untouched for longer than the lease (their message or worker is gone), oldest first."""
    cutoff = utcnow() - timedelta(seconds=lease_s)
    q = (
        select(Job.id)
        .where(Job.status == JobStatus.RUNNING.value, Job.kind == JobKind.CLASSIFY.value)
        .where(or_(Job.updated_at.is_(None), Job.updated_at < cutoff))
        .order_by(Job.updated_at)
        .limit(limit)
    )
    return list(session.scalars(q))


def claim_running_for_redispatch(session: Session, job_id: uuid.UUID, *, lease_s: float) -> bool:
    """Take the re-dispatch lease of one stale running job (compare-and-set on updated_at)."""
    cutoff = utcnow() - timedelta(seconds=lease_s)
    now = utcnow()
    res = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == JobStatus.RUNNING.value)
        .where(or_(Job.updated_at.is_(None), Job.updated_at < cutoff))
        .values(updated_at=now, dispatched_at=now)
        .execution_options(synchronize_session=False)
    )
    return bool(res.rowcount)  # type: ignore[attr-defined]
