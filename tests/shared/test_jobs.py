"""Job data functions: creation, compare-and-set status, idempotent results, paging and reconciling."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from shared.config.errors import JobNotCancelable, JobNotFound, ValidationFailed
from shared.config.status import ItemStatus, JobStatus
from shared.db.models import Job, JobItem, utcnow
from shared.inputs.storage import LocalBlobStore
from shared.jobs import leases
from shared.jobs import lifecycle as jobstore
from shared.jobs.lifecycle import ItemResult, Upload
from tests.factories import b64, make_job, png_bytes


def _items(session: Session, job: Job) -> list[JobItem]:
    items = jobstore.items_page(session, job.id, after=-1, limit=1000)
    for item in items:
        session.refresh(item)
    return items


def _ok(item: JobItem, label: str = "7", confidence: float = 0.9) -> ItemResult:
    return ItemResult(
        item_id=item.id,
        label=label,
        confidence=confidence,
        top_k=[{"label": label, "confidence": confidence}],
        batch_size=2,
    )


def _bad(item: JobItem) -> ItemResult:
    return ItemResult(item_id=item.id, error_type="invalid-image", error="could not decode")


def _running(session: Session, store: LocalBlobStore, **kw: object) -> Job:
    job = make_job(session, store, **kw)  # type: ignore[arg-type]
    assert jobstore.start_attempt(session, job.id, None)
    session.refresh(job)
    return job


# --- create -----------------------------------------------------------------------------------------------


def test_create_stores_blobs_job_and_items(session: Session, store: LocalBlobStore) -> None:
    """Creating a job stores every input blob, one queued job row and one pending item per image."""
    images = [png_bytes(), png_bytes(size=(32, 40)), png_bytes(digit_like=False)]
    job = make_job(session, store, images=images, model_ref="mnist-cnn:1", top_k=5)
    session.commit()

    row = session.get(Job, job.id)
    assert row is not None
    assert (row.status, row.kind, row.model_ref) == ("queued", "classify", "mnist-cnn:1")
    assert row.params == {"top_k": 5, "priority": 1}
    assert (row.total_items, row.completed_items, row.failed_items, row.attempts) == (3, 0, 0, 0)
    assert row.dispatched_at is None and row.started_at is None and row.finished_at is None
    items = _items(session, job)
    assert [i.idx for i in items] == [0, 1, 2]
    assert {i.status for i in items} == {ItemStatus.PENDING.value}
    assert [store.get(i.input_key) for i in items] == images  # type: ignore[arg-type]


def test_delete_inputs_removes_the_blobs(session: Session, store: LocalBlobStore) -> None:
    """delete_inputs removes every stored input of a job."""
    job = make_job(session, store, n_images=2)
    jobstore.delete_inputs(store, job.id, 2)
    assert not any(store.exists(jobstore.input_key(job.id, i)) for i in range(2))


# --- set_status -------------------------------------------------------------------------------------------


def test_set_status_follows_allowed_moves(session: Session, store: LocalBlobStore) -> None:
    """set_status moves queued -> running -> succeeded and stamps finished_at on the terminal move."""
    job = make_job(session, store)
    assert jobstore.set_status(session, job.id, JobStatus.RUNNING)
    assert jobstore.set_status(session, job.id, JobStatus.SUCCEEDED)
    session.refresh(job)
    assert job.status == "succeeded" and job.finished_at is not None


def test_set_status_refuses_illegal_move(session: Session, store: LocalBlobStore) -> None:
    """A queued job cannot jump straight to succeeded; the row is left unchanged."""
    job = make_job(session, store)
    assert not jobstore.set_status(session, job.id, JobStatus.SUCCEEDED)
    session.refresh(job)
    assert job.status == "queued" and job.finished_at is None


@pytest.mark.parametrize("final", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED])
def test_set_status_refuses_every_move_out_of_terminal(
    session: Session, store: LocalBlobStore, final: JobStatus
) -> None:
    """Once terminal, no compare-and-set moves the job again."""
    job = make_job(session, store, status=final.value)
    for new in JobStatus:
        assert not jobstore.set_status(session, job.id, new)
    session.refresh(job)
    assert job.status == final.value


def test_set_status_unknown_job_is_false(session: Session) -> None:
    """Compare-and-set on a job that does not exist reports that nothing moved."""
    assert not jobstore.set_status(session, uuid.uuid4(), JobStatus.RUNNING)


# --- start_attempt ----------------------------------------------------------------------------------------


def test_start_attempt_counts_deliveries(session: Session, store: LocalBlobStore) -> None:
    """Each delivery increments attempts; the job runs and keeps its first started_at on redelivery."""
    job = make_job(session, store)
    assert jobstore.start_attempt(session, job.id, None)
    session.refresh(job)
    first_start = job.started_at
    assert (job.status, job.attempts) == ("running", 1) and first_start is not None
    assert jobstore.start_attempt(session, job.id, None)
    session.refresh(job)
    assert (job.status, job.attempts, job.started_at) == ("running", 2, first_start)


@pytest.mark.parametrize("final", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED])
def test_start_attempt_refuses_terminal_jobs(session: Session, store: LocalBlobStore, final: JobStatus) -> None:
    """A delivery of a finished or canceled job starts nothing and counts no attempt."""
    job = make_job(session, store, status=final.value, attempts=1)
    assert not jobstore.start_attempt(session, job.id, None)
    session.refresh(job)
    assert (job.status, job.attempts) == (final.value, 1)


# --- write_results ----------------------------------------------------------------------------------------


def test_write_results_is_idempotent(session: Session, store: LocalBlobStore) -> None:
    """A redelivered batch writes nothing a second time and leaves the first values in place."""
    job = _running(session, store, n_images=2)
    items = _items(session, job)
    assert jobstore.write_results(session, [_ok(items[0], "3", 0.8), _bad(items[1])], None) == 2
    assert jobstore.write_results(session, [_ok(items[0], "9", 0.1), _ok(items[1], "9", 0.1)], None) == 0
    first, second = _items(session, job)
    assert (first.status, first.label, first.confidence, first.batch_size) == ("succeeded", "3", 0.8, 2)
    assert first.top_k == [{"label": "3", "confidence": 0.8}] and first.completed_at is not None
    assert (second.status, second.label, second.error_type) == ("failed", None, "invalid-image")
    assert session.scalar(select(func.count()).select_from(JobItem).where(JobItem.job_id == job.id)) == 2


def test_write_results_writes_only_pending_items(session: Session, store: LocalBlobStore) -> None:
    """Of a batch where one item was already written, only the pending one counts."""
    job = _running(session, store, n_images=2)
    items = _items(session, job)
    jobstore.write_results(session, [_ok(items[0])], None)
    assert jobstore.write_results(session, [_ok(items[0]), _ok(items[1])], None) == 1


# --- finish_if_done ---------------------------------------------------------------------------------------


def test_finish_if_done_succeeds_when_all_items_written(session: Session, store: LocalBlobStore) -> None:
    """With no item pending and at least one success, the job succeeds with its counts refreshed."""
    job = _running(session, store, n_images=2)
    items = _items(session, job)
    jobstore.write_results(session, [_ok(items[0]), _bad(items[1])], None)
    assert jobstore.finish_if_done(session, job.id, progress_interval_s=0) is JobStatus.SUCCEEDED
    session.refresh(job)
    assert (job.status, job.completed_items, job.failed_items) == ("succeeded", 1, 1)
    assert job.finished_at is not None


def test_finish_if_done_fails_when_every_item_failed(session: Session, store: LocalBlobStore) -> None:
    """When every item failed, the job fails as all-items-failed."""
    job = _running(session, store, n_images=2)
    jobstore.write_results(session, [_bad(i) for i in _items(session, job)], None)
    assert jobstore.finish_if_done(session, job.id, progress_interval_s=0) is JobStatus.FAILED
    session.refresh(job)
    assert (job.status, job.error_type, job.failed_items) == ("failed", "all-items-failed", 2)


def test_finish_if_done_does_nothing_while_items_pending(session: Session, store: LocalBlobStore) -> None:
    """With an item still pending the job keeps running (counts are refreshed)."""
    job = _running(session, store, n_images=2)
    jobstore.write_results(session, [_ok(_items(session, job)[0])], None)
    assert jobstore.finish_if_done(session, job.id, progress_interval_s=0) is None
    session.refresh(job)
    assert (job.status, job.completed_items, job.finished_at) == ("running", 1, None)


def test_finish_if_done_on_canceled_job_reports_nothing(session: Session, store: LocalBlobStore) -> None:
    """A job canceled while its last batch ran stays canceled."""
    job = _running(session, store, n_images=1)
    jobstore.cancel_job(session, job.id)
    jobstore.write_results(session, [_ok(_items(session, job)[0])], None)
    assert jobstore.finish_if_done(session, job.id, progress_interval_s=0) is None
    session.refresh(job)
    assert job.status == "canceled"


def test_refresh_counts_uses_no_deprecated_sqlalchemy_api(session: Session, store: LocalBlobStore) -> None:
    """Recomputing a job's counts emits no deprecation warning on the supported SQLAlchemy versions."""
    job = make_job(session, store, n_images=2)
    assert jobstore.refresh_counts(session, job.id, progress_interval_s=0) == (2, 0, 0)


# --- fail_job / cancel_job --------------------------------------------------------------------------------


def test_fail_job_fails_pending_items_only(session: Session, store: LocalBlobStore) -> None:
    """fail_job fails the job and its pending items with the reason; written items keep their prediction."""
    job = _running(session, store, n_images=3)
    items = _items(session, job)
    jobstore.write_results(session, [_ok(items[0], "4", 0.7)], None)
    assert jobstore.fail_job(session, job.id, "model-not-ready", "artifact missing")
    session.refresh(job)
    assert (job.status, job.error_type, job.error) == ("failed", "model-not-ready", "artifact missing")
    assert (job.completed_items, job.failed_items) == (1, 2)
    done, *failed = _items(session, job)
    assert (done.status, done.label) == ("succeeded", "4")
    expected = {("failed", "model-not-ready", "artifact missing")}
    assert {(i.status, i.error_type, i.error) for i in failed} == expected


def test_fail_job_leaves_finished_job_alone(session: Session, store: LocalBlobStore) -> None:
    """fail_job on a succeeded job changes nothing and says so."""
    job = make_job(session, store, status="succeeded")
    assert not jobstore.fail_job(session, job.id, "x", "y")
    session.refresh(job)
    assert job.status == "succeeded" and job.error_type is None
    assert {i.status for i in _items(session, job)} == {"pending"}


@pytest.mark.parametrize("start", ["queued", "running"])
def test_cancel_unfinished_job(session: Session, store: LocalBlobStore, start: str) -> None:
    """A queued or running job can be canceled and gets finished_at."""
    job = make_job(session, store, status=start)
    canceled = jobstore.cancel_job(session, job.id)
    assert (canceled.status, canceled.error_type) == ("canceled", "canceled")
    assert canceled.finished_at is not None


@pytest.mark.parametrize("final", ["succeeded", "failed", "canceled"])
def test_cancel_finished_job_is_409(session: Session, store: LocalBlobStore, final: str) -> None:
    """Canceling a finished job raises JobNotCancelable (409) and leaves it as it was."""
    job = make_job(session, store, status=final)
    with pytest.raises(JobNotCancelable) as info:
        jobstore.cancel_job(session, job.id)
    assert info.value.status == 409 and final in info.value.detail
    session.refresh(job)
    assert job.status == final


def test_cancel_unknown_or_foreign_job_is_404(session: Session, store: LocalBlobStore) -> None:
    """Canceling a job that does not exist, or belongs to another tenant, raises JobNotFound."""
    job = make_job(session, store, tenant_id="acme")
    with pytest.raises(JobNotFound):
        jobstore.cancel_job(session, uuid.uuid4())
    with pytest.raises(JobNotFound):
        jobstore.cancel_job(session, job.id, tenant_id="default")


# --- paging -----------------------------------------------------------------------------------------------


def test_items_page_after_and_limit(session: Session, store: LocalBlobStore) -> None:
    """items_page returns items in index order strictly after `after`, at most `limit`."""
    job = make_job(session, store, n_images=5)
    assert [i.idx for i in jobstore.items_page(session, job.id, after=-1, limit=2)] == [0, 1]
    assert [i.idx for i in jobstore.items_page(session, job.id, after=1, limit=2)] == [2, 3]
    assert [i.idx for i in jobstore.items_page(session, job.id, after=3, limit=2)] == [4]
    assert jobstore.items_page(session, job.id, after=4, limit=2) == []


def _seven_jobs(session: Session, store: LocalBlobStore) -> list[Job]:
    """Seven jobs whose created_at values include ties (so the id tie-break matters)."""
    base = utcnow().replace(microsecond=0) - timedelta(hours=1)
    offsets = [0, 10, 10, 10, 20, 20, 30]
    jobs = [make_job(session, store, n_images=1, created_at=base + timedelta(seconds=s)) for s in offsets]
    session.commit()
    return jobs


def test_jobs_page_walks_all_pages_newest_first(session: Session, store: LocalBlobStore) -> None:
    """Following next_cursor with page size 3 visits every job once, newest first, then ends."""
    jobs = _seven_jobs(session, store)
    pages, cursor = [], None
    while True:
        rows, cursor = jobstore.jobs_page(session, tenant_id="default", status=None, cursor=cursor, limit=3)
        pages.append([j.id for j in rows])
        if cursor is None:
            break
        assert len(pages) < 10, "pagination does not terminate"
    assert [len(p) for p in pages] == [3, 3, 1]
    seen = [i for p in pages for i in p]
    assert len(seen) == len(set(seen)) == 7
    created = {j.id: j.created_at for j in jobs}
    assert [created[i] for i in seen] == sorted(created.values(), reverse=True)
    expected = sorted(jobs, key=lambda j: (j.created_at, str(j.id)), reverse=True)
    assert seen == [j.id for j in expected]


def test_jobs_page_exact_multiple_has_no_empty_last_page(session: Session, store: LocalBlobStore) -> None:
    """When the jobs fill the pages exactly, the last full page has no next_cursor."""
    for _ in range(3):
        make_job(session, store, n_images=1)
    session.commit()
    rows, cursor = jobstore.jobs_page(session, tenant_id="default", status=None, cursor=None, limit=3)
    assert len(rows) == 3 and cursor is None


def test_jobs_page_status_filter_and_tenant(session: Session, store: LocalBlobStore) -> None:
    """The status filter keeps only jobs in that status, and only the tenant's own jobs are listed."""
    queued = make_job(session, store, n_images=1)
    canceled = make_job(session, store, n_images=1, status="canceled")
    make_job(session, store, n_images=1, tenant_id="acme")
    session.commit()
    rows, _ = jobstore.jobs_page(session, tenant_id="default", status=JobStatus.CANCELED, cursor=None, limit=10)
    assert [j.id for j in rows] == [canceled.id]
    rows, _ = jobstore.jobs_page(session, tenant_id="default", status=None, cursor=None, limit=10)
    assert {j.id for j in rows} == {queued.id, canceled.id}


BAD_CURSORS = [
    "not a cursor!",
    "Zm9v",
    "YXxi",
    "fHx8",
    "%%%",
    "2024-01-01T00:00:00|nope",
    "_-_-",
    b64(b"2024-01-01T00:00:00+00:00|not-a-uuid"),
    b64(b"yesterday|6f1c2a8e-0b5c-4b7a-9d57-3f0e1b9e4d10"),
    b64(b"\xff\xfe|x"),
    "1796317599102881_6f1c2a8e0b5c4b7a9d573f0e1b9e4d1",  # one hex digit short
    "17963175991028810_6f1c2a8e0b5c4b7a9d573f0e1b9e4d10",  # 17 digits: past the year 2286
    "1796317599102881_6F1C2A8E0B5C4B7A9D573F0E1B9E4D10",
    "1796317599102881_6f1c2a8e0b5c4b7a9d573f0e1b9e4d10\n",
]


@pytest.mark.parametrize("cursor", BAD_CURSORS)
def test_bad_cursor_is_validation_failed(session: Session, cursor: str) -> None:
    """A cursor not made by encode_cursor raises ValidationFailed (422)."""
    with pytest.raises(ValidationFailed) as info:
        jobstore.jobs_page(session, tenant_id="default", status=None, cursor=cursor, limit=3)
    assert info.value.status == 422


@given(st.from_regex(jobstore.CURSOR_PATTERN, fullmatch=True))
def test_every_cursor_the_openapi_pattern_allows_is_read(cursor: str) -> None:
    """The pattern the API documents for ?cursor= is exact: a client that follows it never gets a 422 for it."""
    jobstore.decode_cursor(cursor)


def test_cursor_roundtrip(session: Session, store: LocalBlobStore) -> None:
    """decode_cursor(encode_cursor(job)) gives back the job's created_at and id."""
    job = make_job(session, store, n_images=1)
    session.commit()
    session.refresh(job)
    assert jobstore.decode_cursor(jobstore.encode_cursor(job)) == (job.created_at, job.id)


# --- reconciling ------------------------------------------------------------------------------------------


def test_stale_queued_jobs_selects_only_expired_leases(session: Session, store: LocalBlobStore) -> None:
    """Only queued jobs older than the lease whose dispatch is missing or older than the lease are stale."""
    now = utcnow()
    old = now - timedelta(seconds=120)
    never_sent = make_job(session, store, n_images=1, created_at=old - timedelta(seconds=5))
    lease_over = make_job(session, store, n_images=1, created_at=old, dispatched_at=old)
    make_job(session, store, n_images=1, created_at=old, dispatched_at=now)  # lease still held
    make_job(session, store, n_images=1)  # just created, not yet dispatched
    make_job(session, store, n_images=1, created_at=old, status="running")
    make_job(session, store, n_images=1, created_at=old, status="canceled")
    session.commit()
    assert leases.stale_queued_jobs(session, lease_s=60) == [never_sent.id, lease_over.id]
    assert leases.stale_queued_jobs(session, lease_s=60, limit=1) == [never_sent.id]


def test_claim_for_redispatch_is_a_lease(sessions: sessionmaker[Session], store: LocalBlobStore) -> None:
    """Two reconcilers claiming the same stale job: the first wins, the second gets False."""
    old = utcnow() - timedelta(seconds=120)
    with sessions.begin() as s:
        job_id = make_job(s, store, n_images=1, created_at=old).id
    with sessions.begin() as a:
        assert leases.claim_for_redispatch(a, job_id, lease_s=60)
    with sessions.begin() as b:
        assert not leases.claim_for_redispatch(b, job_id, lease_s=60)
        assert leases.stale_queued_jobs(b, lease_s=60) == []
        # once the lease has passed again, the job can be claimed again
        b.execute(update(Job).where(Job.id == job_id).values(dispatched_at=old))
        assert leases.claim_for_redispatch(b, job_id, lease_s=60)


def test_claim_refuses_non_queued_job(session: Session, store: LocalBlobStore) -> None:
    """A job that already runs is never claimed for re-dispatch."""
    job = make_job(session, store, n_images=1, created_at=utcnow() - timedelta(hours=1), status="running")
    assert not leases.claim_for_redispatch(session, job.id, lease_s=60)


def test_mark_dispatched_starts_the_lease(session: Session, store: LocalBlobStore) -> None:
    """mark_dispatched stamps dispatched_at, which takes the job out of the stale set."""
    job = make_job(session, store, n_images=1, created_at=utcnow() - timedelta(hours=1))
    assert leases.stale_queued_jobs(session, lease_s=60) == [job.id]
    jobstore.mark_dispatched(session, [job.id])
    session.refresh(job)
    assert job.dispatched_at is not None
    assert leases.stale_queued_jobs(session, lease_s=60) == []


def test_small_inputs_live_in_their_row_and_large_ones_in_blobs(session: Session, store: LocalBlobStore) -> None:
    """With inline_max_bytes, an input up to that size is stored in its item's row (no blob), a larger one as a
    blob; pending_inputs hands the worker the bytes or the key accordingly."""
    small, large = b"x" * 10, b"y" * 11
    job = jobstore.create_classify_job(
        session=session,
        store=store,
        uploads=[Upload(None, small), Upload(None, large)],
        model_ref="m",
        top_k=1,
        inline_max_bytes=10,
    )
    session.commit()
    pending = jobstore.pending_inputs(session, job.id)
    assert [(p.key, p.data) for p in pending] == [(None, small), (jobstore.input_key(job.id, 1), None)]
    assert not store.exists(jobstore.input_key(job.id, 0)) and store.get(jobstore.input_key(job.id, 1)) == large
