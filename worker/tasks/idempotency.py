"""The Idempotency-Key purge: a thin periodic wrapper around shared.tenancy.idempotency.purge_expired."""

from __future__ import annotations

from celery import shared_task

from shared.runtime.celery_app import IDEMPOTENCY_PURGE_TASK
from shared.tenancy.idempotency import purge_expired
from worker.context import get_context


@shared_task(name=IDEMPOTENCY_PURGE_TASK, ignore_result=True)
def purge_idempotency_keys() -> int:
    """Delete Idempotency-Keys older than INFERQ_IDEMPOTENCY_TTL_S (run by beat every
    INFERQ_IDEMPOTENCY_PURGE_INTERVAL_S, in batches until none is left)."""
    ctx = get_context()
    total = 0
    while True:
        with ctx.sessions.begin() as session:
            deleted = purge_expired(session=session, ttl_s=ctx.settings.idempotency_ttl_s)
        total += deleted
        if deleted == 0:
            return total
