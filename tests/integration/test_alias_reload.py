"""Hot alias reload on the real stack: moving `production` through the API reaches a running worker, no restart."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from shared.config.settings import Settings
from tests.factories import png_bytes, post_files
from tests.integration.conftest import register_artifact_copy, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _add_version_2(settings: Settings) -> None:
    """Register mnist-cnn:2 (a copy of version 1's artifact) with no alias."""
    (artifact,) = (settings.data_dir / "models" / "mnist-cnn" / "1").glob("model.*")
    register_artifact_copy(settings, artifact, version=2)


def _classify(api_client: Any) -> dict[str, Any]:
    """Submit one image to mnist-cnn@production and wait for the finished job."""
    resp = post_files(api_client, [png_bytes()], model="mnist-cnn@production")
    assert resp.status_code == 202, resp.get_data(as_text=True)
    job_id = resp.get_json()["id"]

    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = api_client.get(f"/v1/jobs/{job_id}").get_json()
        return job if job["status"] in {"succeeded", "failed", "canceled"} else None

    result: dict[str, Any] = wait_until(finished, 60, f"job {job_id} to finish")
    return result


def _classify_until(api_client: Any, version: str, within_s: float) -> tuple[dict[str, Any], float]:
    """Classify one image after another until a job runs on `version`; the job and the seconds it took."""
    started = time.monotonic()
    while True:
        job = _classify(api_client)
        took = time.monotonic() - started
        if job["model_version"] == version or took > within_s:
            return job, took


def test_moving_an_alias_reaches_a_running_worker(
    stack_settings: Settings, start_worker: Callable[..., Any], api_client: Any
) -> None:
    """Jobs on mnist-cnn@production run v1; after PUT .../aliases/production {"version": 2} jobs (same worker
    process, no restart) run v2 within INFERQ_MODEL_REF_TTL_S plus a model load, and so do their predictions;
    rolling back returns to v1 the same way, and a switched worker does not flap back."""
    _add_version_2(stack_settings)
    worker = start_worker()
    first = _classify(api_client)
    assert (first["status"], first["model_version"]) == ("succeeded", "mnist-cnn:1")

    resp = api_client.put("/v1/models/mnist-cnn/aliases/production", json={"version": 2})
    assert resp.status_code == 200 and resp.get_json()["aliases"] == {"production": 2}
    second, took = _classify_until(api_client, "mnist-cnn:2", within_s=10)
    print(f"\nalias move -> first job finished on v2: {took:.2f}s (includes loading v2 in the worker)")
    assert (second["status"], second["model_version"]) == ("succeeded", "mnist-cnn:2")
    assert {p["model_version"] for p in second["predictions"]} == {"mnist-cnn:2"}
    assert _classify(api_client)["model_version"] == "mnist-cnn:2"

    api_client.put("/v1/models/mnist-cnn/aliases/production", json={"version": 1})
    third, took = _classify_until(api_client, "mnist-cnn:1", within_s=10)
    print(f"rollback -> first job finished on v1: {took:.2f}s")
    assert third["model_version"] == "mnist-cnn:1"
    assert worker.proc.poll() is None  # the same worker process served every job


def test_a_version_trained_on_the_training_queue_can_be_promoted(
    stack_settings: Settings, start_worker: Callable[..., Any], api_client: Any
) -> None:
    """POST trainings runs on a worker consuming the training queue, shows its history on GET /v1/jobs/{id},
    registers mnist-cnn:2, and promoting it makes the next classify job run on it."""
    start_worker("--lanes", "interactive,bulk,training,ops")
    resp = api_client.post("/v1/models/mnist-cnn/trainings", json={"epochs": 1, "limit": 300, "augment": False})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    job_id = resp.get_json()["id"]

    def finished() -> dict[str, Any] | None:
        job: dict[str, Any] = api_client.get(f"/v1/jobs/{job_id}").get_json()
        return job if job["status"] in {"succeeded", "failed", "canceled"} else None

    job = wait_until(finished, 240, "the training job to finish", interval=0.5)
    assert job["status"] == "succeeded", job.get("error")
    assert job["model_version"] == "mnist-cnn:2" and len(job["result"]["history"]) == 1
    assert api_client.put("/v1/models/mnist-cnn/aliases/production", json={"version": 2}).status_code == 200
    assert _classify(api_client)["model_version"] == "mnist-cnn:2"
