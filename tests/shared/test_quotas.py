"""Per-tenant queue caps: counted from the database, checked before the commit that queues a job, exact under
concurrency on PostgreSQL."""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import event, func, select
from sqlalchemy.orm import Session, sessionmaker

from shared.config.errors import PayloadTooLarge, QueueFull
from shared.config.settings import Settings
from shared.config.status import JobKind, JobStatus
from shared.db.engine import make_engine, make_sessionmaker, upgrade_database
from shared.db.models import Job
from shared.inputs.storage import LocalBlobStore
from shared.tenancy.quotas import admit_job, check_queue, queue_usage
from tests.factories import make_job, make_settings


def _job(tenant: str = "default", items: int = 1, status: JobStatus = JobStatus.QUEUED) -> Job:
    """A bare job row (no items or blobs: the caps count the job's own counters)."""
    return Job(
        id=uuid.uuid4(),
        tenant_id=tenant,
        kind=JobKind.SCORE.value,
        status=status.value,
        model_ref="mnist-cnn@production",
        total_items=items,
    )


def _jobs(sessions: sessionmaker[Session], tenant: str = "default") -> int:
    with sessions() as s:
        return s.scalar(select(func.count()).select_from(Job).where(Job.tenant_id == tenant)) or 0


def test_usage_counts_unfinished_items_of_queued_and_running_jobs(session: Session) -> None:
    """Queued and running jobs count, with their items not yet completed or failed; finished jobs do not."""
    running = _job(items=10, status=JobStatus.RUNNING)
    running.completed_items, running.failed_items = 3, 1
    session.add_all([_job(items=5), running, _job(items=100, status=JobStatus.SUCCEEDED), _job("other", items=7)])
    session.flush()
    assert queue_usage(session, tenant_id="default").__dict__ == {"jobs": 2, "items": 11}
    assert queue_usage(session, tenant_id="other").__dict__ == {"jobs": 1, "items": 7}
    assert queue_usage(session, tenant_id="nobody").__dict__ == {"jobs": 0, "items": 0}


def test_job_cap_is_exact(session: Session, tmp_path: Path) -> None:
    """With a cap of 3 jobs, the third queued job passes and the fourth is refused with 429 queue-full."""
    settings = make_settings(tmp_path, max_queued_jobs_per_tenant=3)
    for _ in range(3):
        session.add(_job())
        session.flush()
        check_queue(session, tenant_id="default", new_items=1, settings=settings)
    session.add(_job())
    session.flush()
    with pytest.raises(QueueFull) as info:
        check_queue(session, tenant_id="default", new_items=1, settings=settings)
    problem = info.value.to_problem()
    assert problem["status"] == 429 and problem["limit_setting"] == "INFERQ_MAX_QUEUED_JOBS_PER_TENANT"
    assert problem["retry_after_s"] == settings.queue_full_retry_after_s
    assert info.value.headers == {"Retry-After": str(settings.queue_full_retry_after_s)}
    assert "4 unfinished jobs" in problem["detail"] and "limit of 3" in problem["detail"]


def test_item_cap_counts_the_new_job(session: Session, tmp_path: Path) -> None:
    """With 100 items allowed and 60 queued, a 40-item job passes and a 41-item one is refused."""
    settings = make_settings(tmp_path, max_queued_items_per_tenant=100)
    session.add(_job(items=60))
    session.add(_job(items=40))
    session.flush()
    check_queue(session, tenant_id="default", new_items=40, settings=settings)
    session.add(_job(items=1))
    session.flush()
    with pytest.raises(QueueFull, match="101 unfinished items"):
        check_queue(session, tenant_id="default", new_items=1, settings=settings)


def test_a_job_larger_than_the_item_cap_is_413_not_429(session: Session, tmp_path: Path) -> None:
    """A single job past the item cap could never be queued: 413 (split it), not a 429 that invites retries."""
    settings = make_settings(tmp_path, max_queued_items_per_tenant=100)
    with pytest.raises(PayloadTooLarge, match="INFERQ_MAX_QUEUED_ITEMS_PER_TENANT"):
        check_queue(session, tenant_id="default", new_items=101, settings=settings)


def _queue(sessions: sessionmaker[Session], job: Job, settings: Settings) -> None:
    """What a route does: add the job, admit it against the caps, commit (a refusal rolls everything back)."""
    with sessions.begin() as s:
        s.add(job)
        admit_job(s, job, settings)


def test_a_job_past_the_cap_is_refused_before_its_commit_and_nothing_of_it_stays(
    settings: Settings, tmp_path: Path
) -> None:
    """admit_job counts the job it is given (flushed or not), refuses the one that would pass a cap, and the
    transaction's rollback leaves nothing of it; other tenants are unaffected."""
    upgrade_database(settings)
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    capped = make_settings(tmp_path, max_queued_jobs_per_tenant=2)
    store = LocalBlobStore(settings.blob_dir)
    for _ in range(2):
        with sessions.begin() as s:
            admit_job(s, make_job(s, store, n_images=1), capped)
    with pytest.raises(QueueFull):
        _queue(sessions, _job(), capped)  # not even flushed before admit_job: it flushes and counts it
    _queue(sessions, _job("other"), capped)
    assert (_jobs(sessions), _jobs(sessions, "other")) == (2, 1)
    engine.dispose()


@pytest.mark.integration
def test_concurrent_submissions_never_pass_the_cap_on_postgres(pg_url: str, tmp_path: Path) -> None:
    """24 threads queue a job each for one tenant capped at 5: exactly 5 commit, 19 get queue-full."""
    settings = make_settings(tmp_path, database_url=pg_url, max_queued_jobs_per_tenant=5)
    upgrade_database(settings)
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    start = threading.Barrier(24)

    def submit(_: int) -> str:
        start.wait(timeout=30)
        try:
            _queue(sessions, _job(items=2), settings)
            return "queued"
        except QueueFull:
            return "full"

    with ThreadPoolExecutor(24) as pool:
        results = list(pool.map(submit, range(24)))
    assert (results.count("queued"), results.count("full")) == (5, 19)
    assert _jobs(sessions) == 5
    engine.dispose()


@pytest.mark.integration
def test_lock_only_within_the_margin_of_a_cap_on_postgres(pg_url: str, tmp_path: Path) -> None:
    """Far below the cap a submission takes no tenant lock (one tenant's POSTs don't serialize); within
    INFERQ_QUEUE_CAP_EXACT_MARGIN of it the check locks, and so does a job bigger than a classify job."""
    settings = make_settings(tmp_path, database_url=pg_url, max_queued_jobs_per_tenant=100, queue_cap_exact_margin=10)
    upgrade_database(settings)
    engine = make_engine(settings)
    sessions = make_sessionmaker(engine)
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        statements.append(statement)

    def locks_taken(job: Job) -> int:
        statements.clear()
        _queue(sessions, job, settings)
        return sum("pg_advisory_xact_lock" in st for st in statements)

    event.listen(engine, "before_cursor_execute", record)
    assert locks_taken(_job(items=1)) == 0
    assert locks_taken(_job(items=settings.max_images_per_job + 1)) == 1
    with sessions.begin() as s:
        s.add_all(_job(items=1) for _ in range(88))
    assert _jobs(sessions) == 90
    assert locks_taken(_job(items=1)) == 1  # 91 + 10 > 100: exact from here on
    event.remove(engine, "before_cursor_execute", record)
    engine.dispose()
