"""Deadlines on the real stack (PostgreSQL, Redis, a worker process): a job whose deadline passes while it waits
never runs, ends `expired` (whichever ends it first: the worker that takes its message or the reconciler), and its
webhook says so; a job with time left beside it runs as usual."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from api.app import create_app
from shared.config.settings import Settings
from tests.access import use_key
from tests.factories import b64, png_bytes
from tests.integration.conftest import WorkerProcess, wait_until
from tests.webhook_receiver import running_receiver

pytestmark = pytest.mark.integration


def test_a_job_past_its_deadline_never_runs_and_its_webhook_says_expired(stack_settings: Settings) -> None:
    settings = stack_settings.model_copy(update={"webhook_allow_cidrs": "127.0.0.0/8", "webhook_retry_scale": 0.01})
    app = create_app(settings)
    use_key(app)
    client = app.test_client()
    image = {"data": b64(png_bytes())}
    with running_receiver() as rec:
        late = client.post(
            "/v1/jobs", json={"images": [image, image], "webhook": rec.url}, headers={"Inferq-Deadline-S": "0.2"}
        )
        plain = client.post("/v1/jobs", json={"images": [image], "deadline_s": 600})
        assert late.status_code == plain.status_code == 202, late.get_data(as_text=True)
        time.sleep(0.5)  # no worker yet: the first job's deadline passes while it is queued
        worker = WorkerProcess(settings, "--beat")  # the beat runs the reconciler and the webhook dispatcher
        try:
            worker.wait_ready()

            def finished(job_id: str) -> dict[str, Any] | None:
                job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").get_json()
                return job if job["status"] not in ("queued", "running") else None

            expired = wait_until(lambda: finished(late.get_json()["id"]), 60, "the late job to end")
            ran = wait_until(lambda: finished(plain.get_json()["id"]), 60, "the other job to end")
            hooks = wait_until(lambda: list(rec.requests), 30, "the webhook of the late job")
        finally:
            worker.stop()
    app.extensions["inferq"].engine.dispose()
    assert (expired["status"], expired["attempts"], expired["error"]["type"]) == ("expired", 0, "deadline-expired")
    assert expired["counts"] == {"total": 2, "completed": 0, "failed": 0, "expired": 2}
    assert [p["label"] for p in expired["predictions"]] == [None, None]  # nothing ran
    assert ran["status"] == "succeeded" and ran["counts"]["completed"] == 1
    (event,) = [json.loads(r.body) for r in hooks]
    assert (event["type"], event["data"]["status"], event["data"]["counts"]["expired"]) == (
        "job.completed",
        "expired",
        2,
    )
