"""Deadlines: a job not started by its deadline ends as `expired` without running, with its webhook event."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.config.status import JobKind, JobStatus
from shared.db.engine import make_engine, make_sessionmaker, upgrade_database
from shared.db.models import Job, utcnow
from shared.db.webhook_models import WebhookDelivery
from shared.inputs.storage import LocalBlobStore
from shared.jobs import lifecycle as jobstore
from shared.schemas.public import JobPublic
from tests.factories import make_job, make_settings


@pytest.fixture
def sessions(tmp_path: Path) -> sessionmaker[Session]:
    settings = make_settings(tmp_path)
    upgrade_database(settings)
    return make_sessionmaker(make_engine(settings))


def _job(sessions: sessionmaker[Session], store: LocalBlobStore, *, in_s: float, **kw: Any) -> uuid.UUID:
    """A queued classify job of two images whose deadline is `in_s` seconds from now (past when negative)."""
    with sessions.begin() as s:
        return make_job(s, store, n_images=2, deadline_at=utcnow() + timedelta(seconds=in_s), **kw).id


def _status(sessions: sessionmaker[Session], job_id: uuid.UUID) -> str:
    with sessions() as s:
        return str(s.scalar(select(Job.status).where(Job.id == job_id)))


def test_only_jobs_that_have_not_started_by_their_deadline_expire(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """An overdue queued job expires (its items never ran: counts.expired); a job with time left, one without a
    deadline and a classify job already running are left alone; a running score job expires too."""
    store = LocalBlobStore(make_settings(tmp_path).blob_dir)
    overdue = _job(sessions, store, in_s=-1)
    later = _job(sessions, store, in_s=3600)
    started = _job(sessions, store, in_s=3600)
    with sessions.begin() as s:
        plain = make_job(s, store, n_images=1).id
        assert jobstore.claim_first_attempt(s, started) is not None
        s.execute(update(Job).where(Job.id == started).values(deadline_at=utcnow() - timedelta(seconds=1)))
        score = make_job(s, store, n_images=1).id
        s.execute(
            update(Job)
            .where(Job.id == score)
            .values(kind=JobKind.SCORE.value, status="running", deadline_at=utcnow() - timedelta(seconds=1))
        )
    with sessions.begin() as s:
        assert sorted(jobstore.expire_overdue(s)) == sorted([overdue, score])
    assert [_status(sessions, j) for j in (overdue, later, started, plain, score)] == [
        "expired",
        "queued",
        "running",
        "queued",
        "expired",
    ]
    with sessions() as s:
        job = jobstore.get_job(s, overdue)
        public = JobPublic.of(job)
    assert (public.error or {}).get("type") == "deadline-expired" and job.attempts == 0
    assert public.counts.model_dump() == {"total": 2, "completed": 0, "failed": 0, "expired": 2}
    with sessions.begin() as s:
        assert jobstore.expire_overdue(s) == []  # nothing moves out of expired


def test_an_overdue_job_is_not_claimed_and_its_webhook_says_expired(
    sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    """The first-delivery claim passes over an overdue job (the worker's careful path expires it); the job's
    webhook gets a `completed` event whose job status is expired, and no `start`."""
    store = LocalBlobStore(make_settings(tmp_path).blob_dir)
    hook = {"url": "https://hooks.example.com/x", "events": ["start", "completed"]}
    job_id = _job(sessions, store, in_s=-0.001, params={"top_k": 1, "webhook": hook})
    with sessions.begin() as s:
        assert jobstore.claim_first_attempt(s, job_id) is None
        assert jobstore.expire_overdue(s, [job_id]) == [job_id]
    with sessions() as s:
        (delivery,) = s.scalars(select(WebhookDelivery)).all()
    body = json.loads(delivery.body)
    assert (delivery.event, body["type"], body["data"]["status"]) == ("completed", "job.completed", "expired")
    assert body["data"]["counts"]["expired"] == 2 and body["data"]["deadline_at"]
    assert JobStatus.EXPIRED.is_terminal() and not JobStatus.EXPIRED.can_become(JobStatus.RUNNING)
