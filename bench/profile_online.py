"""Profile mode of bench/online.py: where one single-image classify job's CPU goes, stage by stage.

It runs the real components in one process, one job at a time: the Flask app (through its test client, so
routing, request parsing, auth and the JSON answer run as they do under gunicorn), the real blob store, the
real database and Redis (the job's message is published to the inference queue and read back from it with
kombu), and a real WorkerContext with its micro-batcher thread and model. Each stage is a wrapped function
whose *exclusive* CPU time (time.thread_time, per thread, nested stages subtracted) is added up; what no stage
covers (Flask/werkzeug plumbing, SQLAlchemy session set-up, Celery's own dispatch in a real worker) is printed
as "unattributed". Not measured here: gunicorn's socket handling and Celery's task dispatch in a worker.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from shared.config.settings import Settings

API_ROOT, POLL_ROOT, TASK_ROOT = "HTTP parse + response (POST)", "poll (GET, terminal job)", "worker task glue"
ORDER = [
    API_ROOT,
    "auth (API-key lookup)",
    "image check",
    "DB inserts (job + items, commit)",
    "blob write",
    "publish",
    "worker receive (kombu get + decode + ack)",
    "claim (DB)",
    TASK_ROOT,
    "blob read",
    "preprocess",
    "batch wait (CPU)",
    "batch assembly",
    "forward pass",
    "result write (DB)",
    "notify",
    POLL_ROOT,
]


class StageClock:
    """Exclusive CPU seconds per stage, per thread (a stage's time excludes the stages nested in it)."""

    def __init__(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._undo: list[tuple[Any, str, Any]] = []

    def _stack(self) -> list[list[Any]]:
        if not hasattr(self._local, "stack"):
            self._local.stack = []
        stack: list[list[Any]] = self._local.stack
        return stack

    def current(self) -> str | None:
        """The innermost stage running on this thread."""
        stack = self._stack()
        return stack[-1][0] if stack else None

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        stack = self._stack()
        stack.append([name, 0.0])
        t0 = time.thread_time()
        try:
            yield
        finally:
            spent = time.thread_time() - t0
            _, nested = stack.pop()
            with self._lock:
                self.cpu[name] += spent - nested
            if stack:
                stack[-1][1] += spent

    def wrap(self, owner: Any, attr: str, name: str | Callable[[str | None], str]) -> None:
        """Time every call of owner.attr as stage `name` (or name(current stage)); skipped if absent."""
        original = getattr(owner, attr, None)
        if original is None:
            return
        clock = self

        def timed(*args: Any, **kwargs: Any) -> Any:
            with clock.stage(name(clock.current()) if callable(name) else name):
                return original(*args, **kwargs)

        self._undo.append((owner, attr, original))
        setattr(owner, attr, timed)

    def restore(self) -> None:
        for owner, attr, original in reversed(self._undo):
            setattr(owner, attr, original)
        self._undo.clear()

    def reset(self) -> None:
        with self._lock:
            self.cpu.clear()


def _commit_stage(current: str | None) -> str:
    """A commit belongs to the stage whose transaction it ends: the API's insert, the worker's claim, or a result."""
    if current in (API_ROOT, "DB inserts (job + items, commit)"):
        return "DB inserts (job + items, commit)"
    return "claim (DB)" if current == TASK_ROOT else "result write (DB)"


def instrument(clock: StageClock, store: Any) -> None:
    """Wrap the functions each stage consists of (before the app and the worker context are built)."""
    import sqlalchemy.orm

    import api.auth
    import api.jobs
    import api.uploads
    import shared.jobs.lifecycle
    import worker.inference
    from shared.runtime.notify import FinishedPublisher
    from worker.batcher import MicroBatcher
    from worker.context import WorkerContext

    clock.wrap(api.auth, "_principal_for", "auth (API-key lookup)")
    clock.wrap(api.uploads, "check_image", "image check")
    clock.wrap(shared.jobs.lifecycle, "create_classify_job", "DB inserts (job + items, commit)")
    clock.wrap(sqlalchemy.orm.Session, "commit", _commit_stage)
    clock.wrap(type(store), "put", "blob write")
    clock.wrap(type(store), "get", "blob read")
    clock.wrap(api.jobs, "dispatch", "publish")
    clock.wrap(shared.jobs.lifecycle, "claim_first_attempt", "claim (DB)")
    clock.wrap(worker.inference, "prepare", "preprocess")
    clock.wrap(MicroBatcher, "_collect", "batch wait (CPU)")
    clock.wrap(MicroBatcher, "_serve", "batch assembly")
    clock.wrap(MicroBatcher, "_forward", "forward pass")
    clock.wrap(WorkerContext, "commit_results", "result write (DB)")
    clock.wrap(FinishedPublisher, "publish", "notify")


def profile_jobs(settings: Settings, headers: dict[str, str], images: list[bytes], jobs: int) -> dict[str, float]:
    """Run `jobs` single-image jobs one at a time through the real path; ms of CPU per job per stage."""
    from kombu import Connection

    from api.app import create_app
    from shared.config.status import Priority
    from shared.inputs.storage import make_store
    from shared.runtime.celery_app import classify_queue
    from worker.context import WorkerContext
    from worker.inference import run_classify

    clock = StageClock()
    instrument(clock, make_store(settings))
    try:
        app, ctx = create_app(settings), WorkerContext(settings)
        client = app.test_client()
        with Connection(settings.broker_url()) as conn:
            inbox = conn.SimpleQueue(classify_queue(settings, Priority.NORMAL))  # where a normal job is published
            one = _job_runner(clock, client, headers, inbox, ctx, run_classify)
            for i in range(min(20, jobs)):  # warm-up: model load, first connections, caches
                one(images[i % len(images)])
            clock.reset()
            cpu0 = time.process_time()
            for i in range(jobs):
                one(images[i % len(images)])
            total = time.process_time() - cpu0
            inbox.close()
        ctx.close()
    finally:
        clock.restore()
    table = {name: clock.cpu.get(name, 0.0) * 1000 / jobs for name in ORDER}
    table["unattributed"] = total * 1000 / jobs - sum(table.values())
    table["total CPU"] = total * 1000 / jobs
    return table


def _job_runner(clock: StageClock, client: Any, headers: dict[str, str], inbox: Any, ctx: Any, run: Any) -> Any:
    def one(png: bytes) -> None:
        import io

        with clock.stage(API_ROOT):
            r = client.post("/v1/jobs", data={"images": (io.BytesIO(png), "d.png")}, headers=headers)
        assert r.status_code == 202, r.get_data(as_text=True)
        job_id = r.get_json()["id"]
        with clock.stage("worker receive (kombu get + decode + ack)"):
            msg = inbox.get(timeout=10)
            args = msg.payload[0]
            msg.ack()
        assert args == [job_id], (args, job_id)
        with clock.stage(TASK_ROOT):
            status = run(ctx, uuid.UUID(job_id)).status
        with clock.stage(POLL_ROOT):
            polled = client.get(f"/v1/jobs/{job_id}", headers=headers).get_json()
        assert polled["status"] == status == "succeeded", (status, polled["status"])

    return one


def print_table(before: dict[str, float] | None, after: dict[str, float], labels: tuple[str, str]) -> None:
    """The stage table (ms of CPU per job), with a before column when two runs are given."""
    head = f"{'stage':<44}" + (f"{labels[0]:>12}" if before else "") + f"{labels[1]:>12}"
    print(head)
    for name in [*ORDER, "unattributed", "total CPU"]:
        row = f"{name:<44}" + (f"{before.get(name, 0.0):12.2f}" if before else "") + f"{after[name]:12.2f}"
        print(row)
