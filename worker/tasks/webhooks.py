"""The webhook dispatcher task: a thin periodic wrapper around worker.webhooks_dispatch.dispatch_due."""

from __future__ import annotations

from celery import shared_task

from shared.runtime.celery_app import WEBHOOK_DISPATCH_TASK
from worker.context import get_context
from worker.webhooks_dispatch import dispatch_due


@shared_task(name=WEBHOOK_DISPATCH_TASK, ignore_result=True)
def dispatch_webhooks() -> dict[str, int]:
    """Send the webhook deliveries that are due (run by beat every INFERQ_WEBHOOK_DISPATCH_INTERVAL_S)."""
    ctx = get_context()
    return dispatch_due(ctx.sessions, ctx.settings).as_dict()
