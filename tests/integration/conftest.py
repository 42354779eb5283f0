"""The real stack for integration tests: PostgreSQL, Redis, a worker subprocess, and the API in-process."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.config.settings import Settings
from shared.db.engine import make_engine, make_sessionmaker, session_scope, upgrade_database
from shared.registry.versions import register_version
from tests.access import use_key
from tests.built import built_once

REPO = Path(__file__).resolve().parents[2]


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll `predicate` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def env_for(settings: Settings) -> dict[str, str]:
    """Environment that makes a child process use exactly these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
    env.update(
        {
            "INFERQ_DATA_DIR": str(settings.data_dir),
            "INFERQ_DATABASE_URL": settings.resolved_database_url,
            "INFERQ_REDIS_URL": settings.broker_url(),
            "INFERQ_QUEUED_LEASE_S": str(settings.queued_lease_s),
            "INFERQ_RECONCILE_INTERVAL_S": str(settings.reconcile_interval_s),
            "INFERQ_MAX_BATCH_WAIT_MS": str(settings.max_batch_wait_ms),
            "INFERQ_MAX_BATCH": str(settings.max_batch),
            "INFERQ_WORKER_CONCURRENCY": str(settings.worker_concurrency),
            "INFERQ_CHUNK_SIZE": str(settings.chunk_size),
            "INFERQ_ARRAY_CHUNK_SIZE": str(settings.array_chunk_size),
            "INFERQ_WORKER_METRICS_PORT": str(settings.worker_metrics_port),
            "INFERQ_WEBHOOK_ALLOW_CIDRS": settings.webhook_allow_cidrs,
            "INFERQ_BULK_PROCESS": str(settings.bulk_process).lower(),
            "INFERQ_BULK_NICE": str(settings.bulk_nice),
            "INFERQ_BULK_METRICS_PORT": str(settings.bulk_metrics_port),
            "PYTHONUNBUFFERED": "1",
            "TF_CPP_MIN_LOG_LEVEL": "2",
        }
    )
    return env


@pytest.fixture(scope="session")
def model_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (briefly trained) MNIST CNN .keras file, trained once per test run in a subprocess (and shared by the
    run's xdist workers)."""

    def train(data_dir: Path) -> None:
        subprocess.run(
            [sys.executable, "-m", "inferq", "train-default", "--epochs", "2"],
            env=env_for(Settings(data_dir=data_dir)),
            check=True,
            capture_output=True,
            timeout=300,
        )

    return built_once(tmp_path_factory, "default-model", train) / "models" / "mnist-cnn" / "1" / "model.keras"


CONVERT = (
    "import sys, keras\n"
    "from worker.optimize import float32_tflite\n"
    "model = keras.models.load_model(sys.argv[1], compile=False)\n"
    "open(sys.argv[2], 'wb').write(float32_tflite(model))\n"
)


@pytest.fixture(scope="session")
def served_model(tmp_path_factory: pytest.TempPathFactory, model_artifact: Path) -> Path:
    """The same trained CNN as a float32 .tflite file (converted once per test run), which the stack's workers
    serve through LiteRT: they start without TensorFlow (~7 CPU-s less per worker start). The Keras serving path
    is covered end to end by the tests that train, by the web app's and `inferq up`'s tests, and by
    tests/worker/test_runtime.py."""

    def convert(folder: Path) -> None:
        subprocess.run(
            [sys.executable, "-c", CONVERT, str(model_artifact), str(folder / "model.tflite")],
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
            cwd=REPO,
            check=True,
            capture_output=True,
            timeout=300,
        )

    return built_once(tmp_path_factory, "default-model-tflite", convert) / "model.tflite"


def register_artifact_copy(settings: Settings, source: Path, *, version: int, aliases: tuple[str, ...] = ()) -> None:
    """Copy a .keras or .tflite artifact into the data dir and register it as mnist-cnn:<version> (the next
    version)."""
    relative = f"models/mnist-cnn/{version}/model{source.suffix}"
    target = settings.data_dir / relative
    target.parent.mkdir(parents=True)
    shutil.copy(source, target)
    engine = make_engine(settings)
    with session_scope(make_sessionmaker(engine)) as session:
        mv = register_version(
            session,
            name="mnist-cnn",
            format=source.suffix.lstrip("."),
            artifact_uri=relative,
            size_bytes=target.stat().st_size,
            aliases=aliases,
        )
        assert mv.version == version
    engine.dispose()


def make_stack_settings(data_dir: Path, database_url: str, redis_url: str, model_artifact: Path) -> Settings:
    """Settings on real PostgreSQL and Redis (the database migrated), with the trained model (.keras or .tflite)
    registered as mnist-cnn@production."""
    settings = Settings(
        data_dir=data_dir,
        database_url=database_url,
        redis_url=redis_url,
        queued_lease_s=1.0,
        reconcile_interval_s=0.5,
        worker_concurrency=8,
    )
    upgrade_database(settings)
    register_artifact_copy(settings, model_artifact, version=1, aliases=("production",))
    return settings


@pytest.fixture
def stack_settings(tmp_path: Path, pg_url: str, redis_url: str, served_model: Path) -> Settings:
    """Settings on real PostgreSQL and Redis, with the trained model (as TFLite) registered as
    mnist-cnn@production."""
    return make_stack_settings(tmp_path, pg_url, redis_url, served_model)


class WorkerProcess:
    """`inferq worker` as a real subprocess; its log is kept for failure messages."""

    def __init__(self, settings: Settings, *args: str) -> None:
        self.log_path = settings.data_dir / f"worker-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        cmd = [sys.executable, "-m", "inferq", "worker", "--lanes", "interactive,bulk,ops", *args]
        self.proc = subprocess.Popen(
            cmd,
            env=env_for(settings),
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self, timeout: float = 90) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            return " ready." in self.output()

        wait_until(ready, timeout, "the worker to be ready")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def start_worker(stack_settings: Settings) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker subprocesses on the test stack; all are stopped at teardown."""
    started: list[WorkerProcess] = []

    def start(*args: str, ready: bool = True) -> WorkerProcess:
        w = WorkerProcess(stack_settings, *args)
        started.append(w)
        if ready:
            w.wait_ready()
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture
def api_client(stack_settings: Settings) -> Iterator[Any]:
    """The real API app (in-process) on the test stack, with a client that sends an API key."""
    from api.app import create_app

    app = create_app(stack_settings)
    use_key(app)  # the client sends an API key of the tenant "default" with every scope
    yield app.test_client()
    app.extensions["inferq"].engine.dispose()
