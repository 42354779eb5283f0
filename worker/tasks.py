"""Celery tasks: thin wrappers that take ids and call plain functions."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Task, shared_task
from sqlalchemy.exc import OperationalError

from shared import jobs as jobstore
from shared.celery_app import CLASSIFY_TASK, INFERENCE_QUEUE, RECONCILE_TASK
from shared.db import session_scope
from shared.schemas import ClassifyTask
from worker.context import get_context
from worker.inference import reconcile, run_classify

log = logging.getLogger(__name__)


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
    """Re-dispatch queued and running jobs whose message may have been lost."""
    app = reconcile_queued.app

    def publish(job_id: uuid.UUID) -> None:
        app.send_task(CLASSIFY_TASK, args=[str(job_id)])

    def backlog() -> int:
        """Messages waiting in the inference queue (all priorities); unknown counts as a backlog."""
        try:
            with app.connection_for_read() as conn:
                # not passive: Redis deletes an empty list, and a passive declare of a missing queue raises
                return int(conn.default_channel.queue_declare(INFERENCE_QUEUE).message_count)
        except Exception:  # noqa: BLE001 - the broker is unreachable: no queued job is judged lost now
            log.warning("could not read the inference queue's length", exc_info=True)
            return 1

    return reconcile(get_context(), publish, backlog)
