"""The whole path on real services: upload -> PostgreSQL + Redis -> worker subprocess -> prediction rows."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import uuid
from typing import Any

import pytest
import requests
import sqlalchemy as sa

from inferq.samples import as_user_photo, mnist_sample
from shared.config.settings import Settings
from shared.runtime.celery_app import CLASSIFY_TASK, make_celery
from shared.runtime.embedded import free_port
from tests.integration.conftest import env_for, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
FLOWER_LOGIN = ("ops", "flower-test-password")


def png_of(digit: int, nth: int = 0) -> bytes:
    buf = io.BytesIO()
    as_user_photo(mnist_sample(digit, nth)).save(buf, format="PNG")
    return buf.getvalue()


def submit(client: Any, images: list[bytes]) -> str:
    files = [(io.BytesIO(b), f"img{i}.png") for i, b in enumerate(images)]
    resp = client.post("/v1/jobs", data={"images": files, "top_k": "3"}, content_type="multipart/form-data")
    assert resp.status_code == 202, resp.json
    return str(resp.json["id"])


def terminal(client: Any, job_id: str) -> dict[str, Any] | None:
    body: dict[str, Any] = client.get(f"/v1/jobs/{job_id}").json
    return body if body["status"] in {"succeeded", "failed", "canceled"} else None


def db_rows(settings: Settings, sql: str, **params: Any) -> list[Any]:
    engine = sa.create_engine(settings.resolved_database_url)
    with engine.connect() as conn:
        rows = list(conn.execute(sa.text(sql), params))
    engine.dispose()
    return rows


def test_upload_to_prediction_rows_on_postgres(stack_settings: Settings, api_client: Any, start_worker: Any) -> None:
    """An uploaded image is classified by a real worker and its prediction lands in PostgreSQL."""
    assert stack_settings.resolved_database_url.startswith("postgresql")
    start_worker()
    job_id = submit(api_client, [png_of(7), png_of(3)])
    job = api_client.get(f"/v1/jobs/{job_id}?wait=60").json  # one long poll instead of polling
    assert job["status"] == "succeeded", job
    assert job["model_version"] == "mnist-cnn:1"
    assert job["counts"] == {"total": 2, "completed": 2, "failed": 0, "expired": 0}
    assert [len(p["top_k"]) for p in job["predictions"]] == [3, 3]
    rows = db_rows(
        stack_settings,
        "SELECT idx, status, label, confidence, model_version_id, batch_size "
        "FROM job_items WHERE job_id = :j ORDER BY idx",
        j=uuid.UUID(job_id),
    )
    assert [(r.idx, r.status) for r in rows] == [(0, "succeeded"), (1, "succeeded")]
    assert all(r.label in "0123456789" and 0 < r.confidence <= 1 and r.model_version_id and r.batch_size for r in rows)


def test_prefer_wait_answers_with_the_finished_job(
    stack_settings: Settings, api_client: Any, start_worker: Any
) -> None:
    """`Prefer: wait=30` on the POST: a real worker's notification ends the wait, and the answer is a 201 with the
    predictions (no poll needed); the job is the same one a GET shows."""
    start_worker()
    files = [(io.BytesIO(png_of(7)), "seven.png")]
    resp = api_client.post(
        "/v1/jobs", data={"images": files}, content_type="multipart/form-data", headers={"Prefer": "wait=30"}
    )
    assert resp.status_code == 201, resp.json
    assert resp.headers["Preference-Applied"] == "wait=30"
    body = resp.json
    assert body["status"] == "succeeded" and body["predictions"][0]["label"] == "7"
    assert resp.headers["Location"] == f"/v1/jobs/{body['id']}"
    assert api_client.get(resp.headers["Location"]).json["predictions"] == body["predictions"]


def test_redelivered_message_writes_nothing_twice(stack_settings: Settings, api_client: Any, start_worker: Any) -> None:
    """The same job delivered three times at once ends succeeded with one result per item, written once."""
    job_id = submit(api_client, [png_of(1), png_of(8)])
    celery = make_celery(stack_settings)
    for _ in range(2):
        celery.send_task(CLASSIFY_TASK, args=[job_id])
    start_worker()
    first = wait_until(lambda: terminal(api_client, job_id), 120, "the job to finish")
    marker = submit(api_client, [png_of(0)])
    wait_until(lambda: terminal(api_client, marker), 120, "a later job to finish")
    rows = db_rows(
        stack_settings,
        "SELECT idx, completed_at FROM job_items WHERE job_id = :j ORDER BY idx",
        j=uuid.UUID(job_id),
    )
    assert [r.idx for r in rows] == [0, 1]
    again = terminal(api_client, job_id)
    assert again is not None and again["status"] == "succeeded"
    assert again["predictions"] == first["predictions"]
    assert again["counts"] == {"total": 2, "completed": 2, "failed": 0, "expired": 0}


def test_reconciler_dispatches_a_job_whose_publish_failed(
    stack_settings: Settings, api_client: Any, start_worker: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job committed while Redis could not take its message is found by the reconciler and finished."""
    services = api_client.application.extensions["inferq"]

    def broken_send(*_a: Any, **_k: Any) -> None:
        raise ConnectionError("redis is down")

    monkeypatch.setattr(services.celery, "send_task", broken_send)
    job_id = submit(api_client, [png_of(4)])
    assert api_client.get(f"/v1/jobs/{job_id}").json["status"] == "queued"
    start_worker("--beat")
    job = wait_until(lambda: terminal(api_client, job_id), 120, "the reconciler to dispatch the job")
    assert job["status"] == "succeeded"


def test_concurrent_jobs_share_forward_passes(stack_settings: Settings, api_client: Any, start_worker: Any) -> None:
    """Single-image jobs submitted together are grouped into forward passes larger than one image."""
    ids = [submit(api_client, [png_of(d % 10, d // 10)]) for d in range(40)]
    start_worker()  # started after the submissions, so the queue is full when it begins
    for job_id in ids:
        wait_until(lambda j=job_id: terminal(api_client, j), 120, f"job {job_id}")
    rows = db_rows(
        stack_settings, "SELECT max(batch_size) AS m, count(*) AS n FROM job_items WHERE status = 'succeeded'"
    )
    assert rows[0].n == 40
    assert rows[0].m > 1


def test_canceled_job_is_not_run(stack_settings: Settings, api_client: Any, start_worker: Any) -> None:
    """A job canceled while queued stays canceled and its items get no prediction."""
    job_id = submit(api_client, [png_of(2)])
    assert api_client.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    marker = submit(api_client, [png_of(5)])
    start_worker()
    wait_until(lambda: terminal(api_client, marker), 120, "a later job to finish")
    job = api_client.get(f"/v1/jobs/{job_id}").json
    assert job["status"] == "canceled"
    assert job["predictions"][0]["label"] is None


def test_flower_shows_the_cpu_worker_and_small_task_arguments(
    stack_settings: Settings, api_client: Any, start_worker: Any, tmp_path: Any
) -> None:
    """Flower lists the worker as cpu@host and each classify task with the job id as its only argument (its API
    behind the basic-auth login inferq starts it with)."""
    port = free_port()
    env = dict(env_for(stack_settings), INFERQ_FLOWER_BASIC_AUTH=f"{FLOWER_LOGIN[0]}:{FLOWER_LOGIN[1]}")
    log = open(tmp_path / "flower.log", "wb")  # noqa: SIM115
    flower = subprocess.Popen(
        [sys.executable, "-m", "inferq", "flower", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: _get(f"{base}/healthcheck") == "OK", 60, "Flower to answer")
        start_worker()
        job_id = submit(api_client, [png_of(6)])
        wait_until(lambda: terminal(api_client, job_id), 120, "the job to finish")
        workers = wait_until(
            lambda: [w for w in _json(f"{base}/api/workers?refresh=1") or {} if w.startswith("cpu@")],
            60,
            "Flower to see the worker",
        )
        assert workers
        tasks = wait_until(
            lambda: {
                k: t
                for k, t in (_json(f"{base}/api/tasks") or {}).items()
                if t.get("name") == "inferq.classify" and job_id in (t.get("args") or "")
            },
            60,
            "Flower to see the task",
        )
        (task,) = tasks.values()
        assert task["args"] == f"['{job_id}']"
        assert task["state"] == "SUCCESS"
    finally:
        os.killpg(flower.pid, signal.SIGTERM)
        flower.wait(20)
        log.close()


def _get(url: str) -> str | None:
    try:
        return requests.get(url, timeout=2).text
    except requests.RequestException:
        return None


def _json(url: str) -> Any:
    try:
        resp = requests.get(url, timeout=5, auth=FLOWER_LOGIN)
        return resp.json() if resp.ok else None
    except (requests.RequestException, ValueError):
        return None
