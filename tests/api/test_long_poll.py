"""GET /v1/jobs/{id}?wait=N: answers when the job finishes, woken by the worker's Redis notification."""

from __future__ import annotations

import io
import threading
import time
import uuid
from typing import Any

import pytest
from flask import Flask

from shared.config.status import JobStatus
from shared.jobs import lifecycle as jobstore
from shared.jobs.lifecycle import ItemResult
from shared.runtime.notify import FinishedPublisher, FinishedWaiter
from tests.api.conftest import AppFactory
from tests.factories import png_bytes, post_files, services_of


def _submit(app: Flask) -> uuid.UUID:
    resp = post_files(app.test_client(), [png_bytes()])
    assert resp.status_code == 202, resp.get_data(as_text=True)
    return uuid.UUID(resp.get_json()["id"])


def _announce(redis_url: str, job_id: uuid.UUID) -> None:
    """Publish the job-finished notification, as a worker does after its commit."""
    publisher = FinishedPublisher(redis_url)
    publisher.publish([job_id])
    publisher.close()


def _finish_later(app: Flask, job_id: uuid.UUID, delay_s: float, publish_to: str | None) -> threading.Thread:
    """Cancel the job (a terminal state) after a delay from another thread, then notify like a worker does."""

    def finish() -> None:
        time.sleep(delay_s)  # the delay is the scenario (a job finishing later), not a synchronisation
        with services_of(app).sessions.begin() as s:
            assert jobstore.set_status(s, job_id, JobStatus.CANCELED)
        if publish_to is not None:
            _announce(publish_to, job_id)

    thread = threading.Thread(target=finish)
    thread.start()
    return thread


def test_wait_on_a_finished_job_answers_at_once(make_app: AppFactory) -> None:
    """A terminal job is returned immediately whatever the wait."""
    app = make_app(wait_poll_interval_s=30)
    job_id = _submit(app)
    with services_of(app).sessions.begin() as s:
        jobstore.set_status(s, job_id, JobStatus.CANCELED)
    started = time.monotonic()
    body = app.test_client().get(f"/v1/jobs/{job_id}?wait=20").get_json()
    assert body["status"] == "canceled" and time.monotonic() - started < 5


def test_wait_times_out_with_the_unfinished_job(make_app: AppFactory) -> None:
    """With nothing finishing, the answer comes after `wait` seconds with the job still queued."""
    app = make_app(wait_poll_interval_s=0.05)
    job_id = _submit(app)
    started = time.monotonic()
    body = app.test_client().get(f"/v1/jobs/{job_id}?wait=0.4").get_json()
    assert body["status"] == "queued" and time.monotonic() - started >= 0.4


def test_notification_wakes_the_long_poll_before_the_fallback(make_app: AppFactory, redis_url: str) -> None:
    """On real Redis, the worker's notification answers the poll at once, not at the 30 s fallback re-read."""
    app = make_app(redis_url=redis_url, wait_poll_interval_s=30)
    job_id = _submit(app)
    finisher = _finish_later(app, job_id, 0.5, publish_to=redis_url)
    started = time.monotonic()
    body = app.test_client().get(f"/v1/jobs/{job_id}?wait=25").get_json()
    elapsed = time.monotonic() - started
    finisher.join()
    assert body["status"] == "canceled"
    assert elapsed < 10, f"answered after {elapsed:.1f}s: the notification did not wake the poll"


def test_without_redis_the_fallback_re_read_still_answers(make_app: AppFactory) -> None:
    """With the broker unreachable (no notifications), the periodic re-read finds the finished job."""
    app = make_app(wait_poll_interval_s=0.1)
    job_id = _submit(app)
    finisher = _finish_later(app, job_id, 0.3, publish_to=None)
    body = app.test_client().get(f"/v1/jobs/{job_id}?wait=20").get_json()
    finisher.join()
    assert body["status"] == "canceled"


def test_waiter_wakes_only_the_named_jobs() -> None:
    """notify() sets the events of the ids in the payload and leaves other waiters alone."""
    waiter = FinishedWaiter("redis://127.0.0.1:1/0", retry_s=30)
    a, b = uuid.uuid4(), uuid.uuid4()
    with waiter.watch(a) as ev_a, waiter.watch(b) as ev_b:
        assert waiter.notify(f"{uuid.uuid4()},{a}") == 1
        assert ev_a.is_set() and not ev_b.is_set()
    assert waiter.notify(f"{a},{b}") == 0  # unregistered on exit
    waiter.close()


def test_a_job_finishing_right_after_the_first_watch_is_announced(redis_url: str) -> None:
    """The process's first watch waits for Redis to confirm the subscription, so a notification published the
    moment it returns is received (before, it could be published to nobody while the subscriber thread was still
    connecting, and the poll waited for the fallback re-read: seen as a 25 s answer on a loaded machine)."""
    waiter = FinishedWaiter(redis_url)
    job_id = uuid.uuid4()
    try:
        with waiter.watch(job_id, ready_within_s=10) as finished:
            _announce(redis_url, job_id)
            assert finished.wait(5), "the notification published right after the watch was lost"
    finally:
        waiter.close()


# --- Prefer: wait on the POST (RFC 7240, as Replicate's API takes it) -------------------------------------------------


def _post_waiting(app: Flask, prefer: str) -> Any:
    files = [(io.BytesIO(png_bytes()), "a.png")]
    return app.test_client().post(
        "/v1/jobs", data={"images": files}, content_type="multipart/form-data", headers={"Prefer": prefer}
    )


def _finish_when_dispatched(app: Flask, redis_url: str) -> threading.Thread:
    """Like a worker: once the job's message is sent, write its result, settle it and publish the notification."""
    sent = services_of(app).celery.sent  # type: ignore[attr-defined]

    def finish() -> None:
        deadline = time.monotonic() + 10
        while not sent and time.monotonic() < deadline:
            time.sleep(0.01)  # waiting for the POST under test to dispatch (the scenario's trigger)
        job_id = uuid.UUID(sent[0][1][0])
        with services_of(app).sessions.begin() as s:
            claim = jobstore.claim_first_attempt(s, job_id)
            assert claim is not None
            result = ItemResult(
                item_id=claim.items[0].item_id, label="7", confidence=0.9, top_k=[{"label": "7", "confidence": 0.9}]
            )
            jobstore.write_results(s, [result], None)
            jobstore.settle_jobs(s, [job_id], None, progress_interval_s=0)
        _announce(redis_url, job_id)

    thread = threading.Thread(target=finish)
    thread.start()
    return thread


def test_prefer_wait_answers_201_with_the_predictions(make_app: AppFactory, redis_url: str) -> None:
    """The job finishes while the POST waits: 201 with the predictions, its Location, and Preference-Applied."""
    app = make_app(redis_url=redis_url, wait_poll_interval_s=30)
    finisher = _finish_when_dispatched(app, redis_url)
    resp = _post_waiting(app, "respond-async, wait=20")
    finisher.join()
    assert resp.status_code == 201, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["status"] == "succeeded" and [p["label"] for p in body["predictions"]] == ["7"]
    assert resp.headers["Location"] == f"/v1/jobs/{body['id']}"
    assert resp.headers["Preference-Applied"] == "wait=20"


def test_prefer_wait_gives_the_usual_202_when_the_job_is_not_done_in_time(make_app: AppFactory) -> None:
    """Nothing runs the job: after the wait, the 202 of a queued job (the wait was honoured, and says so)."""
    app = make_app(wait_poll_interval_s=0.05)
    started = time.monotonic()
    resp = _post_waiting(app, "wait=1")
    assert resp.status_code == 202 and resp.get_json()["status"] == "queued"
    assert resp.headers["Preference-Applied"] == "wait=1"
    assert time.monotonic() - started >= 1


@pytest.mark.parametrize(
    ("prefer", "applied"),
    [
        ("wait=4", 4),
        ("respond-async, wait=3", 3),
        ("wait", 5),  # a bare wait: INFERQ_MAX_WAIT_S
        ("wait=600", 5),  # capped at INFERQ_MAX_WAIT_S
        ('wait="2"', 2),
        ("wait=soon", None),  # not a number of seconds: ignored (RFC 7240)
        ("wait=0", None),
        ("return=minimal", None),
    ],
)
def test_prefer_wait_is_read_like_rfc_7240(prefer: str, applied: int | None, tmp_path: Any) -> None:
    from werkzeug.test import EnvironBuilder

    from api.uploads import read_prefer_wait
    from tests.factories import make_settings

    request = EnvironBuilder(headers={"Prefer": prefer}).get_request()
    assert read_prefer_wait(request, make_settings(tmp_path, max_wait_s=5)) == applied
