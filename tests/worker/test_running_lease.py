"""The running lease, the threads-pool hard limit and the startup check, without a broker or TensorFlow."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import timedelta

import numpy as np
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from inferq.cli import main
from shared.config.settings import Settings
from shared.config.status import JobStatus
from shared.db.engine import session_scope
from shared.db.models import Job, utcnow
from shared.inputs.storage import LocalBlobStore
from shared.jobs import leases
from shared.jobs import lifecycle as jobstore
from tests.factories import make_job
from tests.worker.conftest import ContextFactory
from worker import context as worker_context
from worker.context import WorkerContext
from worker.reconcile import Dispatch, reconcile


@pytest.fixture
def ctx(make_ctx: ContextFactory) -> WorkerContext:
    """A SQLite worker context."""
    return make_ctx(max_batch_wait_ms=1)


def running_job(ctx: WorkerContext, *, idle_s: float) -> uuid.UUID:
    with session_scope(ctx.sessions) as session:
        job = make_job(session, LocalBlobStore(ctx.settings.blob_dir), n_images=1, dispatched_at=utcnow())
        job_id = job.id
        assert jobstore.start_attempt(session, job_id, None)
    with session_scope(ctx.sessions) as session:
        row = session.get(Job, job_id)
        assert row is not None
        row.updated_at = utcnow() - timedelta(seconds=idle_s)
    return job_id


def test_reconcile_redispatches_a_stale_running_job_once(ctx: WorkerContext) -> None:
    """A running job idle past INFERQ_RUNNING_LEASE_S is published once; a busy running job is left alone."""
    stale = running_job(ctx, idle_s=ctx.settings.running_lease_s + 5)
    running_job(ctx, idle_s=1)
    sent: list[Dispatch] = []
    assert reconcile(ctx, sent.append) == 1
    assert reconcile(ctx, sent.append) == 0  # the claim renewed the lease
    assert [m.job_id for m in sent] == [stale]
    with session_scope(ctx.sessions) as session:
        job = session.get(Job, stale)
        assert job is not None and job.status == JobStatus.RUNNING.value and job.attempts == 1


def test_claim_of_a_running_job_is_compare_and_set(ctx: WorkerContext) -> None:
    """Two reconcilers racing for one stale running job: only the first claim wins."""
    job_id = running_job(ctx, idle_s=ctx.settings.running_lease_s + 5)
    lease = ctx.settings.running_lease_s
    with session_scope(ctx.sessions) as session:
        assert leases.claim_running_for_redispatch(session, job_id, lease_s=lease)
    with session_scope(ctx.sessions) as session:
        assert not leases.claim_running_for_redispatch(session, job_id, lease_s=lease)


def test_running_lease_must_exceed_the_task_time_limit() -> None:
    """INFERQ_RUNNING_LEASE_S <= INFERQ_TASK_TIME_LIMIT is refused, naming both settings."""
    with pytest.raises(ValidationError, match="INFERQ_RUNNING_LEASE_S.*INFERQ_TASK_TIME_LIMIT"):
        Settings(running_lease_s=300, task_time_limit=360)


@pytest.mark.parametrize("command", ["worker", "api", "flower"])
def test_unsafe_settings_stop_the_entry_points_with_one_line(monkeypatch: pytest.MonkeyPatch, command: str) -> None:
    """`inferq worker|api|flower` with visibility timeout <= hard limit exit 2 with one line, no traceback."""
    monkeypatch.setenv("INFERQ_VISIBILITY_TIMEOUT", "10")
    result = CliRunner().invoke(main, [command])
    assert result.exit_code == 2
    assert "refusing to start: INFERQ_VISIBILITY_TIMEOUT (10s)" in result.output
    assert "Traceback" not in result.output


def test_a_hung_forward_pass_past_the_hard_limit_ends_the_process(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The threads pool cannot kill a task: a forward pass over INFERQ_TASK_TIME_LIMIT triggers the exit hook."""
    fired = threading.Event()
    monkeypatch.setattr(worker_context, "_hard_limit_exceeded", lambda *_: fired.set())
    ctx.settings.task_time_limit = 0.05  # type: ignore[assignment]
    bounded = ctx._bounded(lambda x: (time.sleep(0.3), x)[1])
    bounded(np.zeros((1, 2)))
    assert fired.is_set()
    fired.clear()
    ctx.settings.task_time_limit = 5
    ctx._bounded(lambda x: x)(np.zeros((1, 2)))
    assert not fired.is_set()


def test_a_backlog_defers_redispatch_of_published_queued_jobs(ctx: WorkerContext) -> None:
    """Behind a broker backlog only never-published queued jobs are re-dispatched; once empty, the others too."""
    old = utcnow() - timedelta(seconds=ctx.settings.queued_lease_s + 5)
    with session_scope(ctx.sessions) as session:
        store = LocalBlobStore(ctx.settings.blob_dir)
        published = make_job(session, store, n_images=1, created_at=old, dispatched_at=old).id
        unpublished = make_job(session, store, n_images=1, created_at=old).id
    sent: list[Dispatch] = []
    assert reconcile(ctx, sent.append, backlog=lambda _queue: 100) == 1
    assert [m.job_id for m in sent] == [unpublished]
    assert reconcile(ctx, sent.append, backlog=lambda _queue: 0) == 1
    assert [m.job_id for m in sent] == [unpublished, published]
