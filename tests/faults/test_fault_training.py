"""Training jobs whose message is lost: the publish fails, and Redis restarts empty before a worker takes it."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

from tests.access import use_key
from tests.faults.conftest import FaultStack

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

# A quick training run: 100 images, one epoch (the fault is the point, not the model).
TRAINING = {"epochs": 1, "limit": 100, "batch_size": 50, "augment": False, "patience": 1}


# Training runs longer than a classify task: a visibility timeout above its time limit, as in production.
@pytest.mark.fault_settings(visibility_timeout=180)
def test_lost_training_messages_are_dispatched_again(
    fault_stack: FaultStack, report: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Job A's publish fails; job B's message dies with Redis (restarted empty). The reconciler publishes both
    again; each trains once, registers exactly one version and succeeds on its first attempt."""
    from api.app import create_app

    s = fault_stack
    app = create_app(s.settings)
    use_key(app)
    client = app.test_client()
    celery = app.extensions["inferq"].celery
    real = celery.send_task

    def failing(*_: Any, **__: Any) -> Any:
        raise ConnectionError("injected: publish failed after commit")

    monkeypatch.setattr(celery, "send_task", failing)
    first = client.post("/v1/models/mnist-cnn/trainings", json=TRAINING)
    monkeypatch.setattr(celery, "send_task", real)
    second = client.post("/v1/models/mnist-cnn/trainings", json=TRAINING)
    assert (first.status_code, second.status_code) == (202, 202), (first.json, second.json)
    s.accepted += [uuid.UUID(first.json["id"]), uuid.UUID(second.json["id"])]
    assert s.redis.queue_length("training") == 1
    t_fault = time.monotonic()
    s.redis.kill()
    s.redis.restart(empty=True)
    assert s.redis.queue_length("training") == 0
    s.start_worker(lanes="interactive,bulk,training,ops")
    s.quiesce(timeout=300)
    recovery = time.monotonic() - t_fault
    app.extensions["inferq"].engine.dispose()
    v = s.checker.verdict("training: publish fails + redis restart EMPTY", s.accepted, recovery)
    report(v.line())
    with s.engine.connect() as conn:
        jobs = conn.execute(
            sa.text("SELECT status, attempts, error FROM jobs WHERE id = ANY(:ids) ORDER BY created_at"),
            {"ids": s.accepted},
        ).all()
    assert [(j.status, j.attempts) for j in jobs] == [("succeeded", 1)] * 2, [tuple(j) for j in jobs]
    assert (v.lost, v.duplicates, v.failed) == (0, 0, 0)
