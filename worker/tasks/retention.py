"""The retention task: a thin periodic wrapper around shared.tenancy.retention.purge_expired."""

from __future__ import annotations

from celery import shared_task

from shared.runtime.celery_app import RETENTION_TASK
from shared.tenancy.retention import purge_expired
from worker.context import get_context


@shared_task(name=RETENTION_TASK, ignore_result=True)
def purge_old_data() -> dict[str, int]:
    """Delete finished jobs and datasets past their tenant's retention (run by beat every
    INFERQ_RETENTION_INTERVAL_S)."""
    ctx = get_context()
    return purge_expired(sessions=ctx.sessions, store=ctx.store, settings=ctx.settings).as_dict()
