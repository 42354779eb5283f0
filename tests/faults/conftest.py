"""Fault-injection stack: our own PostgreSQL and redis-server (append-only) on spare ports, real worker processes.

Speed without skipping anything: one PostgreSQL cluster per session and a migrated template database (each test
gets a copy in ~0.2 s), a tiny TFLite model (tiny_model.py) so workers start without TensorFlow (~2 s instead of
~10 s), and short leases, limits and intervals through the settings (FAST).
"""

from __future__ import annotations

import contextlib
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from shared.config.settings import Settings
from shared.db.engine import make_engine, make_sessionmaker, session_scope, upgrade_database
from shared.db.models import utcnow
from shared.inputs.storage import LocalBlobStore
from shared.jobs import lifecycle as jobstore
from shared.registry.versions import parse_ref, register_version
from shared.runtime.celery_app import CLASSIFY_TASK, celery_config, make_celery
from shared.runtime.embedded import EmbeddedRedis, free_port, wait_port
from tests.faults.checker import Checker
from tests.faults.tiny_model import write as write_tiny_model
from tests.integration.conftest import REPO, wait_until
from worker.inference import FAULT_POISON_MODEL

# Short limits so each fault heals in seconds: visibility > hard limit > soft limit, running lease > hard limit.
FAST: dict[str, Any] = {
    "visibility_timeout": 10,
    "task_time_limit": 5,
    "task_soft_time_limit": 4,
    "queued_lease_s": 2.0,
    "reconcile_interval_s": 0.5,
    "running_lease_s": 6.0,
    "max_attempts": 3,
    "worker_concurrency": 8,
    "max_batch": 64,
    "max_batch_wait_ms": 5.0,
    "chunk_size": 100,
    "array_chunk_size": 100,
    "benchmark_repeats": 1,
    "fault_injection": True,  # test-only hook: the poison model kills its worker
    "auth_enabled": False,  # the API test client submits as the default tenant
}
ENV_FIELDS = (
    "data_dir", "visibility_timeout", "task_time_limit", "task_soft_time_limit", "queued_lease_s",
    "reconcile_interval_s", "running_lease_s", "max_attempts", "worker_concurrency", "max_batch",
    "max_batch_wait_ms", "chunk_size", "array_chunk_size", "benchmark_repeats", "train_time_limit", "fault_injection",
)  # fmt: skip
MODEL_DIR = "models/mnist-cnn/1"


def pytest_configure(config: pytest.Config) -> None:
    """Register `fault_settings`: settings overrides for one test's stack."""
    config.addinivalue_line("markers", "fault_settings(**overrides): settings of this fault test's stack")


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
        return self.url("postgres")

    def url(self, database: str) -> str:
        """SQLAlchemy URL of one database of this cluster."""
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bindir / "pg_ctl"), "-D", str(self.data), *args], check=True, capture_output=True
        )

    def start(self) -> None:
        opts = f"-p {self.port} -k {self.sock} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        self._ctl("-w", "-l", str(self.sock / "pg.log"), "-o", opts, "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-w", "-m", mode, "stop")

    def admin(self, sql: str) -> None:
        """Run one statement outside a transaction (CREATE/DROP DATABASE)."""
        engine = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
        try:
            with engine.connect() as conn:
                conn.execute(sa.text(sql))
        finally:
            engine.dispose()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    """One PostgreSQL cluster for the fault session, on a spare loopback port (removed afterwards)."""
    server = PgServer()
    yield server
    server.stop("fast")
    shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def fault_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny TFLite model every fault worker serves (written without TensorFlow)."""
    return write_tiny_model(tmp_path_factory.mktemp("fault-model") / "model.tflite")


def make_template(pg: PgServer, model: Path) -> str:
    """A migrated database with `model` (.tflite or .keras) registered as mnist-cnn and fault-poison, for stacks
    to copy; returns its name."""
    name = f"faults_template_{uuid.uuid4().hex[:8]}"
    pg.admin(f'CREATE DATABASE "{name}"')
    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="inferq-faulttpl-")), database_url=pg.url(name))
    upgrade_database(settings)
    engine = make_engine(settings)
    with session_scope(make_sessionmaker(engine)) as session:
        for registered in ("mnist-cnn", FAULT_POISON_MODEL):
            register_version(
                session,
                name=registered,
                format=model.suffix.lstrip("."),
                artifact_uri=f"{MODEL_DIR}/model{model.suffix}",
                size_bytes=model.stat().st_size,
                aliases=("production",),
            )
    engine.dispose()
    shutil.rmtree(settings.data_dir, ignore_errors=True)
    return name


@pytest.fixture(scope="session")
def fault_template(pg_server: PgServer, fault_model: Path) -> str:
    """The session's template database (the tiny TFLite model registered): each test copies it."""
    return make_template(pg_server, fault_model)


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

    def queue_length(self, queue: str = "interactive") -> int:
        import redis

        client = redis.Redis.from_url(self.url)
        try:
            return int(client.llen(queue))  # type: ignore[arg-type]
        finally:
            client.close()


class FaultWorker:
    """`inferq worker --lanes ... --beat` as a subprocess in its own process group (TensorFlow loads only if the
    worker trains or serves a .keras model)."""

    def __init__(self, settings: Settings, name: str, *, lanes: str) -> None:
        self.settings, self.log_path = settings, settings.data_dir / f"worker-{name}.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        entry = ["-m", "tests.faults.worker_main"]  # the real CLI, plus the optional chunk delay of test_fault_drain
        cmd = [sys.executable, *entry, "worker", "--lanes", lanes, "--beat", "--loglevel", "INFO"]
        self.proc = subprocess.Popen(
            cmd, env=fault_env(settings), cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Signal the worker's whole process group: its embedded beat is a forked child that outlives a crashed
        worker process (the poison model's os._exit), so the group is signalled even when the worker is gone."""
        with contextlib.suppress(ProcessLookupError):  # every process of the group has exited
            os.killpg(self.proc.pid, sig)

    def kill9(self) -> None:
        """kill -9 the worker (threads pool: one process) and its embedded beat."""
        self.signal(signal.SIGKILL)
        self.proc.wait()
        self.log.close()


@dataclass
class Outage:
    """When a fault was injected and how many items were done by then."""

    at: float
    done: int


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
    def start_worker(self, wait: bool = True, *, lanes: str = "interactive,bulk,ops") -> FaultWorker:
        w = FaultWorker(self.settings, f"{len(self.workers)}", lanes=lanes)
        self.workers.append(w)
        if wait:
            self.wait_worker_ready(w)
        return w

    def wait_worker_ready(self, w: FaultWorker, timeout: float = 120) -> None:
        def ready() -> bool:
            if not w.alive():
                raise AssertionError(f"worker exited with {w.proc.returncode}:\n{w.output()[-3000:]}")
            return " ready." in w.output()

        wait_until(ready, timeout, "the worker to be ready", interval=0.05)

    @property
    def worker(self) -> FaultWorker:
        return self.workers[-1]

    # --- submission -----------------------------------------------------------------------------------------
    def submit(self, n: int, *, model: str = "mnist-cnn", chunk: int = 250) -> list[uuid.UUID]:
        """The fast path of POST /v1/jobs: store input, insert job+item stamped dispatched, commit, then publish;
        a failed publish clears the stamp (the reconciler takes the job at once)."""
        ref, ids = str(parse_ref(model)), []
        for start in range(0, n, chunk):
            with session_scope(self.sessions) as session:
                jobs = [
                    jobstore.create_classify_job(
                        session=session,
                        store=self.store,
                        uploads=[jobstore.Upload("d.png", self.image)],
                        model_ref=ref,
                        top_k=1,
                    )
                    for _ in range(min(chunk, n - start))
                ]
                for job in jobs:
                    job.dispatched_at = utcnow()
                batch = [job.id for job in jobs]
            self.accepted.extend(batch)  # committed: accepted (a 202 would be answered now)
            ids.extend(batch)
            for job_id in batch:  # like the API: publish after commit
                try:
                    self.celery.send_task(CLASSIFY_TASK, args=[str(job_id)])
                except Exception:  # the reconciler dispatches it
                    with session_scope(self.sessions) as session:
                        jobstore.mark_undispatched(session, job_id)
        return ids

    # --- observation --------------------------------------------------------------------------------------
    def done_items(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM job_items WHERE status <> 'pending'")).scalar_one())

    def fault_mark(self) -> Outage:
        """Call right before injecting a fault: when, and items done so far."""
        return Outage(time.monotonic(), self.done_items())

    @property
    def in_flight(self) -> int:
        """Messages one worker may hold at once (running and prefetched): work that can finish without recovery."""
        return int(celery_config(self.settings)["worker_prefetch_multiplier"]) * self.settings.worker_concurrency

    def recovery_after(self, mark: Outage, timeout: float = 120) -> float:
        """Seconds from the fault until the stack completes work it must have started after the fault: more items
        done than a worker held at the fault (running and prefetched), or every accepted job terminal (a probe job
        makes sure)."""
        self.submit(1)  # a probe: new work after the fault

        def recovered() -> bool:
            try:
                return self.done_items() > mark.done + self.in_flight or not self.checker.nonterminal(self.accepted)
            except sa.exc.OperationalError:  # the database is still coming back
                return False

        wait_until(recovered, timeout, "the stack to serve again after the fault", interval=0.05)
        return time.monotonic() - mark.at

    def wait_progress(self, at_least: int, timeout: float = 120) -> None:
        wait_until(lambda: self.done_items() >= at_least, timeout, f"{at_least} items done", interval=0.02)

    def quiesce(self, timeout: float = 180) -> None:
        """Wait (with a deadline, without failing) until every accepted job is terminal."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.checker.nonterminal(self.accepted):
            time.sleep(0.1)

    def close(self) -> None:
        """The test is over: kill -9 what is left of the workers and their beats (a graceful stop only costs time)."""
        for w in self.workers:
            w.kill9()
        self.engine.dispose()


def _png() -> bytes:
    from inferq.samples import as_user_photo, mnist_sample

    buf = io.BytesIO()
    as_user_photo(mnist_sample(7, 0)).save(buf, format="PNG")
    return buf.getvalue()


def build_stack(root: Path, pg: PgServer, model: Path, template: str, **overrides: Any) -> tuple[FaultStack, str]:
    """A copy of the template database on `pg` (made by make_template with the same model), a fresh redis-server
    (append-only) and the model file in place; returns the stack and the database name (workers are started by
    the caller)."""
    name = f"faults_{uuid.uuid4().hex[:10]}"
    redis = RedisServer(root / "redis", free_port(), appendonly=True)
    settings = Settings(data_dir=root, database_url=pg.url(name), redis_url=redis.url, **{**FAST, **overrides})
    target = root / MODEL_DIR / f"model{model.suffix}"
    target.parent.mkdir(parents=True)
    shutil.copy(model, target)
    pg.admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    redis.start()
    try:
        return FaultStack(settings, pg, redis), name
    except BaseException:  # no stray redis-server when the stack cannot be built
        redis.stop()
        raise


def drop_stack(stack: FaultStack, name: str) -> None:
    """Stop the workers and redis-server, and drop the database (starting PostgreSQL again if a test left it down)."""
    stack.close()
    stack.redis.stop()
    if not wait_port("127.0.0.1", stack.pg.port, 1):
        stack.pg.start()
    stack.pg.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fault_stack(
    request: pytest.FixtureRequest, tmp_path: Path, pg_server: PgServer, fault_model: Path, fault_template: str
) -> Iterator[FaultStack]:
    """A copy of the template database and a fresh redis-server (append-only) for one test; workers are started
    by the test. Settings overrides come from `@pytest.mark.fault_settings(...)`."""
    marker = request.node.get_closest_marker("fault_settings")
    stack, name = build_stack(tmp_path, pg_server, fault_model, fault_template, **(marker.kwargs if marker else {}))
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
