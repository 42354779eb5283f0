"""The periodic Idempotency-Key purge: beat runs it, and it deletes every key past INFERQ_IDEMPOTENCY_TTL_S."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

import worker.tasks.idempotency
from shared.db.models import utcnow
from shared.db.tenancy_models import IdempotencyKey
from shared.runtime.celery_app import IDEMPOTENCY_PURGE_TASK, OPS_QUEUE, celery_config
from shared.tenancy.idempotency import Claim, claim_key
from tests.worker.conftest import ContextFactory


def test_beat_runs_the_purge_on_the_inference_queue(make_ctx: ContextFactory) -> None:
    """inferq.idempotency.purge runs every INFERQ_IDEMPOTENCY_PURGE_INTERVAL_S on the inference queue."""
    ctx = make_ctx(idempotency_purge_interval_s=900)
    config = celery_config(ctx.settings)
    assert config["beat_schedule"]["idempotency"] == {"task": IDEMPOTENCY_PURGE_TASK, "schedule": 900}  # type: ignore[index]
    assert config["task_routes"][IDEMPOTENCY_PURGE_TASK] == {"queue": OPS_QUEUE}  # type: ignore[index]
    assert worker.tasks.idempotency.purge_idempotency_keys.name == IDEMPOTENCY_PURGE_TASK


def test_task_purges_every_expired_key_in_batches(make_ctx: ContextFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys older than the TTL go (over several batches), younger ones stay."""
    ctx = make_ctx()
    monkeypatch.setattr(worker.tasks.idempotency, "get_context", lambda: ctx)
    for i in range(7):
        claim = claim_key(
            sessions=ctx.sessions, tenant_id="t", key=f"k{i}", method="POST", path="/v1/jobs", lease_s=600
        )
        assert isinstance(claim, Claim)
    with ctx.sessions.begin() as s:
        old = utcnow() - timedelta(seconds=ctx.settings.idempotency_ttl_s + 60)
        s.execute(update(IdempotencyKey).where(IdempotencyKey.key != "k6").values(created_at=old))
    monkeypatch.setattr(worker.tasks.idempotency, "purge_expired", _in_batches_of_two)
    assert worker.tasks.idempotency.purge_idempotency_keys() == 6
    with ctx.sessions() as s:
        assert list(s.scalars(select(IdempotencyKey.key))) == ["k6"]


def _in_batches_of_two(**kwargs: object) -> int:
    from shared.tenancy.idempotency import purge_expired

    return purge_expired(**kwargs, batch=2)  # type: ignore[arg-type]
