"""Per-tenant queue caps, counted from the database and checked in the transaction that queues a job.

A job counts while it is queued or running; its unfinished items (total - completed - failed) count against the item
cap. Every route that queues a job calls `admit_job` right before its commit, so a refused job is rolled back with
everything else the transaction wrote. Far below the caps the check takes no lock, so one tenant's submissions don't
serialize on each other's commits; within INFERQ_QUEUE_CAP_EXACT_MARGIN jobs of a cap, on PostgreSQL, a per-tenant
advisory lock serializes the check and the commit, so two concurrent submissions cannot both take the last place.
(The lock-free path can overshoot a cap only if more than that margin of one tenant's submissions are in flight at
once.)
"""

from __future__ import annotations

import functools
import zlib
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, select, text
from sqlalchemy.orm import Session

from shared.config.errors import PayloadTooLarge, PriorityNotAllowed, QueueFull
from shared.config.settings import Settings
from shared.config.status import JobStatus, Priority
from shared.db.models import Job

ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)


@dataclass(frozen=True)
class QueueUsage:
    """What a tenant has in the queue: jobs queued or running, and their unfinished items."""

    jobs: int
    items: int


def queue_usage(session: Session, *, tenant_id: str) -> QueueUsage:
    """The tenant's queued or running jobs and their unfinished items, as this transaction sees them."""
    row = session.execute(_usage_query(), {"tenant_id": tenant_id}).one()
    return QueueUsage(jobs=int(row[0]), items=int(row[1]))


@functools.cache
def _usage_query() -> Any:
    """queue_usage's statement, built once (every job submission runs it): `tenant_id` is bound at execution."""
    remaining = Job.total_items - Job.completed_items - Job.failed_items
    return select(func.count(), func.coalesce(func.sum(remaining), 0)).where(
        Job.tenant_id == bindparam("tenant_id"), Job.status.in_(ACTIVE)
    )


def check_queue(session: Session, *, tenant_id: str, new_items: int, settings: Settings) -> None:
    """Refuse (429 queue-full) when the tenant's queue, including this transaction's new jobs, is past a cap."""
    if new_items > settings.max_queued_items_per_tenant:
        raise PayloadTooLarge(
            f"this job has {new_items:,} items; a tenant may have at most {settings.max_queued_items_per_tenant:,} "
            "unfinished items queued (INFERQ_MAX_QUEUED_ITEMS_PER_TENANT): split it into smaller jobs"
        )
    usage = queue_usage(session, tenant_id=tenant_id)
    if _far_below_caps(usage, new_items, settings):
        return  # no lock: a tenant's submissions must not queue up behind each other's commits
    _lock_tenant(session, tenant_id)
    usage = queue_usage(session, tenant_id=tenant_id)  # again, now that concurrent submissions wait for us
    if usage.jobs > settings.max_queued_jobs_per_tenant:
        setting, limit, what = "INFERQ_MAX_QUEUED_JOBS_PER_TENANT", settings.max_queued_jobs_per_tenant, "jobs"
        have = usage.jobs
    elif usage.items > settings.max_queued_items_per_tenant:
        setting, limit, what = "INFERQ_MAX_QUEUED_ITEMS_PER_TENANT", settings.max_queued_items_per_tenant, "items"
        have = usage.items
    else:
        return
    raise QueueFull(
        f"the queue is full: with this job the tenant would have {have:,} unfinished {what} queued or running, "
        f"past the limit of {limit:,} ({setting}). Retry when some jobs have finished, or cancel jobs you no "
        "longer need.",
        retry_after_s=settings.queue_full_retry_after_s,
        limit=limit,
        limit_setting=setting,
    )


def _far_below_caps(usage: QueueUsage, new_items: int, settings: Settings) -> bool:
    """True when even INFERQ_QUEUE_CAP_EXACT_MARGIN concurrent submissions of a classify job's size cannot reach a
    cap; within that margin of a cap (or for a job bigger than a classify job) the check locks and is exact."""
    margin = settings.queue_cap_exact_margin
    if margin == 0 or new_items > settings.max_images_per_job:
        return False
    return (
        usage.jobs + margin <= settings.max_queued_jobs_per_tenant
        and usage.items + margin * settings.max_images_per_job <= settings.max_queued_items_per_tenant
    )


def _lock_tenant(session: Session, tenant_id: str) -> None:
    """On PostgreSQL, hold a per-tenant advisory lock until this transaction ends (SQLite serializes writers)."""
    if session.get_bind().dialect.name == "postgresql":
        key = zlib.crc32(f"inferq-queue:{tenant_id}".encode())
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": key})


def admit_job(session: Session, job: Job, settings: Settings) -> None:
    """Refuse the job this transaction is about to queue when it would take its tenant past a cap (429 queue-full,
    or 413 for a job bigger than the item cap). Call it right before the commit: it flushes, so the count includes
    the job, and the caller's rollback then removes everything the transaction wrote."""
    session.flush()
    check_queue(session, tenant_id=job.tenant_id or "default", new_items=int(job.total_items or 0), settings=settings)


def check_priority(settings: Settings, tenant_id: str, requested: int | None) -> int:
    """A classify job's priority: `requested`, else normal (or the tenant's cap, if that is lower). Above the
    tenant's cap (INFERQ_TENANT_MAX_PRIORITY, else INFERQ_MAX_PRIORITY) it is 403 priority-not-allowed."""
    cap = settings.priority_cap(tenant_id)
    if requested is None:
        return min(int(Priority.NORMAL), cap)
    if requested > cap:
        raise PriorityNotAllowed(
            f"priority {requested} is above this tenant's cap of {cap} (set by the operator in "
            f"INFERQ_TENANT_MAX_PRIORITY or INFERQ_MAX_PRIORITY); send a priority of at most {cap}",
            max_priority=cap,
        )
    return int(Priority(requested))
