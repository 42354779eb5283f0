"""The bulk lane's own consumer inside a worker process that also serves interactive work.

Celery gives a worker process one consumer: one prefetch window and one thread pool for all its queues. Bulk
scoring chunks published all at once (a 60,000-image job is 118 messages) fill that window and the pool's FIFO
queue, so a classify job that arrives next waits for chunks reserved before it: seconds, not milliseconds. Polling
the interactive queue first (`queue_order_strategy: priority`) cannot help once the window is full.

So when a worker serves the bulk lane together with other lanes, Celery's consumer does not take the bulk queue.
INFERQ_SCORE_PARALLEL_CHUNKS threads here each hold their own broker connection with a prefetch of one message:

- the bulk lane never reserves more than that many chunks, and never holds a thread Celery's tasks need;
- each message runs through Celery's own request machinery (`celery.worker.request.Request.execute`): the same
  task, the same task_prerun/task_postrun signals (the running-lease heartbeat), retries published by the task with
  their countdown honoured here, and the acknowledgement after the chunk (late acks: a chunk whose worker dies is
  delivered again after the visibility timeout; at a warm shutdown a chunk in progress finishes, and one waiting
  for its retry's countdown is handed back to the queue);
- Flower sees each chunk through task-received/-started/-succeeded/-failed events;
- the threads run at a lower CPU priority (INFERQ_BULK_NICE, Linux), so the scheduler gives the cores to
  interactive work first whenever both are runnable. What no priority can rank is the interpreter lock the threads
  share with classify jobs (docs/lanes.md measures it): INFERQ_BULK_PROCESS runs the lane as a child process
  instead (BulkProcess below), with a lock and model threads of its own.

`celery inspect active` does not list the chunks running here; Flower's task list and the job's progress do.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime
from typing import Any

from billiard.einfo import ExceptionInfo
from celery import Celery
from celery.exceptions import Retry
from celery.worker.request import Request
from kombu import Connection, Message, Queue

log = logging.getLogger(__name__)


class BrokerLost(ConnectionError):
    """A message could not be acknowledged: this connection's channel still counts it as reserved, so with a
    prefetch of one it would never take another. The consumer starts over on a new connection."""


class DedicatedLane:
    """`threads` consumers of one queue, each with a prefetch of one message, running its tasks in place."""

    def __init__(self, app: Celery, queue: str, *, threads: int, hostname: str, nice: int = 0) -> None:
        self.app, self.queue, self.hostname, self.nice = app, queue, hostname, nice
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._serve, name=f"lane-{queue}-{i}", daemon=True) for i in range(threads)
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()
        log.info("lane %s: %d consumer threads of its own (nice %d)", self.queue, len(self._threads), self.nice)

    def stop(self) -> None:
        """Take no new message; a chunk in progress finishes (see join)."""
        self._stop.set()

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    @property
    def alive(self) -> int:
        return sum(t.is_alive() for t in self._threads)

    def _serve(self) -> None:
        _lower_priority(self.nice)
        while not self._stop.is_set():
            try:
                with self.app.connection_for_read() as conn:
                    self._consume(conn)
            except Exception:  # noqa: BLE001 - the broker went away: reconnect, as Celery's consumer does
                log.warning("lane %s: consumer lost its broker connection; reconnecting", self.queue, exc_info=True)
                self._stop.wait(1.0)

    def _consume(self, conn: Connection) -> None:
        conn.ensure_connection(max_retries=1)
        events = self.app.events.Dispatcher(conn.clone(), hostname=self.hostname, enabled=True)
        try:
            queue = Queue(self.queue)
            with conn.Consumer([queue], accept=["json"], prefetch_count=1, callbacks=[self._run_one(conn, events)]):
                while not self._stop.is_set():
                    try:
                        conn.drain_events(timeout=1.0)
                    except TimeoutError:
                        continue
        finally:
            events.close()

    def _run_one(self, conn: Connection, events: Any) -> Any:
        def on_message(body: Any, message: Message) -> None:
            if not self._wait_for_eta(message):
                return  # shutting down before a retry's countdown ended: the message goes back to the queue
            task = self.app.tasks.get(message.headers.get("task", ""))
            if task is None:
                log.error("lane %s: unknown task %r; message dropped", self.queue, message.headers.get("task"))
                message.ack()
                return
            request = Request(
                message,
                on_ack=message.ack_log_error,
                on_reject=message.reject_log_error,
                app=self.app,
                hostname=self.hostname,
                task=task,
                connection_errors=conn.connection_errors,
            )
            info = {"uuid": request.id, "name": task.name, "args": request.argsrepr, "kwargs": request.kwargsrepr}
            events.send("task-received", retries=message.headers.get("retries", 0), **info)
            events.send("task-started", uuid=request.id)
            began = time.monotonic()
            try:
                result = request.execute()
            except Exception as exc:  # noqa: BLE001 - trace_task catches task errors; this is the machinery's
                log.exception("lane %s: task %s crashed outside its trace", self.queue, request.id)
                result = ExceptionInfo((type(exc), exc, exc.__traceback__))
            if isinstance(result, ExceptionInfo):  # the task raised (a retry is a Retry exception)
                kind = "task-retried" if isinstance(result.exception, Retry) else "task-failed"
                events.send(kind, uuid=request.id, exception=repr(result.exception))
            else:
                events.send("task-succeeded", uuid=request.id, result=repr(result), runtime=time.monotonic() - began)
            if not message.acknowledged:  # the broker went away before the ack: the message comes back to the queue
                raise BrokerLost(f"could not acknowledge task {request.id}")

        return on_message

    def _wait_for_eta(self, message: Message) -> bool:
        """Hold a retried task until its countdown ends; False when the worker stops first."""
        eta = message.headers.get("eta")
        if not eta:
            return True
        when = datetime.fromisoformat(eta)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        delay = (when - datetime.now(UTC)).total_seconds()
        return delay <= 0 or not self._stop.wait(delay)


def _lower_priority(nice: int) -> None:
    """Raise this thread's nice value (Linux schedules threads on their own; elsewhere a no-op)."""
    if nice <= 0 or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except OSError as exc:
        log.warning("could not lower the bulk lane's CPU priority: %s", exc)


class BulkProcess:
    """The bulk lane as a child process (INFERQ_BULK_PROCESS): `argv` is an `inferq worker --lanes bulk ...` command.
    It is started again if it exits while this worker runs (after 1 s, doubling to 30 s while it keeps failing);
    stop() sends it SIGTERM (its warm shutdown) and waits."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv, self.env = argv, env
        self.proc: subprocess.Popen[bytes] | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="bulk-process", daemon=True)

    def start(self) -> None:
        self._spawn()
        self._thread.start()

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env)  # noqa: S603 - our own command line
        log.info("lane bulk: child worker process %d (%s)", self.proc.pid, " ".join(self.argv[-6:]))

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            assert self.proc is not None
            began = time.monotonic()
            code = self.proc.wait()
            if self._stop.is_set():
                return
            backoff = 1.0 if time.monotonic() - began > 60 else min(30.0, backoff * 2)
            log.warning("lane bulk: child worker exited with %s; starting it again in %.0f s", code, backoff)
            if self._stop.wait(backoff):
                return
            self._spawn()

    def stop(self, timeout: float) -> int | None:
        """SIGTERM the child and wait up to `timeout` s (then SIGKILL); its exit code."""
        self._stop.set()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def watch_parent(parent_pid: int, interval_s: float = 1.0) -> None:
    """In a child worker: stop it (SIGTERM to itself) when the worker that started it is gone, so a killed parent
    leaves no orphan behind."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval_s)
        log.warning("parent worker %d is gone; stopping", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()
