"""Priorities on the real stack (PostgreSQL, Redis, a worker subprocess): a high-priority classify job overtakes
normal and low ones queued before it, and low ones wait for the normal ones."""

from __future__ import annotations

import io
from typing import Any

import pytest
import redis

from shared.config.settings import Settings
from tests.integration.conftest import WorkerProcess, wait_until
from tests.integration.test_pipeline import png_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def submit(client: Any, digit: int, priority: int) -> str:
    data = {"images": [(io.BytesIO(png_of(digit)), "d.png")], "priority": str(priority)}
    resp = client.post("/v1/jobs", data=data, content_type="multipart/form-data")
    assert resp.status_code == 202, resp.json
    return str(resp.json["id"])


def test_a_high_priority_job_overtakes_the_ones_queued_before_it(stack_settings: Settings, api_client: Any) -> None:
    """Two low, four normal, then one high job are queued with no worker running; a worker taking one job at a time
    (concurrency 1, INFERQ_MAX_BATCH=1 so prefetch 1) then starts the high one first and the low ones last."""
    broker = redis.Redis.from_url(stack_settings.broker_url())
    try:
        low = [submit(api_client, 1, 0) for _ in range(2)]
        normal = [submit(api_client, 2, 1) for _ in range(4)]
        high = submit(api_client, 3, 2)
        lengths = [broker.llen(q) for q in ("interactive-high", "interactive", "interactive-low")]
        assert lengths == [1, 4, 2]
    finally:
        broker.close()

    one_at_a_time = stack_settings.model_copy(update={"max_batch": 1})
    worker = WorkerProcess(one_at_a_time, "--lanes", "interactive,ops", "--concurrency", "1")
    try:
        worker.wait_ready()
        jobs = [high, *normal, *low]

        def all_done() -> list[dict[str, Any]] | None:
            bodies = [api_client.get(f"/v1/jobs/{j}").get_json() for j in jobs]
            return bodies if all(b["status"] == "succeeded" for b in bodies) else None

        bodies = wait_until(all_done, 120, "every job to finish")
    finally:
        worker.stop()
    started = {b["id"]: b["started_at"] for b in bodies}
    order = sorted(started, key=started.__getitem__)
    assert order[0] == high
    assert set(order[1:5]) == set(normal) and set(order[5:]) == set(low)
    assert [b["priority"] for b in bodies] == [2, 1, 1, 1, 1, 0, 0]
