"""The classify job as plain functions: load ids, preprocess, hand images to the batcher, record outcomes."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared import jobs as jobstore
from shared.db import session_scope
from shared.errors import InferqError, ModelNotFound, ModelNotReady, ValidationFailed
from shared.imaging import preprocess
from shared.models import Job, JobItem, ModelVersion
from shared.registry import parse_ref, resolve
from shared.status import ItemStatus, JobStatus
from worker.context import WorkerContext

log = logging.getLogger(__name__)

# TEST-ONLY (INFERQ_FAULT_INJECTION): a job of this model kills its worker process, to rehearse a poison batch.
FAULT_POISON_MODEL = "fault-poison"
# A redelivered job may be the one that crashed its last worker: such jobs run one at a time in a process, so a
# poison job takes at most the first-time jobs beside it down again, never its fellow suspects.
_redelivered = threading.Lock()


@dataclass(frozen=True)
class BatchTag:
    """What the batcher's sink needs to turn a request's outputs into rows."""

    job_id: uuid.UUID
    item_ids: tuple[int, ...]
    top_k: int


@dataclass(frozen=True)
class Outcome:
    """What a classify task did, returned to Celery (small, for Flower)."""

    job_id: str
    status: str
    images: int = 0

    def as_dict(self) -> dict[str, str | int]:
        return {"job_id": self.job_id, "status": self.status, "images": self.images}


def start_job(ctx: WorkerContext, job_id: uuid.UUID) -> tuple[Job, ModelVersion] | Outcome:
    """Resolve the model and count the attempt; an Outcome means there is nothing (more) to do."""
    with session_scope(ctx.sessions) as session:
        job = session.get(Job, job_id)
        if job is None:
            log.warning("job %s has no row (rolled back?); nothing to do", job_id)
            return Outcome(str(job_id), "missing")
        if JobStatus(job.status).is_terminal():
            return Outcome(str(job_id), job.status)
        if job.attempts >= ctx.settings.max_attempts:
            jobstore.fail_job(
                session,
                job_id,
                "too-many-attempts",
                f"the job was delivered {job.attempts} times without finishing (INFERQ_MAX_ATTEMPTS)",
            )
            return Outcome(str(job_id), JobStatus.FAILED.value)
        try:
            mv = resolve(session, parse_ref(job.model_ref), default_alias=ctx.settings.default_alias)
        except (ModelNotFound, ValidationFailed) as exc:
            jobstore.fail_job(session, job_id, exc.type_slug, exc.detail)
            return Outcome(str(job_id), JobStatus.FAILED.value)
        if not jobstore.start_attempt(session, job_id, mv.id):
            return Outcome(str(job_id), "not-runnable")
        session.refresh(job)
        return job, mv


def load_inputs(ctx: WorkerContext, job: Job) -> tuple[list[int], list[np.ndarray], list[jobstore.ItemResult]]:
    """Preprocess the pending items; undecodable ones become error results instead of failing the job."""
    with session_scope(ctx.sessions) as session:
        items = list(
            session.scalars(
                select(JobItem)
                .where(JobItem.job_id == job.id, JobItem.status == ItemStatus.PENDING.value)
                .order_by(JobItem.idx)
            )
        )
    ids, arrays, errors = [], [], []
    for item in items:
        try:
            arrays.append(preprocess(ctx.store.get(item.input_key or ""), max_pixels=ctx.settings.max_image_pixels))
            ids.append(item.id)
        except InferqError as exc:
            errors.append(jobstore.ItemResult(item_id=item.id, error_type=exc.type_slug, error=exc.detail))
        except FileNotFoundError:
            errors.append(
                jobstore.ItemResult(
                    item_id=item.id, error_type="input-missing", error="the stored input of this item is gone"
                )
            )
    return ids, arrays, errors


def run_classify(ctx: WorkerContext, job_id: uuid.UUID) -> Outcome:
    """Run one classify job through the micro-batcher; safe to run again for the same job."""
    with session_scope(ctx.sessions) as session:
        redelivered = (session.scalar(select(Job.attempts).where(Job.id == job_id)) or 0) > 0
    if redelivered:  # take the lock before counting the attempt: waiting here costs a suspect no attempt
        with _redelivered:
            return _run(ctx, job_id)
    return _run(ctx, job_id)


def _run(ctx: WorkerContext, job_id: uuid.UUID) -> Outcome:
    started = start_job(ctx, job_id)
    if isinstance(started, Outcome):
        return started
    return _classify(ctx, *started)


def _classify(ctx: WorkerContext, job: Job, mv: ModelVersion) -> Outcome:
    job_id = job.id
    if ctx.settings.fault_injection and mv.name == FAULT_POISON_MODEL:  # never on in production
        log.critical("fault injection: job %s names %s; the worker process exits now", job_id, FAULT_POISON_MODEL)
        os._exit(9)
    ids, arrays, errors = load_inputs(ctx, job)
    if errors:
        ctx.commit_results(errors, mv.id, {job.id})
    if ids:
        try:
            batcher = ctx.batcher(mv)
        except ModelNotReady as exc:
            with session_scope(ctx.sessions) as session:
                jobstore.fail_job(session, job.id, exc.type_slug, exc.detail)
            return Outcome(str(job_id), JobStatus.FAILED.value)
        tag = BatchTag(job_id=job.id, item_ids=tuple(ids), top_k=int(job.params.get("top_k", 1)))
        batcher.submit(np.stack(arrays), tag=tag).result(timeout=ctx.settings.task_soft_time_limit)
    with session_scope(ctx.sessions) as session:
        jobstore.finish_if_done(session, job.id)
        status = session.scalar(select(Job.status).where(Job.id == job.id)) or "missing"
    return Outcome(str(job_id), status, images=len(ids) + len(errors))


def reconcile(ctx: WorkerContext, publish: Callable[[uuid.UUID], None], backlog: Callable[[], int] = lambda: 0) -> int:
    """Re-dispatch queued and running jobs whose message may be lost (leased per job, so reconcilers don't collide).

    A queued job is stale after INFERQ_QUEUED_LEASE_S without a dispatch; a running job after
    INFERQ_RUNNING_LEASE_S without progress (longer than the task time limit, so its task is gone). The redelivered
    task continues idempotently and counts an attempt; after INFERQ_MAX_ATTEMPTS the job fails with a reason.
    A published queued job is only re-dispatched while the broker's queue is empty (`backlog()` == 0): behind a
    backlog it is waiting, not lost, and re-publishing it would multiply the queue.
    """
    include_dispatched = backlog() == 0
    lease_q = ctx.settings.queued_lease_s

    def queued(session: Session, *, lease_s: float) -> list[uuid.UUID]:
        return jobstore.stale_queued_jobs(session, lease_s=lease_s, include_dispatched=include_dispatched)

    running, lease_r = jobstore.stale_running_jobs, ctx.settings.running_lease_s
    sent_q = _redispatch(ctx, publish, queued, jobstore.claim_for_redispatch, lease_q)
    sent_r = _redispatch(ctx, publish, running, jobstore.claim_running_for_redispatch, lease_r)
    if sent_q or sent_r:
        log.warning("reconciler re-dispatched %d queued and %d running job(s)", sent_q, sent_r)
    return sent_q + sent_r


def _redispatch(
    ctx: WorkerContext,
    publish: Callable[[uuid.UUID], None],
    find: Callable[..., list[uuid.UUID]],
    claim: Callable[..., bool],
    lease_s: float,
) -> int:
    """Claim each stale job's lease (compare-and-set), then publish its message again."""
    sent = 0
    with session_scope(ctx.sessions) as session:
        stale = find(session, lease_s=lease_s)
    for job_id in stale:
        with session_scope(ctx.sessions) as session:
            if not claim(session, job_id, lease_s=lease_s):
                continue
        publish(job_id)
        sent += 1
    return sent
