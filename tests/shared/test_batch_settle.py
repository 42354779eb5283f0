"""The per-batch job path: one-statement first claims and set-based settling, on SQLite and on PostgreSQL."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from sqlalchemy import event, select
from sqlalchemy.orm import Session, sessionmaker

from shared.config.status import JobStatus
from shared.db.engine import make_engine, make_sessionmaker, upgrade_database
from shared.db.models import Job, JobItem, utcnow
from shared.db.webhook_models import WebhookDelivery
from shared.inputs.storage import LocalBlobStore
from shared.jobs import lifecycle as jobstore
from shared.jobs.lifecycle import ItemResult
from shared.webhooks import outbox as hooks
from tests.factories import make_job, make_settings


@pytest.fixture(params=["sqlite", "postgresql"])
def sessions(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[sessionmaker[Session]]:
    """A migrated database of each kind (the set-based SQL must run on both)."""
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else ""
    settings = make_settings(tmp_path, database_url=url)
    upgrade_database(settings)
    engine = make_engine(settings)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def store(tmp_path: Path) -> LocalBlobStore:
    return LocalBlobStore(tmp_path / "blobs")


def _new_jobs(sessions: sessionmaker[Session], store: LocalBlobStore, sizes: list[int]) -> list[uuid.UUID]:
    with sessions.begin() as s:
        return [make_job(s, store, n_images=n).id for n in sizes]


def _claim_all(sessions: sessionmaker[Session], ids: list[uuid.UUID]) -> dict[uuid.UUID, jobstore.Claim]:
    claims = {}
    for job_id in ids:
        with sessions.begin() as s:
            claim = jobstore.claim_first_attempt(s, job_id)
            assert claim is not None
            claims[job_id] = claim
    return claims


@contextmanager
def _statements(session: Session) -> Iterator[list[str]]:
    """The SQL statements the session's connection runs inside the block."""
    statements: list[str] = []

    def record(_conn: object, _cursor: object, statement: str, *_rest: object) -> None:
        statements.append(statement)

    bind = session.get_bind()
    event.listen(bind, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(bind, "before_cursor_execute", record)


def _ok(item_id: int) -> ItemResult:
    return ItemResult(item_id=item_id, label="7", confidence=0.9, top_k=[{"label": "7", "confidence": 0.9}])


def _bad(item_id: int) -> ItemResult:
    return ItemResult(item_id=item_id, error_type="invalid-image", error="could not decode")


def test_first_claim_counts_the_attempt_and_returns_pending_items(
    sessions: sessionmaker[Session], store: LocalBlobStore
) -> None:
    """A first delivery moves queued -> running with attempts=1 and returns the items in index order, once."""
    (job_id,) = _new_jobs(sessions, store, [3])
    with sessions.begin() as s:
        claim = jobstore.claim_first_attempt(s, job_id)
    assert claim is not None
    assert (claim.model_ref, claim.tenant_id, claim.top_k) == ("mnist-cnn@production", "default", 3)
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None and (job.status, job.attempts) == ("running", 1) and job.started_at is not None
        keys = list(s.scalars(select(JobItem.input_key).where(JobItem.job_id == job_id).order_by(JobItem.idx)))
    assert [p.key for p in claim.items] == keys
    with sessions.begin() as s:
        assert jobstore.claim_first_attempt(s, job_id) is None  # a redelivery takes the careful path


@pytest.mark.parametrize("status", ["canceled", "succeeded"])
def test_first_claim_refuses_finished_and_missing_jobs(
    sessions: sessionmaker[Session], store: LocalBlobStore, status: str
) -> None:
    """A canceled or finished job, or no job at all, is not claimed (and not changed)."""
    with sessions.begin() as s:
        job_id = make_job(s, store, n_images=1, status=status).id
    with sessions.begin() as s:
        assert jobstore.claim_first_attempt(s, job_id) is None
        assert jobstore.claim_first_attempt(s, uuid.uuid4()) is None
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None and (job.status, job.attempts) == (status, 0)


def test_settle_finishes_a_whole_batch_in_a_fixed_number_of_statements(
    sessions: sessionmaker[Session], store: LocalBlobStore
) -> None:
    """Forty single-image jobs written in one batch settle with the same few statements as one job would."""
    ids = _new_jobs(sessions, store, [1] * 40)
    claims = _claim_all(sessions, ids)
    results = [_ok(c.items[0][0]) for c in claims.values()]
    with sessions.begin() as s, _statements(s) as statements:
        jobstore.write_results(s, results, None)
        finished = jobstore.settle_jobs(s, ids, None, progress_interval_s=0)
    assert finished == {job_id: JobStatus.SUCCEEDED for job_id in ids}
    assert len(statements) <= 6, statements
    with sessions() as s:
        rows = s.execute(select(Job.status, Job.completed_items, Job.failed_items).where(Job.id.in_(ids))).all()
    assert set(rows) == {("succeeded", 1, 0)}


def test_settle_counts_partial_jobs_and_fails_all_failed_ones(
    sessions: sessionmaker[Session], store: LocalBlobStore
) -> None:
    """A job with items still pending stays running with true counts; one whose every item failed is failed."""
    partial, broken, mixed = _new_jobs(sessions, store, [3, 2, 2])
    claims = _claim_all(sessions, [partial, broken, mixed])
    results = [_ok(claims[partial].items[0][0]), _bad(claims[partial].items[1][0])]
    results += [_bad(p.item_id) for p in claims[broken].items]
    results += [_ok(claims[mixed].items[0][0]), _bad(claims[mixed].items[1][0])]
    with sessions.begin() as s:
        assert jobstore.write_results(s, results, None) == 6
        finished = jobstore.settle_jobs(s, [partial, broken, mixed], None, progress_interval_s=0)
    assert finished == {broken: JobStatus.FAILED, mixed: JobStatus.SUCCEEDED}
    with sessions() as s:
        by_id = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_([partial, broken, mixed])))}
    assert (by_id[partial].status, by_id[partial].completed_items, by_id[partial].failed_items) == ("running", 1, 1)
    assert (by_id[broken].status, by_id[broken].error_type) == ("failed", "all-items-failed")
    assert (by_id[mixed].status, by_id[mixed].error_type, by_id[mixed].finished_at is not None) == (
        "succeeded",
        None,
        True,
    )


def test_settle_never_moves_a_canceled_job(sessions: sessionmaker[Session], store: LocalBlobStore) -> None:
    """A job canceled while its batch ran keeps `canceled`; its written items still count."""
    (job_id,) = _new_jobs(sessions, store, [1])
    claim = _claim_all(sessions, [job_id])[job_id]
    with sessions.begin() as s:
        jobstore.cancel_job(s, job_id)
    with sessions.begin() as s:
        jobstore.write_results(s, [_ok(claim.items[0][0])], None)
        assert jobstore.settle_jobs(s, [job_id], None, progress_interval_s=0) == {}
    with sessions() as s:
        job = s.get(Job, job_id)
        assert job is not None and (job.status, job.completed_items) == ("canceled", 1)


def test_settle_records_webhook_events_for_jobs_with_receivers(
    sessions: sessionmaker[Session], store: LocalBlobStore
) -> None:
    """A job whose tenant has an endpoint takes the per-job path and gets its `completed` outbox row; others none."""
    with sessions.begin() as s:
        hooks.create_endpoint(session=s, tenant_id="hooked", url="https://example.com/h", events=["completed"])
        watched = make_job(s, store, n_images=1, tenant_id="hooked").id
        quiet = make_job(s, store, n_images=1).id
    claims = _claim_all(sessions, [watched, quiet])
    with sessions.begin() as s:
        jobstore.write_results(s, [_ok(c.items[0][0]) for c in claims.values()], None)
        finished = jobstore.settle_jobs(s, [watched, quiet], None, progress_interval_s=0)
    assert finished == {watched: JobStatus.SUCCEEDED, quiet: JobStatus.SUCCEEDED}
    with sessions() as s:
        events = s.execute(select(WebhookDelivery.job_id, WebhookDelivery.event)).all()
    assert (watched, "job.completed") in {(j, f"job.{e}") for j, e in events}
    assert all(j == watched for j, _ in events)


def test_a_failed_job_gets_its_completed_event_and_no_progress_after_it(
    sessions: sessionmaker[Session], store: LocalBlobStore
) -> None:
    """fail_job fails the pending items too; the moved counts queue no `progress` event behind `completed`."""
    with sessions.begin() as s:
        hooks.create_endpoint(
            session=s, tenant_id="hooked", url="https://example.com/h", events=["progress", "completed"]
        )
        job_id = make_job(s, store, n_images=2, tenant_id="hooked").id
    _claim_all(sessions, [job_id])
    with sessions.begin() as s:
        assert jobstore.fail_job(s, job_id, "model-not-ready", "the model could not be loaded")
    with sessions() as s:
        assert s.scalars(select(WebhookDelivery.event)).all() == ["completed"]
        assert s.get(Job, job_id).failed_items == 2  # type: ignore[union-attr]


def test_mark_undispatched_clears_the_stamp_of_queued_jobs_only(
    sessions: sessionmaker[Session], store: LocalBlobStore
) -> None:
    """A failed publish clears dispatched_at of a queued job (so the reconciler takes it), never of a running one."""
    with sessions.begin() as s:
        queued = make_job(s, store, n_images=1, dispatched_at=utcnow()).id
        running = make_job(s, store, n_images=1, dispatched_at=utcnow(), status="running").id
    with sessions.begin() as s:
        jobstore.mark_undispatched(s, queued)
        jobstore.mark_undispatched(s, running)
    with sessions() as s:
        assert s.get(Job, queued).dispatched_at is None  # type: ignore[union-attr]
        assert s.get(Job, running).dispatched_at is not None  # type: ignore[union-attr]


@pytest.mark.parametrize("listening", [False, True])
def test_a_first_claim_of_an_inline_image_is_two_statements_unless_someone_listens(
    sessions: sessionmaker[Session], store: LocalBlobStore, listening: bool
) -> None:
    """An image small enough to live in its item's row: the claim is the UPDATE and one SELECT (items + whether the
    tenant has webhook endpoints). Only when the tenant listens does it also queue the `start` outbox row.
    (The flag was once read from the item's input column, so every inline job took the outbox path.)"""
    from tests.factories import png_bytes

    with sessions.begin() as s:
        if listening:
            hooks.create_endpoint(session=s, tenant_id="default", url="https://example.com/hook", events=["start"])
        job = jobstore.create_classify_job(
            session=s,
            store=store,
            uploads=[jobstore.Upload(filename="a.png", data=png_bytes())],
            model_ref="mnist-cnn@production",
            top_k=1,
            tenant_id="default",
            inline_max_bytes=65536,
        )
        job_id = job.id
    with sessions.begin() as s, _statements(s) as statements:
        claim = jobstore.claim_first_attempt(s, job_id)
    assert claim is not None and claim.items[0].data is not None and claim.items[0].key is None
    with sessions() as s:
        starts = s.scalars(select(WebhookDelivery.event).where(WebhookDelivery.job_id == job_id)).all()
    if listening:
        assert starts == ["start"]
    else:
        assert len(statements) == 2, statements
        assert starts == []
