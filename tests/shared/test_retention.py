"""Retention: finished jobs and unused datasets older than their tenant's period are purged, files and all."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.config.settings import Settings
from shared.config.status import JobStatus
from shared.db.models import Dataset, Job, utcnow
from shared.inputs.datasets import dataset_prefix
from shared.inputs.storage import LocalBlobStore
from shared.runtime.celery_app import OPS_QUEUE, RETENTION_TASK, celery_config
from shared.tenancy.retention import purge_expired, retention_overrides, set_retention
from tests.factories import make_job, make_settings

DONE = JobStatus.SUCCEEDED.value


def _job(sessions: sessionmaker[Session], store: LocalBlobStore, *, days: float, status: str = DONE, **kw: str) -> Job:
    """A job with one stored input that finished `days` ago (or is still `status`)."""
    with sessions.begin() as s:
        when = utcnow() - timedelta(days=days)
        return make_job(s, store, n_images=1, status=status, created_at=when, finished_at=when, **kw)


def _dataset(
    sessions: sessionmaker[Session], store: LocalBlobStore, *, days: float, tenant: str = "default"
) -> uuid.UUID:
    """A dataset row with one stored file, uploaded `days` ago."""
    ds_id = uuid.uuid4()
    store.put(f"{dataset_prefix(ds_id)}/images.npy", b"x")
    with sessions.begin() as s:
        s.add(
            Dataset(
                id=ds_id,
                tenant_id=tenant,
                name="d.npy",
                format="npy",
                layout="array",
                created_at=utcnow() - timedelta(days=days),
            )
        )
    return ds_id


def _left(sessions: sessionmaker[Session]) -> set[uuid.UUID]:
    with sessions() as s:
        return set(s.scalars(select(Job.id))) | set(s.scalars(select(Dataset.id)))


def test_old_finished_jobs_go_with_their_inputs(
    sessions: sessionmaker[Session], store: LocalBlobStore, settings: Settings
) -> None:
    """Past 30 days (the default) a finished job and its stored input are deleted; newer or running ones stay."""
    old = _job(sessions, store, days=31)
    recent = _job(sessions, store, days=29)
    running = _job(sessions, store, days=90, status=JobStatus.RUNNING.value)
    report = purge_expired(sessions=sessions, store=store, settings=settings)
    assert report.as_dict() == {"jobs": 1, "datasets": 0, "errors": 0}
    assert _left(sessions) == {recent.id, running.id}
    assert not store.exists(f"inputs/{old.id}/00000") and store.exists(f"inputs/{recent.id}/00000")


def test_a_tenants_own_period_overrides_the_default(
    sessions: sessionmaker[Session], store: LocalBlobStore, settings: Settings
) -> None:
    """A tenant with 1 day loses a 2-day-old job; a tenant with 0 keeps a 400-day-old one; others use 30 days."""
    with sessions.begin() as s:
        set_retention(session=s, tenant_id="short", days=1)
        set_retention(session=s, tenant_id="forever", days=0)
        set_retention(session=s, tenant_id="reset", days=5)
        set_retention(session=s, tenant_id="reset", days=None)
    with sessions() as s:
        assert retention_overrides(s) == {"short": 1, "forever": 0}
    short = _job(sessions, store, days=2, tenant_id="short")
    kept = _job(sessions, store, days=400, tenant_id="forever")
    default_recent = _job(sessions, store, days=2)
    reset_old = _job(sessions, store, days=31, tenant_id="reset")
    purge_expired(sessions=sessions, store=store, settings=settings)
    assert _left(sessions) == {kept.id, default_recent.id}
    assert short.id not in _left(sessions) and reset_old.id not in _left(sessions)


def test_a_default_of_zero_keeps_everything_but_overridden_tenants(
    sessions: sessionmaker[Session], store: LocalBlobStore, tmp_path: Path
) -> None:
    """INFERQ_RETENTION_DAYS=0 purges nothing, except for tenants with a period of their own."""
    settings = make_settings(tmp_path, retention_days=0)
    with sessions.begin() as s:
        set_retention(session=s, tenant_id="short", days=1)
    kept = _job(sessions, store, days=1000)
    gone = _job(sessions, store, days=3, tenant_id="short")
    purge_expired(sessions=sessions, store=store, settings=settings)
    assert _left(sessions) == {kept.id} and gone.id not in _left(sessions)


def test_old_datasets_go_unless_a_job_still_reads_them(
    sessions: sessionmaker[Session], store: LocalBlobStore, settings: Settings
) -> None:
    """An expired dataset's row and files are deleted; one a running score job reads stays; new ones stay."""
    old = _dataset(sessions, store, days=45)
    busy = _dataset(sessions, store, days=45)
    recent = _dataset(sessions, store, days=3)
    reader = _job(sessions, store, days=0, status=JobStatus.RUNNING.value)
    with sessions.begin() as s:
        job = s.get(Job, reader.id)
        assert job is not None
        job.params = {"dataset_id": str(busy)}
    report = purge_expired(sessions=sessions, store=store, settings=settings)
    assert (report.datasets, report.errors) == (1, 0)
    assert _left(sessions) == {busy, recent, reader.id}
    assert not store.exists(f"{dataset_prefix(old)}/images.npy") and store.exists(f"{dataset_prefix(busy)}/images.npy")


def test_one_run_deletes_at_most_the_batch(
    sessions: sessionmaker[Session], store: LocalBlobStore, tmp_path: Path
) -> None:
    """With INFERQ_RETENTION_BATCH=2, three expired jobs take two runs, oldest first."""
    settings = make_settings(tmp_path, retention_batch=2)
    jobs = [_job(sessions, store, days=d) for d in (40, 50, 60)]
    assert purge_expired(sessions=sessions, store=store, settings=settings).jobs == 2
    assert _left(sessions) == {jobs[0].id}
    assert purge_expired(sessions=sessions, store=store, settings=settings).jobs == 1
    assert _left(sessions) == set()


def test_beat_runs_the_purge_on_the_inference_queue(settings: Settings) -> None:
    """The beat schedule runs inferq.retention.purge every INFERQ_RETENTION_INTERVAL_S; a worker task has it."""
    from worker.tasks.retention import purge_old_data

    config = celery_config(make_settings(settings.data_dir, retention_interval_s=120))
    assert config["beat_schedule"]["retention"] == {"task": RETENTION_TASK, "schedule": 120}  # type: ignore[index]
    assert config["task_routes"][RETENTION_TASK] == {"queue": OPS_QUEUE}  # type: ignore[index]
    assert purge_old_data.name == RETENTION_TASK
