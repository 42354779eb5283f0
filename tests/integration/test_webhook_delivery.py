"""Webhook delivery on PostgreSQL: every event arrives signed despite failing and hanging receivers, exactly once
after dedup by webhook-id, with the attempts logged."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from standardwebhooks import Webhook

from shared.config.settings import Settings
from shared.db.engine import make_engine, make_sessionmaker, session_scope, upgrade_database
from shared.db.models import JobItem, utcnow
from shared.db.webhook_models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from shared.inputs.storage import LocalBlobStore
from shared.jobs import lifecycle as jobstore
from shared.webhooks.outbox import create_endpoint, rotate_endpoint_secret, signing_key
from tests.factories import make_job, make_settings
from tests.webhook_receiver import HANG, running_receiver
from worker.webhooks_dispatch import dispatch_due

pytestmark = pytest.mark.integration

Sessions = sessionmaker[Session]


@pytest.fixture
def pg(tmp_path: Path, pg_url: str) -> Iterator[tuple[Settings, Sessions]]:
    """Settings on a fresh PostgreSQL database, loopback allow-listed, retries scaled down, short timeout."""
    settings = make_settings(
        tmp_path,
        database_url=pg_url,
        webhook_allow_cidrs="127.0.0.0/8",
        webhook_retry_scale=0.001,
        webhook_timeout_s=5.0,
        webhook_dispatch_batch=200,
    )
    upgrade_database(settings)
    engine = make_engine(settings)
    yield settings, make_sessionmaker(engine)
    engine.dispose()


def _pending(sessions: Sessions) -> tuple[int, datetime | None]:
    with sessions() as s:
        q = select(func.count(), func.min(WebhookDelivery.next_attempt_at)).where(WebhookDelivery.status == "pending")
        n, nxt = s.execute(q).one()
        return n, nxt


def drain(
    sessions: Sessions, settings: Settings, start: datetime, *, max_runs: int = 400, budget_s: float = 120
) -> int:
    """Run the dispatcher until nothing is pending, moving `now` to the next due time instead of sleeping."""
    now, runs, deadline = start, 0, time.monotonic() + budget_s
    while runs < max_runs and time.monotonic() < deadline:
        dispatch_due(sessions, settings, now=now)
        runs += 1
        n, nxt = _pending(sessions)
        if n == 0:
            return runs
        now = max(now + timedelta(milliseconds=1), nxt or now)
    raise AssertionError(f"deliveries still pending after {runs} dispatcher runs")


def _run_job(session: Session, job_id: Any) -> None:
    """queued -> running -> every item succeeded -> succeeded, through the shared job functions."""
    assert jobstore.start_attempt(session, job_id, None)
    items = session.scalars(select(JobItem.id).where(JobItem.job_id == job_id)).all()
    results = [
        jobstore.ItemResult(item_id=i, label="1", confidence=0.9, top_k=[{"label": "1", "confidence": 0.9}])
        for i in items
    ]
    jobstore.write_results(session, results, None)
    assert jobstore.finish_if_done(session, job_id, progress_interval_s=0) is not None


def test_every_event_arrives_verified_once_despite_failures(pg: tuple[Settings, Sessions]) -> None:
    """200 jobs, a receiver failing its first 3 requests and 30% of the rest: every event arrives, verifies, and
    none is processed twice after dedup by webhook-id."""
    settings, sessions = pg
    rng, rng_lock = random.Random(20261127), threading.Lock()

    def flaky(n: int) -> int:
        with rng_lock:
            return 500 if n < 3 or rng.random() < 0.3 else 204

    store = LocalBlobStore(settings.blob_dir)
    with running_receiver(flaky) as rec:
        with session_scope(sessions) as s:
            ep = create_endpoint(
                session=s, tenant_id="default", url=rec.url.replace("/hook", "/ep"), events=["completed"]
            )
            ep_secret, job_secret = ep.secret, signing_key(session=s, tenant_id="default").secret
        job_ids = []
        for i in range(200):
            with session_scope(sessions) as s:
                hook = {"url": rec.url, "events": ["start", "progress", "completed"]}
                job = make_job(s, store, n_images=1, params={"top_k": 3, "webhook": hook})
                job_ids.append(job.id)
                if i % 4 == 3:
                    jobstore.cancel_job(s, job.id)
                else:
                    _run_job(s, job.id)
        with sessions() as s:
            expected = {d.msg_id: d for d in s.scalars(select(WebhookDelivery))}
        assert len(expected) == 150 * 3 + 50 + 200  # run jobs: start, progress, completed; all: endpoint completed
        drain(sessions, settings, utcnow())

        seen: set[str] = set()  # the receiver's dedup by webhook-id
        ok_answers = repeats = 0
        for i, r in enumerate(rec.requests):
            secret = ep_secret if r.path == "/ep" else job_secret
            payload = Webhook(secret).verify(r.body, r.headers)  # every attempt verifies
            assert payload["data"]["id"] in {str(j) for j in job_ids}
            msg_id = r.headers["webhook-id"]
            assert msg_id in expected and payload["type"] == f"job.{expected[msg_id].event}"
            if rec.answers[i] // 100 == 2:
                ok_answers += 1
                repeats += msg_id in seen  # answered 2xx before: only if our side timed out meanwhile
                seen.add(msg_id)
        assert seen == set(expected)  # every event arrived
        with sessions() as s:
            assert s.scalar(select(func.count()).where(WebhookDelivery.status != "succeeded")) == 0
            attempts = s.scalar(select(func.count()).select_from(WebhookAttempt))
            errors = s.scalars(select(WebhookAttempt.error).where(WebhookAttempt.status_code.is_(None))).all()
        assert attempts >= len(rec.requests) and repeats <= len(errors)
        print(
            f"webhook deliveries: events={len(expected)} attempted={attempts} succeeded={ok_answers} "
            f"received_twice_before_dedup={repeats} duplicates_after_dedup=0 attempts_without_answer={len(errors)}"
        )


def test_a_hanging_receiver_times_out_and_is_retried(pg: tuple[Settings, Sessions]) -> None:
    """A receiver that never answers counts as a failure at the timeout; the retry succeeds."""
    settings, sessions = pg
    settings = settings.model_copy(update={"webhook_timeout_s": 0.5})
    store = LocalBlobStore(settings.blob_dir)
    with running_receiver(lambda n: HANG if n == 0 else 200) as rec:
        with session_scope(sessions) as s:
            job = make_job(
                s, store, n_images=1, params={"top_k": 3, "webhook": {"url": rec.url, "events": ["completed"]}}
            )
            jobstore.cancel_job(s, job.id)
        now = utcnow()
        started = time.monotonic()
        stats = dispatch_due(sessions, settings, now=now)
        took = time.monotonic() - started
        assert stats.retrying == 1 and took < settings.webhook_timeout_s + 2.0
        drain(sessions, settings, now + timedelta(seconds=1))
        with sessions() as s:
            d = s.scalars(select(WebhookDelivery)).one()
            tries = s.scalars(select(WebhookAttempt).order_by(WebhookAttempt.number)).all()
        assert d.status == "succeeded" and [t.status_code for t in tries] == [None, 200]
        assert "timed out" in (tries[0].error or "")
        assert 400 <= tries[0].latency_ms < 3000 and tries[0].next_attempt_at is not None
        assert {r.headers["webhook-id"] for r in rec.requests} == {d.msg_id}
        assert rec.requests[0].headers["webhook-timestamp"] <= rec.requests[1].headers["webhook-timestamp"]


def test_gone_disables_the_endpoint(pg: tuple[Settings, Sessions]) -> None:
    """A 410 Gone disables the endpoint: no retry, and later events are not queued for it."""
    settings, sessions = pg
    store = LocalBlobStore(settings.blob_dir)
    with running_receiver(lambda n: 410) as rec:
        with session_scope(sessions) as s:
            ep = create_endpoint(session=s, tenant_id="default", url=rec.url, events=["completed"])
            job = make_job(s, store, n_images=1)
            jobstore.cancel_job(s, job.id)
        drain(sessions, settings, utcnow())
        with session_scope(sessions) as s:
            assert s.get(WebhookEndpoint, ep.id).disabled_at is not None  # type: ignore[union-attr]
            assert s.scalars(select(WebhookDelivery)).one().status == "canceled"
            jobstore.cancel_job(s, make_job(s, store, n_images=1).id)
            assert s.scalar(select(func.count()).select_from(WebhookDelivery)) == 1
        assert len(rec.requests) == 1


def test_rotation_signs_with_both_secrets_during_the_overlap(pg: tuple[Settings, Sessions]) -> None:
    """After a rotation a delivery carries two signatures: one per secret."""
    settings, sessions = pg
    store = LocalBlobStore(settings.blob_dir)
    with running_receiver() as rec:
        with session_scope(sessions) as s:
            ep = create_endpoint(session=s, tenant_id="default", url=rec.url, events=["completed"])
            old = ep.secret
            new = rotate_endpoint_secret(session=s, endpoint_id=ep.id, tenant_id="default", overlap_s=3600).secret
            jobstore.cancel_job(s, make_job(s, store, n_images=1).id)
        drain(sessions, settings, utcnow())
        (r,) = rec.requests
        assert len(r.headers["webhook-signature"].split(" ")) == 2
        Webhook(old).verify(r.body, r.headers)
        Webhook(new).verify(r.body, r.headers)


def test_start_is_sent_once_even_when_the_task_is_redelivered(pg: tuple[Settings, Sessions]) -> None:
    """A second start_attempt (a redelivered task) queues no second start event; progress is throttled."""
    settings, sessions = pg
    store = LocalBlobStore(settings.blob_dir)
    with session_scope(sessions) as s:
        hook = {"url": "https://hooks.example.com/x", "events": ["start", "progress"]}
        job = make_job(s, store, n_images=3, params={"top_k": 3, "webhook": hook})
        assert jobstore.start_attempt(s, job.id, None) and jobstore.start_attempt(s, job.id, None)
        items = s.scalars(select(JobItem.id).where(JobItem.job_id == job.id).order_by(JobItem.idx)).all()
        for item in items:  # three count changes within a minute: one progress event
            jobstore.write_results(s, [jobstore.ItemResult(item_id=item, label="1", confidence=0.5)], None)
            jobstore.refresh_counts(s, job.id, progress_interval_s=60)
        events = sorted(s.scalars(select(WebhookDelivery.event)).all())
    assert events == ["progress", "start"]
