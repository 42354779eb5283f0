"""The reconciler for classify, score and training jobs, and the heartbeat of long tasks (SQLite, no broker)."""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import func, select, update

from shared.config.settings import Settings
from shared.config.status import JobKind, JobStatus
from shared.db.engine import session_scope
from shared.db.models import Job, JobItem, utcnow
from shared.inputs.datasets import ingest
from shared.inputs.storage import LocalBlobStore
from shared.jobs import leases
from shared.jobs import lifecycle as jobstore
from shared.registry.model_jobs import Operation, create_model_job
from shared.registry.versions import register_version
from shared.runtime.celery_app import (
    BULK_QUEUE,
    CLASSIFY_TASK,
    INFERENCE_QUEUE,
    INTERACTIVE_QUEUE,
    OPS_QUEUE,
    RECONCILE_TASK,
    SCORE_CHUNK_TASK,
    TRAIN_TASK,
    TRAINING_QUEUE,
    WEBHOOK_DISPATCH_TASK,
    interactive_queues,
    make_celery,
    train_time_limit,
)
from tests.dataset_factories import digits, npz_bytes
from tests.factories import make_job
from tests.worker.conftest import ContextFactory
from worker import reconcile as reconcile_module
from worker.context import WorkerContext
from worker.reconcile import Dispatch, Heartbeat, celery_backlog, job_messages, reconcile
from worker.scoring import run_chunk

CHUNK = 40


class BarModel:
    """Ten classes; always predicts class 0 (the reconciler never looks at predictions)."""

    num_classes = 10

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = np.full((len(x), 10), 0.01, dtype=np.float32)
        out[:, 0] = 0.91
        return out


@pytest.fixture
def ctx(make_ctx: ContextFactory) -> WorkerContext:
    """A SQLite worker context with 40-item score chunks and a fake model registered as mnist-cnn@production."""
    context = make_ctx(chunk_size=CHUNK, score_batch=16)
    with session_scope(context.sessions) as session:
        mv = register_version(
            session, name="mnist-cnn", format="keras", artifact_uri="unused", size_bytes=1, aliases=("production",)
        )
        key = (mv.name, mv.version, mv.variant)
    context.models.get(key, BarModel)
    return context


def ago(seconds: float) -> object:
    return utcnow() - timedelta(seconds=seconds)


def set_job(ctx: WorkerContext, job_id: uuid.UUID, **values: object) -> None:
    with session_scope(ctx.sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def job_row(ctx: WorkerContext, job_id: uuid.UUID) -> Job:
    with session_scope(ctx.sessions) as session:
        job = jobstore.get_job(session, job_id)
        session.expunge(job)
        return job


def score_job(ctx: WorkerContext, items: int = 100) -> uuid.UUID:
    """A queued score job over a stored dataset of `items` images (3 chunks for 100), created long ago."""
    x, y = digits(items)
    src = ctx.settings.data_dir / f"up-{uuid.uuid4()}"
    src.write_bytes(npz_bytes(x=x, y=y))
    with session_scope(ctx.sessions) as session:
        ds = ingest(session=session, settings=ctx.settings, src=src, filename="d.npz")
        job = Job(
            kind=JobKind.SCORE.value,
            status=JobStatus.QUEUED.value,
            model_ref="mnist-cnn",
            params={"dataset_id": str(ds.id), "chunk_size": CHUNK, "top_k": 1},
            total_items=ds.item_count,
            created_at=ago(3600),
        )
        session.add(job)
        session.flush()
        return job.id


def train_job(ctx: WorkerContext, **values: object) -> uuid.UUID:
    with session_scope(ctx.sessions) as session:
        job = create_model_job(session=session, operation=Operation.TRAIN, model_ref="mnist-cnn", params={})
        job_id = job.id
    set_job(ctx, job_id, created_at=ago(3600), **values)
    return job_id


def rows_per_item(ctx: WorkerContext, job_id: uuid.UUID) -> list[int]:
    with session_scope(ctx.sessions) as session:
        q = select(func.count()).where(JobItem.job_id == job_id).group_by(JobItem.idx).order_by(JobItem.idx)
        return list(session.scalars(q))


def test_a_stale_queued_classify_job_is_published_once(ctx: WorkerContext) -> None:
    """Queued classify jobs past the lease are published once; a second pass within the lease publishes nothing."""
    with session_scope(ctx.sessions) as session:
        job_id = make_job(session, LocalBlobStore(ctx.settings.blob_dir), n_images=1, created_at=ago(3600)).id
    sent: list[Dispatch] = []
    assert reconcile(ctx, sent.append) == 1
    assert reconcile(ctx, sent.append) == 0
    assert sent == [Dispatch(CLASSIFY_TASK, (str(job_id),), queue="interactive")]


def test_a_re_dispatched_classify_job_keeps_its_priority(ctx: WorkerContext) -> None:
    """The reconciler publishes a lost high-priority job to the high queue, not to the lane's plain one."""
    with session_scope(ctx.sessions) as session:
        job_id = make_job(session, LocalBlobStore(ctx.settings.blob_dir), n_images=1, created_at=ago(3600)).id
    set_job(ctx, job_id, params={"top_k": 1, "priority": 2})
    sent: list[Dispatch] = []
    assert reconcile(ctx, sent.append) == 1
    assert sent == [Dispatch(CLASSIFY_TASK, (str(job_id),), queue="interactive-high")]
    assert sent[0].options() == {"queue": "interactive-high"}


def test_a_score_job_whose_publish_failed_gets_every_chunk(ctx: WorkerContext) -> None:
    """A queued score job never marked dispatched is published again, one message per chunk, even behind a backlog."""
    job_id = score_job(ctx)
    sent: list[Dispatch] = []
    assert reconcile(ctx, sent.append, backlog=lambda _queue: 50) == 1
    assert sent == [Dispatch(SCORE_CHUNK_TASK, (str(job_id), i)) for i in range(3)]
    assert reconcile(ctx, sent.append) == 0  # the claim renewed the lease


def test_a_published_queued_score_job_waits_behind_a_backlog(ctx: WorkerContext) -> None:
    """A score job published long ago is re-published only once the bulk queue (and the pre-lanes one) is empty."""
    job_id = score_job(ctx)
    set_job(ctx, job_id, dispatched_at=ago(3600))
    asked: list[str] = []
    sent: list[Dispatch] = []
    assert reconcile(ctx, sent.append, backlog=lambda queue: asked.append(queue) or 7) == 0
    assert BULK_QUEUE in asked and sent == []
    assert reconcile(ctx, sent.append) == 1
    assert [m.args for m in sent] == [(str(job_id), i) for i in range(3)]


def test_only_the_missing_chunks_of_a_part_published_score_job_are_sent(ctx: WorkerContext) -> None:
    """Chunks 0 and 2 ran, chunk 1 was never published: only chunk 1 is sent, then the job finishes with one row
    per item."""
    job_id = score_job(ctx)
    run_chunk(ctx, job_id, 0)
    run_chunk(ctx, job_id, 2)
    assert job_row(ctx, job_id).status == JobStatus.RUNNING.value
    sent: list[Dispatch] = []
    assert reconcile(ctx, sent.append, backlog=lambda _queue: 3) == 0  # unsure what is queued: wait
    assert reconcile(ctx, sent.append) == 1
    assert sent == [Dispatch(SCORE_CHUNK_TASK, (str(job_id), 1))]
    run_chunk(ctx, job_id, 1)
    assert job_row(ctx, job_id).status == JobStatus.SUCCEEDED.value
    assert rows_per_item(ctx, job_id) == [1] * 100


def test_a_stalled_score_job_is_retried_then_fails_its_missing_items(ctx: WorkerContext) -> None:
    """A running score job without progress gets its missing chunks again, counting an attempt; at
    INFERQ_MAX_ATTEMPTS the missing items become too-many-attempts rows and the job ends, one row per item."""
    job_id = score_job(ctx)
    run_chunk(ctx, job_id, 0)
    set_job(ctx, job_id, dispatched_at=ago(3600))
    stale = ctx.settings.running_lease_s + 5
    for attempt in range(1, ctx.settings.max_attempts):
        set_job(ctx, job_id, updated_at=ago(stale))
        sent: list[Dispatch] = []
        assert reconcile(ctx, sent.append, backlog=lambda _queue: 9) == 1  # a stall is judged without the queue
        assert [m.args[1] for m in sent] == [1, 2]
        assert job_row(ctx, job_id).attempts == attempt
    set_job(ctx, job_id, updated_at=ago(stale))
    sent = []
    assert reconcile(ctx, sent.append) == 1
    assert sent == []
    job = job_row(ctx, job_id)
    assert (job.status, job.completed_items, job.failed_items) == (JobStatus.SUCCEEDED.value, CHUNK, 60)
    assert rows_per_item(ctx, job_id) == [1] * 100
    with session_scope(ctx.sessions) as session:
        reasons = set(session.scalars(select(JobItem.error_type).where(JobItem.job_id == job_id, JobItem.idx >= 40)))
    assert reasons == {"too-many-attempts"}


def test_a_lost_training_job_is_published_with_its_time_limit(ctx: WorkerContext) -> None:
    """A queued training job whose publish failed is sent to the training queue's task with the API's time limit."""
    job_id = train_job(ctx)
    sent: list[Dispatch] = []
    assert reconcile(ctx, sent.append, backlog=lambda _queue: 4) == 1
    assert sent == [Dispatch(TRAIN_TASK, (str(job_id),), time_limit=train_time_limit(ctx.settings))]
    assert sent[0].options() == {"time_limit": ctx.settings.train_time_limit}


def test_a_published_training_job_waits_behind_the_training_queue(ctx: WorkerContext) -> None:
    """A training job published long ago is re-published only while the training queue is empty."""
    job_id = train_job(ctx, dispatched_at=ago(3600))
    sent: list[Dispatch] = []
    assert reconcile(ctx, sent.append, backlog=lambda queue: 1 if queue == TRAINING_QUEUE else 0) == 0
    assert reconcile(ctx, sent.append, backlog=lambda queue: 1 if queue == BULK_QUEUE else 0) == 1
    assert [m.job_id for m in sent] == [job_id]


def test_a_running_training_job_without_heartbeat_is_started_again(ctx: WorkerContext) -> None:
    """A running training job idle past the lease is published again (the task counts the attempt, not the
    reconciler); a fresh one is left alone."""
    stale = train_job(ctx, status=JobStatus.RUNNING.value, attempts=1, updated_at=ago(3600))
    train_job(ctx, status=JobStatus.RUNNING.value, attempts=1)
    sent: list[Dispatch] = []
    assert reconcile(ctx, sent.append) == 1
    assert [m.job_id for m in sent] == [stale] and job_row(ctx, stale).attempts == 1


def test_the_heartbeat_renews_the_lease_of_live_tasks_only_within_their_limit(ctx: WorkerContext) -> None:
    """A beat touches the jobs of running tasks (so they are not stale); a task past its limit or ended is not
    touched."""
    live, hung, done = (train_job(ctx, status=JobStatus.RUNNING.value, updated_at=ago(3600)) for _ in range(3))
    beat = Heartbeat()
    beat.begin("t-live", live, limit_s=60)
    beat.begin("t-hung", hung, limit_s=0)
    beat.begin("t-done", done, limit_s=60)
    beat.end("t-done")
    assert beat.jobs() == [live]
    assert beat.beat(ctx) == 1
    with session_scope(ctx.sessions) as session:
        stale = leases.stale_running_jobs(session, lease_s=ctx.settings.running_lease_s, kind=JobKind.TRAIN)
    assert sorted(stale) == sorted([hung, done])


def test_an_idle_pass_reads_the_training_queue_only_when_a_training_job_waits(ctx: WorkerContext) -> None:
    """With nothing stale a pass publishes nothing and reads only the interactive and bulk queues' lengths; the
    training queue is read once a training job has waited past the lease."""
    asked: list[str] = []
    assert reconcile(ctx, lambda _m: None, backlog=lambda queue: asked.append(queue) or 0) == 0
    lanes = [*interactive_queues(ctx.settings), INFERENCE_QUEUE, BULK_QUEUE]  # every priority's queue
    assert sorted(asked) == sorted(lanes)
    train_job(ctx, dispatched_at=ago(3600))
    asked.clear()
    assert reconcile(ctx, lambda _m: None, backlog=lambda queue: asked.append(queue) or 0) == 1
    assert sorted(asked) == sorted([*lanes, TRAINING_QUEUE])


def test_the_backlog_counts_job_messages_not_the_beats_own(tmp_path: Path, redis_url: str) -> None:
    """The beat's reconcile and webhook messages (in ops, or left in the pre-lanes queue) are no backlog; job
    messages are; a long queue counts whole without being read."""
    app = make_celery(Settings(data_dir=tmp_path, redis_url=redis_url))
    backlog = celery_backlog(app)
    assert backlog(OPS_QUEUE) == 0
    for task in (RECONCILE_TASK, WEBHOOK_DISPATCH_TASK, RECONCILE_TASK):
        app.send_task(task)
        app.send_task(task, queue=INFERENCE_QUEUE)  # as a pre-lanes beat published them
    assert backlog(OPS_QUEUE) == 0 == backlog(INFERENCE_QUEUE)
    app.send_task(CLASSIFY_TASK, args=[str(uuid.uuid4())])
    app.send_task(SCORE_CHUNK_TASK, args=[str(uuid.uuid4()), 3])
    app.send_task(CLASSIFY_TASK, args=[str(uuid.uuid4())], queue=INFERENCE_QUEUE)
    assert (backlog(INTERACTIVE_QUEUE), backlog(BULK_QUEUE), backlog(INFERENCE_QUEUE)) == (1, 1, 1)
    with app.connection_for_read() as conn:
        assert job_messages(conn.default_channel, INFERENCE_QUEUE, scan=2) == 4


def test_passes_do_not_overlap_within_a_process(ctx: WorkerContext) -> None:
    """A pass that finds another one running in its process returns at once; the next one does the work."""
    train_job(ctx)
    sent: list[Dispatch] = []
    with reconcile_module._PASS:
        assert reconcile(ctx, sent.append) == 0
    assert reconcile(ctx, sent.append) == 1 and len(sent) == 1


def test_a_batch_claim_takes_each_stale_job_once(ctx: WorkerContext) -> None:
    """One statement claims many stale queued jobs; a second reconciler racing for the same ids gets none of them,
    and a fresh job is never taken."""
    store = LocalBlobStore(ctx.settings.blob_dir)
    with session_scope(ctx.sessions) as session:
        stale = [make_job(session, store, n_images=1, created_at=ago(3600)).id for _ in range(3)]
        fresh = make_job(session, store, n_images=1, dispatched_at=utcnow()).id
    lease = ctx.settings.queued_lease_s
    with session_scope(ctx.sessions) as session:
        assert leases.claim_stale_queued(session, [*stale, fresh], lease_s=lease) == stale
    with session_scope(ctx.sessions) as session:
        assert leases.claim_stale_queued(session, [*stale, fresh], lease_s=lease) == []
