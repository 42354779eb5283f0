"""The classify job as plain functions: load ids, prepare images, hand readable ones to the batcher, record
outcomes (pictures with nothing to read succeed with a null label and their warnings, without a forward pass)."""

from __future__ import annotations

import logging
import os
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select

from shared.config.errors import InferqError, ModelNotFound, ModelNotReady, ValidationFailed
from shared.config.status import JobStatus
from shared.db.engine import session_scope
from shared.db.models import Job, ModelVersion, utcnow
from shared.inputs.imaging import confidence_warnings, prepare
from shared.jobs import lifecycle as jobstore
from shared.jobs.lifecycle import ItemResult
from shared.registry.versions import parse_ref, resolve
from shared.runtime.heap import freeze_startup_heap
from worker.batcher import Request, SinkFn
from worker.context import SinkFactory, WorkerContext, get_context
from worker.explain import explain_results
from worker.runtime import LoadedModel

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
    warnings: tuple[tuple[str, ...], ...] = ()  # preprocessing's warnings per item (aligned with item_ids)
    explain: bool = False  # the job option: the sink adds saliency maps and the pictures the model saw
    finished: list[str] = field(default_factory=list, compare=False)  # the job's terminal status, set by the sink


@dataclass(frozen=True)
class Outcome:
    """What a classify task did, returned to Celery (small, for Flower)."""

    job_id: str
    status: str
    images: int = 0

    def as_dict(self) -> dict[str, str | int]:
        return {"job_id": self.job_id, "status": self.status, "images": self.images}


def run_classify(ctx: WorkerContext, job_id: uuid.UUID) -> Outcome:
    """Run one classify job through the micro-batcher; safe to run again for the same job.

    A first delivery is claimed in one transaction (count the attempt, read the pending items); anything else —
    a redelivery, a missing or finished job — takes the careful path of start_job."""
    with session_scope(ctx.sessions) as session:
        claim = jobstore.claim_first_attempt(session, job_id)
    if claim is None:
        return _run_again(ctx, job_id)
    try:
        mv = ctx.resolve(claim.model_ref, claim.tenant_id)
    except (ModelNotFound, ValidationFailed) as exc:
        with session_scope(ctx.sessions) as session:
            jobstore.fail_job(session, job_id, exc.type_slug, exc.detail)
        return Outcome(str(job_id), JobStatus.FAILED.value)
    return _classify(ctx, job_id, mv, claim.items, claim.top_k, explain=claim.explain)


def start_job(ctx: WorkerContext, job_id: uuid.UUID) -> tuple[Job, ModelVersion] | Outcome:
    """Resolve the model and count the attempt; an Outcome means there is nothing (more) to do."""
    with session_scope(ctx.sessions) as session:
        job = session.get(Job, job_id)
        if job is None:
            log.warning("job %s has no row (rolled back?); nothing to do", job_id)
            return Outcome(str(job_id), "missing")
        if JobStatus(job.status).is_terminal():
            return Outcome(str(job_id), job.status)
        overdue = job.deadline_at is not None and job.deadline_at <= utcnow()
        if overdue and jobstore.expire_overdue(session, [job_id]):  # its deadline passed while queued: it never runs
            return Outcome(str(job_id), JobStatus.EXPIRED.value)
        if job.attempts >= ctx.settings.max_attempts:
            jobstore.fail_job(
                session,
                job_id,
                "too-many-attempts",
                f"the job was delivered {job.attempts} times without finishing (INFERQ_MAX_ATTEMPTS)",
            )
            return Outcome(str(job_id), JobStatus.FAILED.value)
        try:
            ref = parse_ref(job.model_ref)
            mv = resolve(session, ref, default_alias=ctx.settings.default_alias, tenant_id=job.tenant_id)
        except (ModelNotFound, ValidationFailed) as exc:
            jobstore.fail_job(session, job_id, exc.type_slug, exc.detail)
            return Outcome(str(job_id), JobStatus.FAILED.value)
        if not jobstore.start_attempt(session, job_id, mv.id):
            return Outcome(str(job_id), "not-runnable")
        session.refresh(job)
        return job, mv


@dataclass(frozen=True)
class Inputs:
    """A job's pending items after preprocessing: the readable ones for the model, and the ones settled already."""

    ids: list[int] = field(default_factory=list)
    arrays: list[np.ndarray] = field(default_factory=list)
    warnings: list[tuple[str, ...]] = field(default_factory=list)  # aligned with ids
    settled: list[jobstore.ItemResult] = field(default_factory=list)  # errors, and unreadable items (label None)


def load_inputs(ctx: WorkerContext, items: list[jobstore.PendingInput]) -> Inputs:
    """Prepare the pending items (bytes from the row, or from the blob store): undecodable ones become error results
    and pictures with nothing to read become label-less results with their warnings (neither fails the job nor
    reaches the model)."""
    found = Inputs()
    for item_id, key, data in items:
        try:
            raw = data if data is not None else ctx.store.get(key or "")
            prepared = prepare(raw, max_pixels=ctx.settings.max_image_pixels)
        except InferqError as exc:
            found.settled.append(jobstore.ItemResult(item_id=item_id, error_type=exc.type_slug, error=exc.detail))
            continue
        except FileNotFoundError:
            found.settled.append(
                jobstore.ItemResult(
                    item_id=item_id, error_type="input-missing", error="the stored input of this item is gone"
                )
            )
            continue
        if not prepared.readable:
            found.settled.append(jobstore.ItemResult(item_id=item_id, warnings=list(prepared.warnings)))
            continue
        found.ids.append(item_id)
        found.arrays.append(prepared.image)
        found.warnings.append(prepared.warnings)
    return found


def _run_again(ctx: WorkerContext, job_id: uuid.UUID) -> Outcome:
    """The careful path: a redelivered job may be the one that crashed its last worker, so it runs alone."""
    with session_scope(ctx.sessions) as session:
        redelivered = (session.scalar(select(Job.attempts).where(Job.id == job_id)) or 0) > 0
    if redelivered:  # take the lock before counting the attempt: waiting here costs a suspect no attempt
        with _redelivered:
            return _run_started(ctx, job_id)
    return _run_started(ctx, job_id)


def _run_started(ctx: WorkerContext, job_id: uuid.UUID) -> Outcome:
    started = start_job(ctx, job_id)
    if isinstance(started, Outcome):
        return started
    job, mv = started
    with session_scope(ctx.sessions) as session:
        items = jobstore.pending_inputs(session, job_id)
    outcome = _classify(
        ctx, job_id, mv, items, int(job.params.get("top_k", 1)), explain=bool(job.params.get("explain"))
    )
    if outcome.status in (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value):
        return outcome
    with session_scope(ctx.sessions) as session:  # every item was written before a crash: finish it now
        jobstore.finish_if_done(session, job_id, progress_interval_s=ctx.settings.webhook_progress_interval_s)
        status = session.scalar(select(Job.status).where(Job.id == job_id)) or "missing"
    return Outcome(str(job_id), status, images=outcome.images)


def _classify(
    ctx: WorkerContext,
    job_id: uuid.UUID,
    mv: ModelVersion,
    items: list[jobstore.PendingInput],
    top_k: int,
    *,
    explain: bool = False,
) -> Outcome:
    if ctx.settings.fault_injection and mv.name == FAULT_POISON_MODEL:  # never on in production
        log.critical("fault injection: job %s names %s; the worker process exits now", job_id, FAULT_POISON_MODEL)
        os._exit(9)
    inputs = load_inputs(ctx, items)
    tag = BatchTag(
        job_id=job_id, item_ids=tuple(inputs.ids), top_k=top_k, warnings=tuple(inputs.warnings), explain=explain
    )
    if inputs.settled:
        tag.finished.extend(s.value for s in ctx.commit_results(inputs.settled, mv.id, {job_id}).values())
    if inputs.ids:
        try:
            batcher = ctx.batcher(mv, classify_sink(ctx))
        except ModelNotReady as exc:
            with session_scope(ctx.sessions) as session:
                jobstore.fail_job(session, job_id, exc.type_slug, exc.detail)
            return Outcome(str(job_id), JobStatus.FAILED.value)
        batcher.submit(np.stack(inputs.arrays), tag=tag).result(timeout=ctx.settings.task_soft_time_limit)
    status = tag.finished[-1] if tag.finished else JobStatus.RUNNING.value
    return Outcome(str(job_id), status, images=len(inputs.ids) + len(inputs.settled))


# --- a forward pass's outputs become result rows ---------------------------------------------------------------------


def top_k(probs: np.ndarray, labels: Sequence[str], k: int) -> list[dict[str, Any]]:
    """The k most likely labels of one output row, best first."""
    order = np.argsort(-probs)[:k]
    return [{"label": labels[i] if i < len(labels) else str(i), "confidence": float(probs[i])} for i in order]


def pass_results(
    requests: Sequence[Request], outputs: Sequence[np.ndarray], batch_size: int, labels: Sequence[str], threshold: float
) -> list[ItemResult]:
    """One result row per image of a forward pass: its label, top-k and warnings (preprocessing's, plus a low
    confidence one under INFERQ_LOW_CONFIDENCE_THRESHOLD), and the size of the pass it was in."""
    return [
        ItemResult(
            item_id=item_id,
            label=t[0]["label"],
            confidence=t[0]["confidence"],
            top_k=t,
            warnings=confidence_warnings(noticed, t[0]["confidence"], threshold),
            batch_size=batch_size,
        )
        for req, out in zip(requests, outputs, strict=True)
        for item_id, row, noticed in zip(req.tag.item_ids, out, _noticed(req.tag), strict=True)
        for t in [top_k(row, labels, req.tag.top_k)]
    ]


def classify_sink(ctx: WorkerContext) -> SinkFactory:
    """What a version's batcher does with each forward pass: build the result rows (with saliency maps for jobs
    that asked to explain), write them and settle the finished jobs in one transaction, and tell each request
    whether its job finished."""

    def make(mv: ModelVersion, model: LoadedModel) -> SinkFn:
        version_id, labels = mv.id, list(mv.labels)
        threshold, patch = ctx.settings.low_confidence_threshold, ctx.settings.explain_occlusion_patch

        def sink(requests: Sequence[Request], outputs: Sequence[np.ndarray], batch_size: int) -> None:
            results = pass_results(requests, outputs, batch_size, labels, threshold)
            results = explain_results(model, requests, outputs, results, patch=patch)
            finished = ctx.commit_results(results, version_id, {req.tag.job_id for req in requests})
            for req in requests:
                if req.tag.job_id in finished:
                    req.tag.finished.append(finished[req.tag.job_id].value)

        return sink

    return make


def _noticed(tag: Any) -> Sequence[tuple[str, ...]]:
    """Preprocessing's warnings per item of a batcher request (none recorded: nothing noticed)."""
    return getattr(tag, "warnings", None) or [()] * len(tag.item_ids)


def warm_up() -> None:
    """Load the default model and start its batcher (failures are logged: jobs will report them)."""
    ctx = get_context()
    try:
        with ctx.sessions() as session:
            mv = resolve(session, parse_ref(ctx.settings.default_model), default_alias=ctx.settings.default_alias)
        ctx.batcher(mv, classify_sink(ctx))
        log.info("default model %s loaded", mv.ref)
    except Exception as exc:  # no model yet, or a broken artifact: not fatal for the worker
        log.warning("could not preload the default model: %s", exc)
    freeze_startup_heap()  # TensorFlow's objects and the model's, out of every later full collection
