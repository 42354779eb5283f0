"""Score jobs whose chunk messages are lost: the publish fails part-way, and Redis restarts empty mid-job."""

from __future__ import annotations

import io
import time
import uuid
from typing import Any

import numpy as np
import pytest
import sqlalchemy as sa

from tests.access import use_key
from tests.faults.conftest import FaultStack
from tests.integration.conftest import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

ITEMS = 10_000  # 100 chunks of INFERQ_CHUNK_SIZE=100
PUBLISHED = 30  # the first job's publish fails after this many chunk messages


def upload(client: Any, items: int) -> str:
    """Upload an array dataset of `items` random 28x28 images; returns its id."""
    images = np.random.default_rng(0).integers(0, 256, size=(items, 28, 28), dtype=np.uint8)
    buf = io.BytesIO()
    np.save(buf, images)
    resp = client.post("/v1/datasets?filename=digits.npy", data=buf.getvalue(), content_type="application/octet-stream")
    assert resp.status_code == 201, resp.json
    return str(resp.json["id"])


def rows(s: FaultStack, job_id: uuid.UUID) -> int:
    with s.engine.connect() as conn:
        count = conn.execute(sa.text("SELECT count(*) FROM job_items WHERE job_id = :j"), {"j": job_id})
        return int(count.scalar_one())


def test_score_chunks_lost_to_a_failed_publish_and_an_empty_redis(
    fault_stack: FaultStack, report: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Job A's chunk publishing fails after 30 of 100 messages; Redis restarts empty while job B runs. The
    reconciler sends exactly the chunks without rows: both jobs succeed with one row per item."""
    from api.app import create_app

    s = fault_stack
    app = create_app(s.settings)
    use_key(app)
    client = app.test_client()
    dataset = upload(client, ITEMS)
    celery = app.extensions["inferq"].celery
    real, calls = celery.send_task, []

    def failing_after_30(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) > PUBLISHED:
            raise ConnectionError("injected: publish failed part-way through the chunks")
        return real(*args, **kwargs)

    s.start_worker()
    monkeypatch.setattr(celery, "send_task", failing_after_30)
    first = client.post("/v1/jobs", json={"kind": "score", "dataset": dataset})
    monkeypatch.setattr(celery, "send_task", real)
    second = client.post("/v1/jobs", json={"kind": "score", "dataset": dataset})
    assert (first.status_code, second.status_code) == (202, 202), (first.json, second.json)
    a, b = uuid.UUID(first.json["id"]), uuid.UUID(second.json["id"])
    s.accepted += [a, b]
    wait_until(lambda: rows(s, b) >= 100, 120, "job B's first chunk", interval=0.02)
    s.checker.snapshot()
    t_fault = time.monotonic()
    s.redis.kill()
    time.sleep(1.0)  # the broker stays away for a moment (the outage itself, not synchronisation)
    s.redis.restart(empty=True)
    s.quiesce()
    recovery = time.monotonic() - t_fault
    app.extensions["inferq"].engine.dispose()
    v = s.checker.verdict("score: publish fails 30/100 + redis EMPTY", s.accepted, recovery)
    report(v.line())
    with s.engine.connect() as conn:
        jobs = conn.execute(
            sa.text("SELECT status, completed_items, failed_items FROM jobs WHERE id = ANY(:ids) ORDER BY created_at"),
            {"ids": [a, b]},
        ).all()
    assert [tuple(j) for j in jobs] == [("succeeded", ITEMS, 0)] * 2
    assert len(calls) == PUBLISHED + 1
    assert (v.lost, v.duplicates, v.failed) == (0, 0, 0)
