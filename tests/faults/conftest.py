"""Fault-injection stack: our own PostgreSQL and redis-server (append-only) on spare ports, real worker processes."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from shared import jobs as jobstore
from shared.celery_app import CLASSIFY_TASK, make_celery
from shared.db import make_engine, make_sessionmaker, session_scope, upgrade_database
from shared.embedded import EmbeddedRedis, free_port, wait_port
from shared.registry import parse_ref, register_version
from shared.settings import Settings
from shared.storage import LocalBlobStore
from tests.faults.checker import Checker
from tests.integration.conftest import REPO, model_artifact, wait_until  # noqa: F401  (fixture re-export)
from worker.inference import FAULT_POISON_MODEL

# Short limits so each fault heals in seconds: visibility > hard limit > soft limit, running lease > hard limit.
FAST = {
    "visibility_timeout": 20,
    "task_time_limit": 10,
    "task_soft_time_limit": 8,
    "queued_lease_s": 3.0,
    "reconcile_interval_s": 1.0,
    "running_lease_s": 15.0,
    "max_attempts": 3,
    "worker_concurrency": 8,
    "max_batch": 64,
    "max_batch_wait_ms": 5.0,
    "fault_injection": True,  # test-only hook: the poison model kills its worker
}
ENV_FIELDS = (
    "data_dir", "visibility_timeout", "task_time_limit", "task_soft_time_limit", "queued_lease_s",
    "reconcile_interval_s", "running_lease_s", "max_attempts", "worker_concurrency", "max_batch",
    "max_batch_wait_ms", "fault_injection",
)  # fmt: skip


def fault_env(settings: Settings) -> dict[str, str]:
    """Environment that gives a child process exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
    for name in ENV_FIELDS:
        value = getattr(settings, name)
        env[f"INFERQ_{name.upper()}"] = ("1" if value else "0") if isinstance(value, bool) else str(value)
    env.update(
        INFERQ_DATABASE_URL=settings.resolved_database_url,
        INFERQ_REDIS_URL=settings.broker_url(),
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
    )
    return env


class PgServer:
    """A PostgreSQL cluster (initdb once per session) that tests may stop with `-m immediate` and start again."""

    def __init__(self) -> None:
        initdb = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        if not initdb:
            pytest.skip("no PostgreSQL binaries under /usr/lib/postgresql")
        # PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` user
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        root = Path(tempfile.mkdtemp(prefix="inferq-faultpg-"))
        if self.as_user:
            shutil.chown(root, "postgres")
        self.root, self.bindir, self.data, self.port = root, initdb[-1].parent, root / "pgdata", free_port()
        self.sock = root
        subprocess.run(
            [*self.as_user, str(self.bindir / "initdb"), "-D", str(self.data), "--auth=trust", "--username=postgres"],
            check=True,
            capture_output=True,
        )
        self.start()

    @property
    def admin_url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args], check=True, capture_output=True
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._ctl("-w", "-l", str(self.sock / "pg.log"), "-o", opts, "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-w", "-m", mode, "stop")

    def restart_immediate(self) -> None:
        """Crash-stop (no checkpoint, like a power cut of the server process) and start again (crash recovery)."""
        self.stop("immediate")
        self.start()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL cluster for the fault session, on a spare loopback port (removed afterwards)."""
    server = PgServer()
    yield server
    server.stop("fast")
    shutil.rmtree(server.root, ignore_errors=True)


class RedisServer(EmbeddedRedis):
    """Our own redis-server with an append-only file; kill -9 and restart it, with or without its data."""

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def restart(self, *, empty: bool = False) -> None:
        if empty:
            for p in self.workdir.iterdir():
                if p.name.startswith("appendonly") or p.suffix == ".rdb":
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
        self.start()

    def queue_length(self, queue: str = "inference") -> int:
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            return int(client.llen(queue))  # type: ignore[arg-type]
        finally:
            client.close()


class FaultWorker:
    """`python -m inferq worker --queues inference --beat` as a subprocess in its own process group."""

    def __init__(self, settings: Settings, name: str) -> None:
        self.settings, self.log_path = settings, settings.data_dir / f"worker-{name}.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "inferq", "worker", "--queues", "inference", "--beat", "--loglevel", "INFO"]
        self.proc = subprocess.Popen(
            cmd, env=fault_env(settings), cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            os.killpg(self.proc.pid, sig)

    def kill9(self) -> None:
        """kill -9 the worker (threads pool: one process) and its embedded beat."""
        self.signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()

    def stop(self, timeout: float = 30) -> None:
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            self.proc.wait()
        self.log.close()


class FaultStack:
    """PostgreSQL database + redis-server + workers + submission helpers for one fault test."""

    def __init__(self, settings: Settings, pg: PgServer, redis: RedisServer) -> None:
        self.settings, self.pg, self.redis = settings, pg, redis
        self.engine = make_engine(settings)
        self.sessions = make_sessionmaker(self.engine)
        self.store = LocalBlobStore(settings.blob_dir)
        self.celery = make_celery(settings)
        self.workers: list[FaultWorker] = []
        self.accepted: list[uuid.UUID] = []
        self.checker = Checker(self.engine)
        self.image = _png()

    # --- workers ------------------------------------------------------------------------------------------
    def start_worker(self, wait: bool = True) -> FaultWorker:
        w = FaultWorker(self.settings, f"{len(self.workers)}")
        self.workers.append(w)
        if wait:
            self.wait_worker_ready(w)
        return w

    def wait_worker_ready(self, w: FaultWorker, timeout: float = 120) -> None:
        def ready() -> bool:
            if not w.alive():
                raise AssertionError(f"worker exited with {w.proc.returncode}:\n{w.output()[-3000:]}")
            return " ready." in w.output()

        wait_until(ready, timeout, "the worker to be ready", interval=0.1)

    @property
    def worker(self) -> FaultWorker:
        return self.workers[-1]

    # --- submission -----------------------------------------------------------------------------------------
    def submit(self, n: int, *, model: str = "mnist-cnn", chunk: int = 250) -> list[uuid.UUID]:
        """The fast path of POST /v1/jobs: store input, insert job+item, commit, then publish and mark dispatched."""
        ref, ids = str(parse_ref(model)), []
        for start in range(0, n, chunk):
            with session_scope(self.sessions) as session:
                batch = [
                    jobstore.create_classify_job(
                        session=session,
                        store=self.store,
                        uploads=[jobstore.Upload("d.png", self.image)],
                        model_ref=ref,
                        top_k=1,
                    ).id
                    for _ in range(min(chunk, n - start))
                ]
            self.accepted.extend(batch)  # committed: accepted (a 202 would be answered now)
            ids.extend(batch)
            for job_id in batch:  # like the API: publish after commit, then record the dispatch (one row each)
                try:
                    self.celery.send_task(CLASSIFY_TASK, args=[str(job_id)])
                except Exception:  # the reconciler dispatches it
                    continue
                with session_scope(self.sessions) as session:
                    jobstore.mark_dispatched(session, [job_id])
        return ids

    # --- observation --------------------------------------------------------------------------------------
    def done_items(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM job_items WHERE status <> 'pending'")).scalar_one())

    def fault_mark(self) -> tuple[float, int]:
        """Call right before injecting a fault: (when, items done so far)."""
        return time.monotonic(), self.done_items()

    def recovery_after(self, mark: tuple[float, int], timeout: float = 180) -> float:
        """Seconds from the fault until the stack completes work it must have started after the fault: more items
        done than were in flight (worker concurrency), or every accepted job terminal (a probe job makes sure)."""
        t_fault, before = mark
        self.submit(1)  # a probe: new work after the fault

        def recovered() -> bool:
            try:
                return self.done_items() > before + self.settings.worker_concurrency or not self.checker.nonterminal(
                    self.accepted
                )
            except sa.exc.OperationalError:  # the database is still coming back
                return False

        wait_until(recovered, timeout, "the stack to serve again after the fault", interval=0.1)
        return time.monotonic() - t_fault

    def wait_progress(self, at_least: int, timeout: float = 120) -> None:
        wait_until(lambda: self.done_items() >= at_least, timeout, f"{at_least} items done", interval=0.05)

    def quiesce(self, timeout: float = 240) -> None:
        """Wait (with a deadline, without failing) until every accepted job is terminal."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.checker.nonterminal(self.accepted):
            time.sleep(0.25)

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        self.engine.dispose()


def _png() -> bytes:
    from inferq.samples import as_user_photo, mnist_sample

    buf = io.BytesIO()
    as_user_photo(mnist_sample(7, 0)).save(buf, format="PNG")
    return buf.getvalue()


def build_stack(root: Path, pg: PgServer, artifact: Path, **overrides: Any) -> tuple[FaultStack, str]:
    """A new database on `pg`, a fresh redis-server (append-only) and the model registered as mnist-cnn and
    fault-poison; returns the stack and the database name (workers are started by the caller)."""
    name = f"faults_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(pg.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    redis = RedisServer(root / "redis", free_port(), appendonly=True).start()
    settings = Settings(
        data_dir=root,
        database_url=pg.admin_url.rsplit("/", 1)[0] + "/" + name,
        redis_url=redis.url,
        **{**FAST, **overrides},  # type: ignore[arg-type]
    )
    upgrade_database(settings)
    target = root / "models" / "mnist-cnn" / "1" / "model.keras"
    target.parent.mkdir(parents=True)
    shutil.copy(artifact, target)
    engine = make_engine(settings)
    with session_scope(make_sessionmaker(engine)) as session:
        for model in ("mnist-cnn", FAULT_POISON_MODEL):
            register_version(
                session,
                name=model,
                format="keras",
                artifact_uri="models/mnist-cnn/1/model.keras",
                size_bytes=target.stat().st_size,
                aliases=("production",),
            )
    engine.dispose()
    return FaultStack(settings, pg, redis), name


def drop_stack(stack: FaultStack, name: str) -> None:
    """Stop the workers and redis-server, and drop the database (starting PostgreSQL again if a test left it down)."""
    stack.close()
    stack.redis.stop()
    if not wait_port("127.0.0.1", stack.pg.port, 1):
        stack.pg.start()
    admin = sa.create_engine(stack.pg.admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def fault_stack(tmp_path: Path, pg_server: PgServer, model_artifact: Path) -> Iterator[FaultStack]:  # noqa: F811
    """A new database and a fresh redis-server (append-only) for one test; workers are started by the test."""
    stack, name = build_stack(tmp_path, pg_server, model_artifact)
    yield stack
    drop_stack(stack, name)


@pytest.fixture
def report(capsys: pytest.CaptureFixture[str]) -> Any:
    """Print a fault line past pytest's capture (and keep it in tests/faults' log file for CI)."""

    def emit(line: str) -> None:
        with capsys.disabled():
            print("\n" + line)
        log = Path(os.environ.get("INFERQ_FAULT_REPORT", "/tmp/inferq-faults.txt"))
        with log.open("a") as f:
            f.write(line + "\n")

    return emit
