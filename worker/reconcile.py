"""The reconciler: finds jobs whose messages were lost (publish failed, Redis emptied, worker and message gone) and
publishes them again, for every kind of job. PostgreSQL is the source of truth; Redis only carries pointers.

Each stale job is taken by a compare-and-set lease in the database, so any number of reconcilers may run at once:

* **classify**: one message per job. Queued jobs are re-published after INFERQ_QUEUED_LEASE_S, running jobs after
  INFERQ_RUNNING_LEASE_S without progress; the task counts attempts and fails the job after INFERQ_MAX_ATTEMPTS.
* **score**: one message per chunk, `[job_id, chunk_index]`. Only the chunks without rows are published again (a
  chunk's rows are written at once, so its first row says it is done). A running score job that stalls counts an
  attempt; at INFERQ_MAX_ATTEMPTS its missing chunks become `too-many-attempts` error rows, so the job still ends
  with exactly one row per item.
* **train** (train/optimize/benchmark/import/export, one message per job): not resumable, so a lost running job
  is started again from scratch; the task counts the attempt and fails the job with `too-many-attempts` after
  INFERQ_MAX_ATTEMPTS. A re-run cannot register a second version: registering and succeeding are one
  compare-and-set transaction.

A *published* queued job is re-published only while its queue in the broker is empty: behind a backlog it is
waiting, not lost, and re-publishing would multiply the queue. Long tasks (training, score chunks) keep their job's
running lease fresh with a heartbeat while they run, so the lease expires only for jobs whose worker is gone.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from celery import Celery
from celery.signals import task_postrun, task_prerun
from sqlalchemy.orm import Session

from shared.config.settings import Settings
from shared.config.status import JobKind, JobStatus, Priority
from shared.db.engine import session_scope
from shared.db.models import Job
from shared.jobs import leases
from shared.jobs import lifecycle as jobstore
from shared.runtime import metrics
from shared.runtime.celery_app import (
    CLASSIFY_TASK,
    INFERENCE_QUEUE,
    SCORE_CHUNK_TASK,
    TRAIN_TASK,
    classify_queue,
    interactive_queues,
    train_time_limit,
)
from worker.context import WorkerContext, get_context
from worker.scoring import chunk_count, fail_chunk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Dispatch:
    """One message to publish again: a task name and its arguments (ids only), plus a time limit for training and
    the queue of a classify job's priority (else the task's route)."""

    task: str
    args: tuple[str | int, ...]
    time_limit: int | None = None
    queue: str | None = None

    @property
    def job_id(self) -> uuid.UUID:
        return uuid.UUID(str(self.args[0]))

    def options(self) -> dict[str, Any]:
        """Keyword options for Celery's send_task."""
        options: dict[str, Any] = {} if self.time_limit is None else {"time_limit": self.time_limit}
        return options if self.queue is None else {**options, "queue": self.queue}


Publish = Callable[[Dispatch], None]
Backlog = Callable[[str], int]


def reconcile(ctx: WorkerContext, publish: Publish, backlog: Backlog = lambda _queue: 0) -> int:
    """One pass over every kind of job: publish again what may be lost; returns how many jobs were re-dispatched.

    `backlog(queue)` is the number of job messages waiting in a broker queue (unknown should count as a backlog).
    Passes do not overlap within a process: one that finds another running returns 0 at once (the beat's next
    message brings the next pass; across processes the leases keep overlapping passes correct)."""
    if not _PASS.acquire(blocking=False):
        return 0
    try:
        return _reconcile(ctx, publish, backlog)
    finally:
        _PASS.release()


_PASS = threading.Lock()


def _reconcile(ctx: WorkerContext, publish: Publish, backlog: Backlog) -> int:
    _expire(ctx)
    idle = _IdleQueues(backlog)
    sent = {
        JobKind.CLASSIFY: _classify(ctx, publish, idle),
        JobKind.SCORE: _score(ctx, publish, idle),
        JobKind.TRAIN: _train(ctx, publish, idle),
    }
    if metrics.enabled:
        for kind, n in sent.items():
            if n:
                metrics.RECONCILER_ACTIONS.labels(f"redispatch-{kind.value}").inc(n)
    if any(sent.values()):
        log.warning("reconciler re-dispatched %s", ", ".join(f"{n} {kind} job(s)" for kind, n in sent.items() if n))
    return sum(sent.values())


def _expire(ctx: WorkerContext) -> None:
    """End the jobs whose deadline passed before they started (their messages may wait far behind a backlog); a
    worker that takes one later skips it."""
    with session_scope(ctx.sessions) as session:
        expired = jobstore.expire_overdue(session)
    if expired:
        log.info("reconciler expired %d job(s) whose deadline passed before they started", len(expired))
        if metrics.enabled:
            metrics.RECONCILER_ACTIONS.labels("expire").inc(len(expired))


class _IdleQueues:
    """Whether a broker queue is empty, read at most once per pass."""

    def __init__(self, backlog: Backlog) -> None:
        self.backlog = backlog
        self.known: dict[str, bool] = {}

    def __call__(self, queue: str) -> bool:
        if queue not in self.known:
            self.known[queue] = self.backlog(queue) == 0
        return self.known[queue]


Plan = Callable[[Session, uuid.UUID], list[Dispatch]]


Claim = Callable[[Session, list[uuid.UUID]], list[uuid.UUID]]


def _sweep(
    ctx: WorkerContext, publish: Publish, find: Callable[[Session], list[uuid.UUID]], claim: Claim, plan: Plan
) -> int:
    """Find stale jobs, take their leases (one compare-and-set) and plan their messages in one transaction, then
    publish; returns how many jobs were taken."""
    with session_scope(ctx.sessions) as session:
        taken = claim(session, find(session))
        planned = [plan(session, job_id) for job_id in taken]
    for messages in planned:
        for message in messages:
            publish(message)
    return len(taken)


def _classify(ctx: WorkerContext, publish: Publish, idle: _IdleQueues) -> int:
    s, kind = ctx.settings, JobKind.CLASSIFY

    def plan(session: Session, job_id: uuid.UUID) -> list[Dispatch]:
        job = session.get(Job, job_id)
        priority = job.priority if job is not None else Priority.NORMAL
        return [Dispatch(CLASSIFY_TASK, (str(job_id),), queue=classify_queue(s, priority))]

    # every priority's queue, and the pre-lanes queue that may still hold some
    lane_idle = all(idle(q) for q in (*interactive_queues(s), INFERENCE_QUEUE))
    sent = _sweep(ctx, publish, _find_queued(s.queued_lease_s, kind, lane_idle), _claim_queued(s), plan)
    return sent + _sweep(ctx, publish, _find_running(s.running_lease_s, kind), _claim_running(s), plan)


def _train(ctx: WorkerContext, publish: Publish, idle: _IdleQueues) -> int:
    s, kind = ctx.settings, JobKind.TRAIN

    def plan(_: Session, job_id: uuid.UUID) -> list[Dispatch]:
        return [Dispatch(TRAIN_TASK, (str(job_id),), time_limit=train_time_limit(s))]

    with session_scope(ctx.sessions) as session:  # the training queue is read only when a training job waits
        waiting = bool(leases.stale_queued_jobs(session, lease_s=s.queued_lease_s, limit=1, kind=kind))
    include_dispatched = waiting and idle(s.queue_training)
    sent = _sweep(ctx, publish, _find_queued(s.queued_lease_s, kind, include_dispatched), _claim_queued(s), plan)
    return sent + _sweep(ctx, publish, _find_running(s.running_lease_s, kind), _claim_running(s), plan)


def _score(ctx: WorkerContext, publish: Publish, idle: _IdleQueues) -> int:
    s, kind = ctx.settings, JobKind.SCORE
    failing: list[tuple[uuid.UUID, list[int]]] = []

    def missing(session: Session, job_id: uuid.UUID) -> list[Dispatch]:
        return [Dispatch(SCORE_CHUNK_TASK, (str(job_id), i)) for i in missing_chunks(session, job_id)]

    def stalled(session: Session, job_id: uuid.UUID) -> list[Dispatch]:
        messages = missing(session, job_id)
        job = session.get(Job, job_id)
        if job is not None and job.attempts >= s.max_attempts and messages:
            failing.append((job_id, [int(m.args[1]) for m in messages]))
            return []
        return messages

    lane_idle = idle(s.queue_bulk) and idle(INFERENCE_QUEUE)
    sent = _sweep(ctx, publish, _find_queued(s.queued_lease_s, kind, lane_idle), _claim_queued(s), missing)
    if lane_idle:  # chunk publishing failed part-way: send the chunks that have no rows
        find = _find_undispatched(s.queued_lease_s, kind)
        sent += _sweep(ctx, publish, find, leases.claim_undispatched, missing)
    sent += _sweep(ctx, publish, _find_running(s.running_lease_s, kind), _claim_running(s, count=True), stalled)
    for job_id, chunks in failing:
        detail = f"the job stalled {s.max_attempts} times with these items unscored (INFERQ_MAX_ATTEMPTS)"
        for index in chunks:
            fail_chunk(ctx, job_id, index, detail, error_type="too-many-attempts")
        if metrics.enabled:
            metrics.RECONCILER_ACTIONS.labels("fail-stalled-chunks").inc(len(chunks))
        log.error("score job %s: %d chunk(s) failed after %d stalls", job_id, len(chunks), s.max_attempts)
    return sent


def missing_chunks(session: Session, job_id: uuid.UUID) -> list[int]:
    """Chunk indices of a non-terminal score job that have no rows yet (a chunk's rows, its counts and the job's
    end are written in one transaction, so a job without missing chunks has ended)."""
    job = session.get(Job, job_id)
    if job is None or JobStatus(job.status).is_terminal():
        return []
    size = int(job.params["chunk_size"])
    starts = [i * size for i in range(chunk_count(job.total_items, size))]
    done = leases.written_indices(session, job_id, starts)
    return [i for i, lo in enumerate(starts) if lo not in done]


def _find_queued(lease_s: float, kind: JobKind, include_dispatched: bool) -> Callable[[Session], list[uuid.UUID]]:
    return lambda session: leases.stale_queued_jobs(
        session, lease_s=lease_s, include_dispatched=include_dispatched, kind=kind
    )


def _find_running(lease_s: float, kind: JobKind) -> Callable[[Session], list[uuid.UUID]]:
    return lambda session: leases.stale_running_jobs(session, lease_s=lease_s, kind=kind)


def _find_undispatched(lease_s: float, kind: JobKind) -> Callable[[Session], list[uuid.UUID]]:
    return lambda session: leases.undispatched_running_jobs(session, lease_s=lease_s, kind=kind)


def _claim_queued(s: Settings) -> Claim:
    return lambda session, job_ids: leases.claim_stale_queued(session, job_ids, lease_s=s.queued_lease_s)


def _claim_running(s: Settings, count: bool = False) -> Claim:
    return lambda session, job_ids: leases.claim_stale_running(
        session, job_ids, lease_s=s.running_lease_s, count_attempt=count
    )


# --- wiring to Celery ---------------------------------------------------------------------------------------------


def celery_publisher(app: Celery) -> Publish:
    """Publish a Dispatch by task name through the app's broker connection."""

    def publish(message: Dispatch) -> None:
        app.send_task(message.task, args=list(message.args), **message.options())

    return publish


JOB_TASKS = frozenset({CLASSIFY_TASK, SCORE_CHUNK_TASK, TRAIN_TASK})
BACKLOG_SCAN = 200  # a queue this short is read to count its job messages; a longer one is a backlog anyway


def celery_backlog(app: Celery) -> Backlog:
    """Job messages waiting in a broker queue (all priorities); an unreadable broker counts as a backlog.

    Only job messages count: the beat's own messages (this reconciler, the webhook dispatcher, retention) share a
    queue and pile up exactly while the workers are busy, so counting them would make a queue whose job
    messages Redis lost look busy, and defer their re-dispatch for as long as the load lasts."""

    def backlog(queue: str) -> int:
        try:
            with app.connection_for_read() as conn:
                return job_messages(conn.default_channel, queue)
        except Exception:  # noqa: BLE001 - the broker is unreachable: no queued job is judged lost now
            log.warning("could not read the length of queue %s", queue, exc_info=True)
            return 1

    return backlog


def job_messages(channel: Any, queue: str, scan: int = BACKLOG_SCAN) -> int:
    """Messages of JOB_TASKS in a kombu Redis queue (its priority lists); past `scan` messages, all of them."""
    # not passive: Redis deletes an empty list, and a passive declare of a missing queue raises
    total = int(channel.queue_declare(queue).message_count)
    if total == 0 or total > scan or not hasattr(channel, "priority_steps"):
        return total
    client = channel.client
    raw = [m for pri in channel.priority_steps for m in client.lrange(channel._q_for_pri(queue, pri), 0, scan)]
    return sum(1 for m in raw if _is_job(m))


def _is_job(raw: bytes) -> bool:
    """Whether a raw kombu message carries a job task (an unreadable one counts, to be safe)."""
    try:
        return str(json.loads(raw)["headers"]["task"]) in JOB_TASKS
    except (ValueError, KeyError, TypeError):
        return True


# --- heartbeat: the running lease of long tasks -------------------------------------------------------------------

HEARTBEAT_TASKS = frozenset({TRAIN_TASK, SCORE_CHUNK_TASK})


class Heartbeat:
    """While long tasks run in this process, renew their jobs' running lease every INFERQ_RUNNING_LEASE_S / 3, for
    at most the task's time limit (a hung task stops beating, and its job is re-dispatched like a dead one)."""

    def __init__(self) -> None:
        self._active: dict[str, tuple[uuid.UUID, float]] = {}  # task id -> (job id, stop beating at)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def begin(self, task_id: str, job_id: uuid.UUID, limit_s: float) -> None:
        """A task for `job_id` started here."""
        with self._lock:
            self._active[task_id] = (job_id, time.monotonic() + limit_s)

    def ensure_running(self) -> None:
        """Start this process's heartbeat thread (once)."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="inferq-heartbeat", daemon=True)
                self._thread.start()

    def end(self, task_id: str) -> None:
        """The task finished (or will be retried)."""
        with self._lock:
            self._active.pop(task_id, None)

    def jobs(self) -> list[uuid.UUID]:
        """Jobs whose tasks are running here and still within their time limit."""
        now = time.monotonic()
        with self._lock:
            return sorted({job_id for job_id, until in self._active.values() if until > now})

    def beat(self, ctx: WorkerContext) -> int:
        """Renew the lease of every job with a live task here; returns how many jobs were touched."""
        jobs = self.jobs()
        if not jobs:
            return 0
        with session_scope(ctx.sessions) as session:
            return leases.touch_running(session, jobs)

    def _run(self) -> None:
        ctx = get_context()
        while True:
            time.sleep(ctx.settings.running_lease_s / 3)
            try:
                self.beat(ctx)
            except Exception:  # noqa: BLE001 - the database is away: the next beat tries again
                log.warning("heartbeat of running jobs failed", exc_info=True)


HEARTBEAT = Heartbeat()


def _task_limit(settings: Settings, task_name: str) -> float:
    return float(train_time_limit(settings) if task_name == TRAIN_TASK else settings.task_time_limit)


def _on_prerun(task_id: str | None = None, task: Any = None, args: Any = None, **_: Any) -> None:
    if task is None or task.name not in HEARTBEAT_TASKS or not args or task_id is None:
        return
    try:
        job_id = uuid.UUID(str(args[0]))
    except ValueError:
        return
    HEARTBEAT.begin(task_id, job_id, _task_limit(get_context().settings, task.name))
    HEARTBEAT.ensure_running()


def _on_postrun(task_id: str | None = None, **_: Any) -> None:
    if task_id is not None:
        HEARTBEAT.end(task_id)


def connect_heartbeat() -> None:
    """Beat for training and score-chunk tasks of this worker process (Celery task_prerun/task_postrun)."""
    task_prerun.connect(_on_prerun, weak=False, dispatch_uid="inferq-heartbeat-prerun")
    task_postrun.connect(_on_postrun, weak=False, dispatch_uid="inferq-heartbeat-postrun")
