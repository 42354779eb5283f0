"""Job data functions: create, compare-and-set status, idempotent result writes, paging (leases: shared.jobs.leases)."""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import DateTime, Integer, Table, and_, bindparam, case, func, or_, select, update
from sqlalchemy.orm import Session, joinedload

from shared.config.errors import JobNotCancelable, JobNotFound, ValidationFailed
from shared.config.status import ItemStatus, JobKind, JobStatus, Priority
from shared.db.models import Job, JobItem, ModelVersion, utcnow
from shared.db.webhook_models import WebhookEndpoint
from shared.inputs.storage import BlobStore
from shared.runtime import metrics
from shared.webhooks.outbox import on_progress, on_started, on_status_change, tenants_listening


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
    dispatched_at: datetime | None = None,
    inline_max_bytes: int = 0,
    explain: bool = False,
    deadline_at: datetime | None = None,
    priority: int = Priority.NORMAL,
) -> Job:
    """Store the inputs durably, then add the job and its items to the session (the caller commits).
    Inputs of at most `inline_max_bytes` go into their item's row (durable with the commit) instead of a blob.
    `dispatched_at` is stamped in the insert when the caller publishes right after its commit."""
    job = Job(
        id=uuid.uuid4(),
        tenant_id=tenant_id,
        kind=JobKind.CLASSIFY.value,
        status=JobStatus.QUEUED.value,
        model_ref=model_ref,
        params={"top_k": top_k, "priority": int(priority)} | ({"explain": True} if explain else {}),
        total_items=len(uploads),
        created_at=utcnow(),
        dispatched_at=dispatched_at,
        deadline_at=deadline_at,
    )
    inline = [len(up.data) <= inline_max_bytes for up in uploads]
    for idx, up in enumerate(uploads):
        if not inline[idx]:
            store.put(input_key(job.id, idx), up.data)
    session.add(job)
    session.add_all(
        JobItem(job_id=job.id, idx=idx, filename=up.filename, input_data=up.data)
        if inline[idx]
        else JobItem(job_id=job.id, idx=idx, filename=up.filename, input_key=input_key(job.id, idx))
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


class PendingInput(NamedTuple):
    """An item still without a result: its id and where its input is (a blob key, or the bytes themselves)."""

    item_id: int
    key: str | None
    data: bytes | None = None


@dataclass(frozen=True)
class Claim:
    """A first delivery of a classify job, taken in one statement: what the worker needs to run it."""

    job_id: uuid.UUID
    model_ref: str
    tenant_id: str
    top_k: int
    items: list[PendingInput]  # the pending items, in index order
    explain: bool = False  # the job option: saliency maps and the pictures the model saw


def claim_first_attempt(session: Session, job_id: uuid.UUID) -> Claim | None:
    """queued -> running for a job never attempted before (counting the attempt), plus its pending items.
    None when the job is missing, terminal or was attempted before: the caller takes the careful path."""
    now = utcnow()
    row = session.execute(_claim(), {"job_id": job_id, "now": now}).one_or_none()
    if row is None:
        return None
    model_ref, tenant_id, params, kind, created = row
    metrics.observe_started(kind, created, now)
    rows = session.execute(_claim_items(), {"job_id": job_id, "tenant_id": tenant_id}).all()  # items + the tenant's
    width = len(PendingInput._fields)  # endpoints: one round trip; the flag is the column after an item's own
    heard = bool(rows[0][width]) if rows else bool(tenants_listening(session, {tenant_id}))
    if (params or {}).get("webhook") or heard:
        on_started(session, job_id)  # webhook outbox row, in this same transaction
    params = params or {}
    items = [PendingInput(*row[:width]) for row in rows]
    return Claim(job_id, model_ref, tenant_id, int(params.get("top_k", 1)), items, bool(params.get("explain")))


_EXPIRED = {  # the error detail of an expired job, by kind
    JobKind.CLASSIFY.value: "the job's deadline (deadline_s) passed before it started: none of its images ran",
    JobKind.SCORE.value: "the job's deadline (deadline_s) passed before all of its chunks started: those not started "
    "were skipped (counts.expired); the rows written stay",
    JobKind.TRAIN.value: "the job's deadline (deadline_s) passed before it started",
}


def expire_overdue(
    session: Session, job_ids: Sequence[uuid.UUID] | None = None, *, limit: int = 500
) -> list[uuid.UUID]:
    """End as `expired` the jobs whose deadline has passed before they started: queued jobs, and score jobs whose
    chunks are still running out (their chunks not started yet are skipped; rows written stay). Only `job_ids` if
    given, else up to `limit` overdue jobs. Each gets its webhook `completed` event (status expired); returns
    their ids."""
    now = utcnow()
    overdue = or_(
        Job.status == JobStatus.QUEUED.value,
        and_(Job.status == JobStatus.RUNNING.value, Job.kind == JobKind.SCORE.value),
    )
    query = select(Job.id, Job.kind).where(Job.deadline_at.is_not(None), Job.deadline_at <= now, overdue)
    query = query.where(Job.id.in_(job_ids)) if job_ids is not None else query.limit(limit)
    expired = []
    for job_id, kind in session.execute(query).all():
        if set_status(session, job_id, JobStatus.EXPIRED, error_type="deadline-expired", error=_EXPIRED[kind]):
            expired.append(job_id)
    return expired


def _pending_query(job_id: Any) -> Any:
    return (
        select(JobItem.id, JobItem.input_key, JobItem.input_data)
        .where(JobItem.job_id == job_id, JobItem.status == ItemStatus.PENDING.value)
        .order_by(JobItem.idx)
    )


# The claim's two statements are built once, with bound parameters: building them per job cost more Python than
# their round trips (bench/online.py --profile, "claim (DB)").
@functools.cache
def _claim() -> Any:
    """queued -> running for a job never attempted (`job_id`), unless overdue at `now`; RETURNING what the worker
    needs."""
    now = bindparam("now", type_=DateTime(timezone=True))
    return (
        update(Job)
        .where(Job.id == bindparam("job_id"), Job.status == JobStatus.QUEUED.value, Job.attempts == 0)
        .where(or_(Job.deadline_at.is_(None), Job.deadline_at > now))  # an overdue job takes the careful path
        .values(status=JobStatus.RUNNING.value, attempts=1, started_at=now, updated_at=now)
        .returning(Job.model_ref, Job.tenant_id, Job.params, Job.kind, Job.created_at)
        .execution_options(synchronize_session=False)
    )


@functools.cache
def _claim_items() -> Any:
    """The pending items of `job_id`, each with whether the tenant (`tenant_id`) has a live webhook endpoint."""
    listening = select(WebhookEndpoint.id).where(
        WebhookEndpoint.tenant_id == bindparam("tenant_id"),
        WebhookEndpoint.deleted_at.is_(None),
        WebhookEndpoint.disabled_at.is_(None),
    )
    return _pending_query(bindparam("job_id")).add_columns(listening.exists())


def pending_inputs(session: Session, job_id: uuid.UUID) -> list[PendingInput]:
    """The job's items that have no result yet, in index order."""
    return [PendingInput(*row) for row in session.execute(_pending_query(job_id))]


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
    res = session.connection().execute(_write_results(), rows)
    if metrics.enabled:
        failed = sum(1 for r in results if r.error_type)
        metrics.IMAGES.labels("succeeded").inc(len(results) - failed)
        metrics.IMAGES.labels("failed").inc(failed)
    return int(res.rowcount)


@functools.cache
def _write_results() -> Any:
    """write_results' statement, built once (its values are all bound parameters)."""
    items = JobItem.__table__
    assert isinstance(items, Table)
    return (
        update(items)
        .where(items.c.id == bindparam("b_id"), items.c.status == ItemStatus.PENDING.value)
        .values({name: bindparam(f"b_{name}") for name in _RESULT_COLUMNS})
    )


# the columns write_results sets, each from the bound parameter "b_<column>"
_RESULT_COLUMNS = (
    *("status", "label", "confidence", "top_k", "warnings", "error_type", "error", "batch_size"),
    *("input_image", "explanation", "model_version_id", "completed_at"),
)


def refresh_counts(session: Session, job_id: uuid.UUID, *, progress_interval_s: float | None) -> tuple[int, int, int]:
    """Recompute the job's item counts from its items; returns (total, succeeded, failed). When they changed, a
    webhook `progress` event is queued, at most one per `progress_interval_s` (None: none, e.g. for a job that has
    just ended, whose `completed` event says it all)."""
    q = select(JobItem.status, func.count()).where(JobItem.job_id == job_id).group_by(JobItem.status)
    rows: dict[str, int] = {status: n for status, n in session.execute(q)}
    ok, bad = rows.get(ItemStatus.SUCCEEDED.value, 0), rows.get(ItemStatus.FAILED.value, 0)
    total = sum(rows.values())
    changed = session.execute(
        update(Job)
        .where(Job.id == job_id, or_(Job.completed_items != ok, Job.failed_items != bad))
        .values(completed_items=ok, failed_items=bad)
    )
    if changed.rowcount and progress_interval_s is not None:  # type: ignore[attr-defined]
        on_progress(session, job_id, min_interval_s=progress_interval_s)  # outbox row, in this same transaction
    return total, ok, bad


def finish_if_done(session: Session, job_id: uuid.UUID, *, progress_interval_s: float) -> JobStatus | None:
    """When no item is pending, move running -> succeeded (or failed if every item failed); until then the counts
    move and a throttled `progress` event is queued (INFERQ_WEBHOOK_PROGRESS_INTERVAL_S)."""
    total, ok, bad = refresh_counts(session, job_id, progress_interval_s=progress_interval_s)
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
    session: Session, job_ids: Sequence[uuid.UUID], model_version_id: int | None, *, progress_interval_s: float
) -> dict[uuid.UUID, JobStatus]:
    """After a batch's results are written: recount its jobs, stamp the model version and finish the done ones, in
    one statement for every job without a webhook receiver (jobs with one take the per-job path, which records
    events). Returns the jobs that reached a terminal state here."""
    ids = sorted(set(job_ids))
    now = utcnow()
    params = {"ids": ids, "version": model_version_id, "now": now}
    rows = session.execute(_settle_plain(), params).all() if ids else []
    finished = {row.id: JobStatus(row.status) for row in rows if row.moved}
    metrics.observe_finished((row.kind, row.status, row.created_at, row.finished_at) for row in rows if row.moved)
    hooked = sorted(set(ids) - {row.id for row in rows})  # a webhook of their own or a listening tenant
    if hooked and model_version_id is not None:
        session.execute(
            update(Job)
            .where(Job.id.in_(hooked), Job.model_version_id.is_(None))
            .values(model_version_id=model_version_id)
            .execution_options(synchronize_session=False)
        )
    for job_id in hooked:
        if (status := finish_if_done(session, job_id, progress_interval_s=progress_interval_s)) is not None:
            finished[job_id] = status
    return finished


@functools.cache
def _settle_plain() -> Any:
    """UPDATE .. FROM the items' counts of the jobs without receivers: counts, model version (where unset), and
    running -> succeeded/failed (compare-and-set) when no item is pending; RETURNING each row and whether it moved.

    Built once, with bound parameters `ids` (expanding), `version` and `now`: building this expression cost more
    than its round trip to PostgreSQL (about 2 ms of Python per forward pass of classify jobs)."""
    ids: Any = bindparam("ids", expanding=True)
    version = bindparam("version", type_=Integer)
    now = bindparam("now", type_=DateTime(timezone=True))
    counted = (
        select(
            JobItem.job_id,
            func.sum(case((JobItem.status == ItemStatus.SUCCEEDED.value, 1), else_=0)).label("ok"),
            func.sum(case((JobItem.status == ItemStatus.FAILED.value, 1), else_=0)).label("bad"),
        )
        .where(JobItem.job_id.in_(ids))
        .group_by(JobItem.job_id)
        .subquery()
    )
    done = and_(Job.status == JobStatus.RUNNING.value, counted.c.ok + counted.c.bad >= Job.total_items)
    all_failed = and_(done, counted.c.ok == 0, Job.total_items > 0)
    listening = select(WebhookEndpoint.id).where(
        WebhookEndpoint.tenant_id == Job.tenant_id,
        WebhookEndpoint.deleted_at.is_(None),
        WebhookEndpoint.disabled_at.is_(None),
    )
    return (
        update(Job)
        # Job.id IN ids as well as the join: the planner reaches the jobs by their primary key even without table
        # statistics (a new database), instead of scanning every job and counting the items once per row
        .where(
            Job.id.in_(ids),
            Job.id == counted.c.job_id,
            Job.params["webhook"].as_string().is_(None),
            ~listening.exists(),
        )
        .values(
            completed_items=counted.c.ok,
            failed_items=counted.c.bad,
            model_version_id=func.coalesce(Job.model_version_id, version),
            status=case((all_failed, JobStatus.FAILED.value), (done, JobStatus.SUCCEEDED.value), else_=Job.status),
            error_type=case((all_failed, "all-items-failed"), else_=Job.error_type),
            error=case((all_failed, "none of the images could be classified; see each item's error"), else_=Job.error),
            finished_at=case((done, now), else_=Job.finished_at),
            updated_at=case((done, now), else_=Job.updated_at),
        )
        .returning(
            Job.id, Job.status, Job.kind, Job.created_at, Job.finished_at, (Job.finished_at == now).label("moved")
        )
        .execution_options(synchronize_session=False)
    )


def fail_job(session: Session, job_id: uuid.UUID, error_type: str, detail: str) -> bool:
    """Fail a non-terminal job and every item still pending, with the reason."""
    moved = set_status(session, job_id, JobStatus.FAILED, error_type=error_type, error=detail)
    if moved:
        session.execute(
            update(JobItem)
            .where(JobItem.job_id == job_id, JobItem.status == ItemStatus.PENDING.value)
            .values(status=ItemStatus.FAILED.value, error_type=error_type, error=detail, completed_at=utcnow())
        )
        refresh_counts(session, job_id, progress_interval_s=None)  # its `completed` event is queued already
    return moved


def get_job(session: Session, job_id: uuid.UUID, *, tenant_id: str | None = None) -> Job:
    """The job, or JobNotFound (also for another tenant's job). Its model version comes in the same query; that
    version's aliases only when read (a poll never needs them: one round trip saved)."""
    job = session.get(Job, job_id, options=[joinedload(Job.model_version).lazyload(ModelVersion.aliases)])
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


CURSOR_PATTERN = r"^[0-9]{1,16}_[0-9a-f]{32}$"  # stated in the OpenAPI document: every match is a valid cursor
_CURSOR = re.compile(CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def encode_cursor(job: Job) -> str:
    """A cursor pointing just after `job`: its created_at in microseconds since 1970 (UTC), `_`, its id in hex."""
    created = job.created_at if job.created_at.tzinfo else job.created_at.replace(tzinfo=UTC)
    return f"{(created - _EPOCH) // _MICROSECOND}_{job.id.hex}"


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    """Read a cursor of the form encode_cursor makes (422 if it is not)."""
    if not _CURSOR.fullmatch(cursor):
        raise ValidationFailed("cursor is not valid; pass the next_cursor of a previous page")
    micros, job_id = cursor.split("_")
    return _EPOCH + int(micros) * _MICROSECOND, uuid.UUID(hex=job_id)
