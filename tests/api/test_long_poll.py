"""GET /v1/jobs/{id}?wait=N: answers when the job finishes, woken by the worker's Redis notification."""

from __future__ import annotations

import threading
import time
import uuid

from flask import Flask

from shared.config.status import JobStatus
from shared.jobs import lifecycle as jobstore
from shared.runtime.notify import FinishedPublisher, FinishedWaiter
from tests.api.conftest import AppFactory
from tests.factories import png_bytes, post_files, services_of


def _submit(app: Flask) -> uuid.UUID:
    resp = post_files(app.test_client(), [png_bytes()])
    assert resp.status_code == 202, resp.get_data(as_text=True)
    return uuid.UUID(resp.get_json()["id"])


def _finish_later(app: Flask, job_id: uuid.UUID, delay_s: float, publish_to: str | None) -> threading.Thread:
    """Cancel the job (a terminal state) after a delay from another thread, then notify like a worker does."""

    def finish() -> None:
        time.sleep(delay_s)  # the delay is the scenario (a job finishing later), not a synchronisation
        with services_of(app).sessions.begin() as s:
            assert jobstore.set_status(s, job_id, JobStatus.CANCELED)
        if publish_to is not None:
            publisher = FinishedPublisher(publish_to)
            publisher.publish([job_id])
            publisher.close()

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
            publisher = FinishedPublisher(redis_url)
            publisher.publish([job_id])
            publisher.close()
            assert finished.wait(5), "the notification published right after the watch was lost"
    finally:
        waiter.close()
