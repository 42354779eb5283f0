"""The classify job as plain functions: load ids, preprocess, hand images to the batcher, record outcomes."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select

from shared import jobs as jobstore
from shared.db import session_scope
from shared.errors import InferqError, ModelNotFound, ModelNotReady, ValidationFailed
from shared.imaging import preprocess
from shared.models import Job, JobItem, ModelVersion
from shared.registry import parse_ref, resolve
from shared.status import ItemStatus, JobStatus
from worker.context import WorkerContext

log = logging.getLogger(__name__)


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
    started = start_job(ctx, job_id)
    if isinstance(started, Outcome):
        return started
    job, mv = started
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


def reconcile(ctx: WorkerContext, publish: Callable[[uuid.UUID], None]) -> int:
    """Re-dispatch queued jobs whose message may be lost (leased per job, so reconcilers don't collide)."""
    sent = 0
    with session_scope(ctx.sessions) as session:
        stale = jobstore.stale_queued_jobs(session, lease_s=ctx.settings.queued_lease_s)
    for job_id in stale:
        with session_scope(ctx.sessions) as session:
            if not jobstore.claim_for_redispatch(session, job_id, lease_s=ctx.settings.queued_lease_s):
                continue
        publish(job_id)
        sent += 1
    if sent:
        log.warning("reconciler re-dispatched %d queued job(s)", sent)
    return sent
