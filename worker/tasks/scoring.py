"""Celery task of bulk scoring: one message per chunk, carrying the job id and the chunk index only."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from celery import Task, shared_task

from shared.runtime.celery_app import SCORE_CHUNK_TASK
from worker.context import get_context
from worker.scoring import fail_chunk, run_chunk

log = logging.getLogger(__name__)


@shared_task(name=SCORE_CHUNK_TASK, bind=True, max_retries=None)
def score_chunk(self: Task, job_id: str, chunk_index: int) -> dict[str, Any]:
    """Score one chunk; retried with backoff, and after INFERQ_MAX_ATTEMPTS its items become error rows."""
    ctx = get_context()
    try:
        return run_chunk(ctx, uuid.UUID(job_id), int(chunk_index)).as_dict()
    except Exception as exc:
        attempts = self.request.retries + 1
        if attempts >= ctx.settings.max_attempts:
            log.exception("chunk %d of job %s failed for good", chunk_index, job_id)
            fail_chunk(ctx, uuid.UUID(job_id), int(chunk_index), f"{type(exc).__name__}: {exc}"[:500])
            return {"job_id": job_id, "chunk": chunk_index, "status": "failed"}
        log.warning("chunk %d of job %s attempt %d failed (%s); retrying", chunk_index, job_id, attempts, exc)
        raise self.retry(exc=exc, countdown=min(2**attempts, 30)) from exc
