"""/v1/jobs: submit classify jobs, poll them, page through results, list, cancel and delete."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from flask import Response, jsonify, request
from flask_openapi3 import APIBlueprint, Tag
from pydantic import BaseModel, Field

from api.auth import current_tenant
from api.deps import db, services
from api.openapi import QueryModel
from api.scoring import create_score_job
from api.uploads import read_classify_request, read_deadline, read_prefer_wait
from api.webhooks import attach_job_webhook, read_job_webhook
from shared.config.errors import JobNotFound, ValidationFailed
from shared.config.status import JobStatus
from shared.db.models import Job, utcnow
from shared.jobs import lifecycle as jobstore
from shared.registry.versions import parse_ref
from shared.runtime.celery_app import CLASSIFY_TASK, classify_queue
from shared.schemas.public import JobPublic, JobsPublic, PredictionPublic, Problem, ResultsPublic
from shared.tenancy import retention
from shared.tenancy.quotas import admit_job, check_priority

log = logging.getLogger(__name__)
bp = APIBlueprint(
    "jobs",
    __name__,
    url_prefix="/v1/jobs",
    abp_tags=[Tag(name="jobs")],
    abp_responses={"404": Problem, "422": Problem},
)


class JobPath(BaseModel):
    job_id: str = Field(description="The job's id (a UUID).")


class JobsQuery(QueryModel):
    status: JobStatus | None = Field(None, description="Only jobs in this status.")
    cursor: str | None = Field(None, pattern=jobstore.CURSOR_PATTERN, description="next_cursor of the previous page.")
    limit: int = Field(50, ge=1, le=500)


class ResultsQuery(QueryModel):
    after: int = Field(-1, ge=-1, le=2**31 - 1, description="Return items whose index is greater than this.")
    limit: int = Field(100, ge=1, le=500)


def _job_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise JobNotFound(f"job {text!r} does not exist (job ids are UUIDs)") from None


@bp.post(
    "",
    summary="Submit a classify job",
    responses={
        "201": JobPublic,
        "202": JobPublic,
        "400": Problem,
        "403": Problem,
        "413": Problem,
        "415": Problem,
        "503": Problem,
    },
)
def create_job() -> tuple[Response, int, dict[str, str]]:
    """Accepts images as multipart files (any field name, plus optional `model` and `top_k` fields) or JSON
    `{"images": [{"data": "<base64>", "filename": "a.png"}], "model": "mnist-cnn@production", "top_k": 3}`.
    Inputs are stored durably before the 202; poll the `Location` or the job's links.
    With `Prefer: wait=N` (at most INFERQ_MAX_WAIT_S seconds) the answer waits for the job: 201 with its
    predictions if it finished in time, else the usual 202 (`Preference-Applied` says the wait was honoured)."""
    body = request.get_json(silent=True) if request.is_json else None
    if isinstance(body, dict) and body.get("kind") == "score":  # bulk scoring of a stored dataset
        return create_score_job(body, read_job_webhook(request, services().settings))
    svc = services()
    svc.lane_gauge.check()  # 503 lane-full before the body is read when the interactive lane is backed up
    settings = svc.settings
    parsed = read_classify_request(request, settings)
    webhook = read_job_webhook(request, settings)  # 422 webhook-url-refused before anything is written
    deadline_at = read_deadline(request, parsed.deadline_s, settings)
    tenant = current_tenant()
    priority = check_priority(settings, tenant, parsed.priority)  # 403 above the tenant's cap
    top_k = settings.default_top_k if parsed.top_k is None else parsed.top_k
    if top_k > settings.max_top_k:
        raise ValidationFailed(f"top_k must be at most {settings.max_top_k} (INFERQ_MAX_TOP_K)")
    session = db()
    ref = parse_ref(parsed.model or settings.default_model)
    # 404 now, not a failed job later (remembered per process for INFERQ_MODEL_REF_TTL_S)
    svc.known_refs.check(session, ref, default_alias=settings.default_alias, tenant_id=tenant)
    job = jobstore.create_classify_job(
        session=session,
        store=svc.store,
        uploads=parsed.uploads,
        model_ref=str(ref),
        top_k=top_k,
        tenant_id=tenant,
        dispatched_at=utcnow(),  # optimistic, in the insert: the publish follows the commit; a failure clears it
        inline_max_bytes=settings.inline_input_max_bytes,
        explain=parsed.explain,
        deadline_at=deadline_at,
        priority=priority,
    )
    try:
        attach_job_webhook(session, job, webhook)
        admit_job(session, job, settings)  # 429 queue-full past the tenant's caps
        session.commit()
    except BaseException:
        session.rollback()
        jobstore.delete_inputs(svc.store, job.id, len(parsed.uploads))
        raise
    headers = {"Location": f"/v1/jobs/{job.id}"}
    wait_s = read_prefer_wait(request, settings)
    if wait_s is None:
        dispatch(job.id, priority)
        return jsonify(JobPublic.of(job).model_dump(mode="json")), 202, headers
    # Prefer: wait=N: answer with the finished job (201) if it finishes within N seconds, saving the poll. Watching
    # before the publish, no notification can be missed, so the first read waits for one (or the fallback).
    headers["Preference-Applied"] = f"wait={wait_s}"
    deadline = time.monotonic() + wait_s
    with svc.waiter.watch(job.id, ready_within_s=min(wait_s, SUBSCRIPTION_READY_S)) as finished:
        dispatch(job.id, priority)
        job = _until_terminal(job.id, tenant, deadline, finished, read_now=False)
    return jsonify(_public(job)), 201 if JobStatus(job.status).is_terminal() else 202, headers


def dispatch(job_id: uuid.UUID, priority: int) -> None:
    """Publish the job's message after commit to its priority's queue (its dispatched_at was stamped in the insert,
    saving a transaction). If Redis is unreachable the stamp is cleared, so the reconciler re-dispatches the job
    even behind a backlog."""
    svc = services()
    try:
        svc.celery.send_task(CLASSIFY_TASK, args=[str(job_id)], queue=classify_queue(svc.settings, priority))
    except Exception:  # the job is durable; the reconciler publishes it once the lease passes
        log.warning("publishing job %s failed; the reconciler will dispatch it", job_id, exc_info=True)
        try:
            with svc.sessions.begin() as session:
                jobstore.mark_undispatched(session, job_id)
        except Exception:  # still found by the reconciler once the broker's queue is empty and the lease passed
            log.warning("clearing the dispatch stamp of job %s failed", job_id, exc_info=True)


@bp.get("", summary="List jobs, newest first", responses={"200": JobsPublic})
def list_jobs(query: JobsQuery) -> Response:
    """Cursor-paginated; filter by status."""
    limit = min(query.limit, services().settings.page_size_max)
    rows, cursor = jobstore.jobs_page(
        db(), tenant_id=current_tenant(), status=query.status, cursor=query.cursor, limit=limit
    )
    return jsonify(JobsPublic(data=[JobPublic.of(j) for j in rows], next_cursor=cursor).model_dump(mode="json"))


class JobQuery(QueryModel):
    wait: float = Field(
        0,
        ge=0,
        description="Long poll: seconds to wait for the job to finish before answering "
        "(at most INFERQ_MAX_WAIT_S); 0 answers at once.",
    )


@bp.get("/<job_id>", summary="Get a job (with its predictions once finished)", responses={"200": JobPublic})
def get_job(path: JobPath, query: JobQuery) -> Response:
    """Status, counts, timestamps, the model version that ran, and the predictions when terminal.
    With `?wait=N` the answer comes as soon as the job is terminal, or after N seconds (instead of polling)."""
    session, svc = db(), services()
    job_id, tenant = _job_id(path.job_id), current_tenant()
    if query.wait > 0:
        job = _read_when_terminal(job_id, tenant, min(query.wait, svc.settings.max_wait_s))
    else:
        job = jobstore.get_job(session, job_id, tenant_id=tenant)
    return jsonify(_public(job))


def _public(job: Job) -> dict[str, Any]:
    """The job's public view, with its predictions once it is terminal (GET, and a POST that waited for it)."""
    items = None
    if JobStatus(job.status).is_terminal():
        items = jobstore.items_page(db(), job.id, after=-1, limit=services().settings.max_images_per_job)
    return JobPublic.of(job, items).model_dump(mode="json")


# How long a long poll waits for the process's job-finished subscription to be confirmed by Redis (only until the
# first confirmation; a lost subscription falls back to re-reading every INFERQ_WAIT_POLL_INTERVAL_S).
SUBSCRIPTION_READY_S = 2.0


def _read_when_terminal(job_id: uuid.UUID, tenant: str, wait_s: float) -> Job:
    """The job once it is terminal or `wait_s` has passed: re-read when a worker's notification names it (or every
    INFERQ_WAIT_POLL_INTERVAL_S, in case a notification is lost)."""
    deadline = time.monotonic() + wait_s
    ready = min(wait_s, SUBSCRIPTION_READY_S)  # the process's first long poll: let the subscription start first
    with services().waiter.watch(job_id, ready_within_s=ready) as finished:  # registered before the first read
        return _until_terminal(job_id, tenant, deadline, finished, read_now=True)


def _until_terminal(
    job_id: uuid.UUID, tenant: str, deadline: float, finished: threading.Event, *, read_now: bool
) -> Job:
    """Read the job until it is terminal or the deadline passes, waiting for `finished` (set by a notification) or
    INFERQ_WAIT_POLL_INTERVAL_S between reads; `read_now=False` waits before the first read."""
    session, svc = db(), services()
    while True:
        if read_now:
            session.expire_all()  # session.get answers from the identity map (a POST's own job) without a read
            job = jobstore.get_job(session, job_id, tenant_id=tenant)
            if JobStatus(job.status).is_terminal() or deadline <= time.monotonic():
                return job
        read_now = True
        finished.wait(max(0.0, min(deadline - time.monotonic(), svc.settings.wait_poll_interval_s)))
        finished.clear()
        session.rollback()  # end the read transaction so the next read sees new commits (SQLite WAL too)


@bp.get("/<job_id>/results", summary="Page through a job's predictions", responses={"200": ResultsPublic})
def get_results(path: JobPath, query: ResultsQuery) -> Response:
    """Items in index order; pass `after` = the last index you saw (`next_cursor`)."""
    session = db()
    job = jobstore.get_job(session, _job_id(path.job_id), tenant_id=current_tenant())
    limit = min(query.limit, services().settings.page_size_max)
    items = jobstore.items_page(session, job.id, after=query.after, limit=limit)
    versions = {job.model_version.id: job.model_version.ref} if job.model_version else {}
    cursor = str(items[-1].idx) if len(items) == limit else None
    body = ResultsPublic(
        job_id=job.id,
        status=JobStatus(job.status),
        data=[PredictionPublic.of(i, versions) for i in items],
        next_cursor=cursor,
    )
    return jsonify(body.model_dump(mode="json"))


@bp.post(
    "/<job_id>/cancel",
    summary="Cancel a job that has not finished",
    responses={"200": JobPublic, "409": Problem},
)
def cancel_job(path: JobPath) -> Response:
    """Queued or running jobs become `canceled`; finished jobs answer 409."""
    session = db()
    job = jobstore.cancel_job(session, _job_id(path.job_id), tenant_id=current_tenant())
    session.commit()
    return jsonify(JobPublic.of(job).model_dump(mode="json"))


@bp.delete(
    "/<job_id>",
    summary="Delete a finished job with its inputs and results",
    responses={"204": None, "409": Problem},
)
def delete_job(path: JobPath) -> tuple[str, int]:
    """Deletes a succeeded, failed or canceled job: its stored input images, its predictions and errors, its
    webhook deliveries and any uploaded model file or training logs. A queued or running job answers 409
    `job-not-finished`: cancel it first. Afterwards the job is a 404, as if it never existed."""
    session, svc = db(), services()
    job = jobstore.get_job(session, _job_id(path.job_id), tenant_id=current_tenant())
    retention.delete_job(session=session, store=svc.store, settings=svc.settings, job=job)
    session.commit()
    return "", 204
