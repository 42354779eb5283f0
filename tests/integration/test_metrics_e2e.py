"""Metrics on the real stack: the API's /metrics and a worker subprocess's endpoint move as jobs flow."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import requests

from inferq.top import parse, total
from shared.config.settings import Settings
from shared.runtime.embedded import free_port
from tests.integration.conftest import WorkerProcess, wait_until
from tests.integration.test_pipeline import png_of, submit

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ITEMS, CHUNK = 300, 100


def api_scrape(client: Any) -> dict[Any, float]:
    resp = client.get("/metrics")
    assert resp.status_code == 200
    return parse(resp.get_data(as_text=True))


def digits_npz() -> bytes:
    """ITEMS images of digits (a repeated real MNIST-style sample is enough to be scored)."""
    rng = np.random.default_rng(0)
    x = (rng.random((ITEMS, 28, 28)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x)
    return buf.getvalue()


def submit_score(client: Any) -> str:
    ds = client.post("/v1/datasets?filename=d.npz", data=digits_npz(), content_type="application/octet-stream")
    assert ds.status_code == 201, ds.get_json()
    resp = client.post("/v1/jobs", json={"kind": "score", "dataset": ds.get_json()["id"], "top_k": 1})
    assert resp.status_code == 202, resp.get_json()
    return str(resp.get_json()["id"])


def finished(client: Any, job_ids: list[str]) -> bool:
    return all(client.get(f"/v1/jobs/{j}").get_json()["status"] == "succeeded" for j in job_ids)


def test_metrics_move_as_jobs_flow(stack_settings: Settings, api_client: Any) -> None:
    """Queued jobs raise their lane's depth (a score job the bulk lane's by its chunks) and the submission counters; a
    worker then drains the lane to 0 and its endpoint counts batches and finished jobs of both kinds."""
    settings = stack_settings.model_copy(
        update={"chunk_size": CHUNK, "array_chunk_size": CHUNK, "worker_metrics_port": free_port()}
    )
    api_client.application.extensions["inferq"].settings = settings  # the API splits the dataset by CHUNK
    before = api_scrape(api_client)
    assert total(before, "inferq_queue_depth", lane="bulk") == 0

    score_id = submit_score(api_client)
    queued = api_scrape(api_client)
    assert total(queued, "inferq_queue_depth", lane="bulk") == ITEMS // CHUNK  # one message per chunk
    assert total(queued, "inferq_jobs", status="queued") == 1
    classify_ids = [submit(api_client, [png_of(d)]) for d in (1, 2, 3)]
    queued = api_scrape(api_client)
    assert total(queued, "inferq_queue_depth", lane="bulk") == ITEMS // CHUNK
    assert total(queued, "inferq_queue_depth", lane="interactive") == 3
    for kind, n in (("score", 1), ("classify", 3)):
        gained = total(queued, "inferq_jobs_submitted_total", kind=kind) - total(
            before, "inferq_jobs_submitted_total", kind=kind
        )
        assert gained == n, kind

    worker = WorkerProcess(settings)
    try:
        worker.wait_ready()
        wait_until(lambda: finished(api_client, [score_id, *classify_ids]), 120, "every job to succeed")

        def drained_scrape() -> dict[Any, float] | None:
            scraped = api_scrape(api_client)
            return scraped if total(scraped, "inferq_queue_depth") == 0 else None

        drained = wait_until(drained_scrape, 30, "the lanes to drain")
        assert total(drained, "inferq_jobs", status="succeeded") == 4
        url = f"http://{settings.metrics_host}:{settings.worker_metrics_port}/metrics"
        scraped = parse(requests.get(url, timeout=5).text)
        assert total(scraped, "inferq_batch_size_count", kind="classify") >= 1
        assert total(scraped, "inferq_batch_size_count", kind="score") >= ITEMS // settings.score_batch
        assert total(scraped, "inferq_batch_size_sum", kind="score") == ITEMS
        assert total(scraped, "inferq_job_duration_seconds_count", kind="classify", outcome="succeeded") == 3
        assert total(scraped, "inferq_job_duration_seconds_count", kind="score", outcome="succeeded") == 1
        assert total(scraped, "inferq_job_queue_seconds_count", lane="interactive") == 3
        assert total(scraped, "inferq_job_queue_seconds_count", lane="bulk") == 1
        assert total(scraped, "inferq_images_total", outcome="succeeded") == ITEMS + 3
        assert total(scraped, "inferq_model_loads_total") >= 1
        assert total(scraped, "inferq_forward_seconds_count", model="mnist-cnn", version="1", format="tflite") >= 2
    finally:
        worker.stop()
