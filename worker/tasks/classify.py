"""Celery tasks: thin wrappers that take ids and call plain functions."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Task, shared_task
from sqlalchemy.exc import OperationalError

from shared.db.engine import session_scope
from shared.jobs import lifecycle as jobstore
from shared.runtime.celery_app import CLASSIFY_TASK, RECONCILE_TASK
from shared.schemas.public import ClassifyTask
from worker import broker
from worker.context import get_context
from worker.inference import run_classify
from worker.reconcile import celery_backlog, celery_publisher, connect_heartbeat, reconcile

log = logging.getLogger(__name__)
connect_heartbeat()  # training and score-chunk tasks renew their job's running lease while they run
broker.install()  # a worker reconnects after Redis goes away instead of exiting (see worker.broker)


@shared_task(name=CLASSIFY_TASK, bind=True, max_retries=None)
def classify(self: Task, job_id: str) -> dict[str, Any]:
    """Classify every pending image of one job (message: the job id only)."""
    payload = ClassifyTask(job_id=uuid.UUID(job_id))
    ctx = get_context()
    try:
        return run_classify(ctx, payload.job_id).as_dict()
    except OperationalError as exc:  # the database blipped: try again later (the attempt is not lost)
        log.warning("job %s: database unavailable (%s); retrying", job_id, exc)
        raise self.retry(exc=exc, countdown=2) from exc
    except Exception as exc:
        with session_scope(ctx.sessions) as session:
            job = jobstore.get_job(session, payload.job_id)
            attempts = job.attempts
            if attempts >= ctx.settings.max_attempts:
                jobstore.fail_job(
                    session,
                    payload.job_id,
                    "worker-error",
                    f"{type(exc).__name__}: {exc}"[:500] + f" (after {attempts} attempts)",
                )
                log.exception("job %s failed for good", job_id)
                return {"job_id": job_id, "status": "failed"}
        log.warning("job %s attempt %d failed (%s); retrying", job_id, attempts, exc)
        raise self.retry(exc=exc, countdown=min(2**attempts, 30)) from exc


@shared_task(name=RECONCILE_TASK, ignore_result=True)
def reconcile_queued() -> int:
    """Re-dispatch classify, score and training jobs whose messages may have been lost (see worker.reconcile)."""
    app = reconcile_queued.app
    return reconcile(get_context(), celery_publisher(app), celery_backlog(app))
