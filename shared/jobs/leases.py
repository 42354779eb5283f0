"""Reconciler queries: which jobs look lost (stale queued or running), and compare-and-set leases to re-dispatch
them, so reconcilers on several workers never publish the same job twice in one lease."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from shared.config.status import JobKind, JobStatus
from shared.db.models import Job, JobItem, utcnow


def stale_queued_jobs(
    session: Session,
    *,
    lease_s: float,
    limit: int = 500,
    include_dispatched: bool = True,
    kind: JobKind = JobKind.CLASSIFY,
) -> list[uuid.UUID]:
    """Queued jobs of one kind whose dispatch is older than the lease (or never happened), oldest first; with
    include_dispatched=False only the never-published ones (a backlog in the broker is not a lost message)."""
    cutoff = utcnow() - timedelta(seconds=lease_s)
    stale = (
        or_(Job.dispatched_at.is_(None), Job.dispatched_at < cutoff)
        if include_dispatched
        else Job.dispatched_at.is_(None)
    )
    q = (
        select(Job.id)
        .where(Job.status == JobStatus.QUEUED.value, Job.kind == kind.value)
        .where(stale, Job.created_at < cutoff)
        .order_by(Job.created_at)
        .limit(limit)
    )
    return list(session.scalars(q))


def claim_for_redispatch(session: Session, job_id: uuid.UUID, *, lease_s: float) -> bool:
    """Take the re-dispatch lease of one stale queued job (compare-and-set on dispatched_at)."""
    return bool(claim_stale_queued(session, [job_id], lease_s=lease_s))


def claim_stale_queued(session: Session, job_ids: Sequence[uuid.UUID], *, lease_s: float) -> list[uuid.UUID]:
    """Take the re-dispatch lease of stale queued jobs in one compare-and-set statement (on dispatched_at); returns
    the ones taken, in the order given (another reconciler may have taken the others)."""
    cutoff = utcnow() - timedelta(seconds=lease_s)
    stmt = (
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.status == JobStatus.QUEUED.value)
        .where(or_(Job.dispatched_at.is_(None), Job.dispatched_at < cutoff))
        .values(dispatched_at=utcnow())
    )
    return _taken(session, stmt, job_ids)


def _taken(session: Session, stmt: Any, job_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    if not job_ids:
        return []
    taken = set(session.scalars(stmt.returning(Job.id).execution_options(synchronize_session=False)))
    return [job_id for job_id in job_ids if job_id in taken]


def stale_running_jobs(
    session: Session, *, lease_s: float, limit: int = 500, kind: JobKind = JobKind.CLASSIFY
) -> list[uuid.UUID]:
    """Running jobs of one kind untouched for longer than the lease (their message or worker is gone), oldest
    first."""
    cutoff = utcnow() - timedelta(seconds=lease_s)
    q = (
        select(Job.id)
        .where(Job.status == JobStatus.RUNNING.value, Job.kind == kind.value)
        .where(or_(Job.updated_at.is_(None), Job.updated_at < cutoff))
        .order_by(Job.updated_at)
        .limit(limit)
    )
    return list(session.scalars(q))


def claim_running_for_redispatch(session: Session, job_id: uuid.UUID, *, lease_s: float) -> bool:
    """Take the re-dispatch lease of one stale running job (compare-and-set on updated_at)."""
    return bool(claim_stale_running(session, [job_id], lease_s=lease_s))


def claim_stale_running(
    session: Session, job_ids: Sequence[uuid.UUID], *, lease_s: float, count_attempt: bool = False
) -> list[uuid.UUID]:
    """Take the re-dispatch lease of stale running jobs in one compare-and-set statement (on updated_at); returns
    the ones taken. With count_attempt the stall counts as an attempt (score jobs: their chunk tasks count none)."""
    cutoff = utcnow() - timedelta(seconds=lease_s)
    now = utcnow()
    values: dict[str, Any] = {"updated_at": now, "dispatched_at": now}
    if count_attempt:
        values["attempts"] = Job.attempts + 1
    stmt = (
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.status == JobStatus.RUNNING.value)
        .where(or_(Job.updated_at.is_(None), Job.updated_at < cutoff))
        .values(**values)
    )
    return _taken(session, stmt, job_ids)


def undispatched_running_jobs(session: Session, *, lease_s: float, kind: JobKind, limit: int = 500) -> list[uuid.UUID]:
    """Running jobs of one kind created over the lease ago whose publishing never finished (no dispatched_at): a
    score job whose chunk publishing failed part-way runs the chunks that were sent and waits for the others."""
    cutoff = utcnow() - timedelta(seconds=lease_s)
    q = (
        select(Job.id)
        .where(Job.status == JobStatus.RUNNING.value, Job.kind == kind.value)
        .where(Job.dispatched_at.is_(None), Job.created_at < cutoff)
        .order_by(Job.created_at)
        .limit(limit)
    )
    return list(session.scalars(q))


def claim_undispatched(session: Session, job_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Take the re-dispatch lease of running jobs that were never marked dispatched (compare-and-set on
    dispatched_at); returns the ones taken."""
    stmt = (
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.status == JobStatus.RUNNING.value, Job.dispatched_at.is_(None))
        .values(dispatched_at=utcnow())
    )
    return _taken(session, stmt, job_ids)


def touch_running(session: Session, job_ids: Sequence[uuid.UUID]) -> int:
    """Renew the running lease of jobs whose tasks are alive in this process (a heartbeat); returns how many."""
    if not job_ids:
        return 0
    res = session.execute(
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.status == JobStatus.RUNNING.value)
        .values(updated_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return int(res.rowcount)  # type: ignore[attr-defined]


def written_indices(session: Session, job_id: uuid.UUID, idxs: Sequence[int]) -> set[int]:
    """Which of these item indices of a job already have a row (score jobs: a chunk's rows are written at once,
    so its first index tells whether the chunk is done)."""
    found: set[int] = set()
    for start in range(0, len(idxs), 1000):
        part = list(idxs[start : start + 1000])
        found.update(session.scalars(select(JobItem.idx).where(JobItem.job_id == job_id, JobItem.idx.in_(part))))
    return found
