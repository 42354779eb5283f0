"""Shared fixtures: real PostgreSQL and Redis for integration tests, found or started, never the shared data."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from shared.runtime.embedded import EmbeddedRedis, free_port, port_open

LOCAL_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
LOCAL_REDIS = ("127.0.0.1", 6379)


def _pg_reachable(url: str) -> bool:
    try:
        engine = sa.create_engine(url, connect_args={"connect_timeout": 3})
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return True
    except Exception:
        return False


def _temp_pg_cluster(tmp: Path) -> tuple[str, subprocess.Popen[bytes]] | None:
    """A throwaway PostgreSQL cluster from the machine's binaries (initdb), when no server is reachable."""
    candidates = (
        sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb")) if Path("/usr/lib/postgresql").exists() else []
    )
    initdb = shutil.which("initdb") or (str(candidates[-1]) if candidates else None)
    if not initdb:
        return None
    bindir = Path(initdb).parent
    data, port = tmp / "pgdata", free_port()
    user = ["--username=postgres"]
    subprocess.run([initdb, "-D", str(data), "--auth=trust", *user], check=True, capture_output=True)
    proc = subprocess.Popen(
        [
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-k",
            str(tmp),
            "-c",
            "listen_addresses=127.0.0.1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and proc.poll() is None:
        if _pg_reachable(url):
            return url, proc
        time.sleep(0.1)
    proc.kill()
    return None


@pytest.fixture(scope="session")
def pg_admin_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A PostgreSQL server: TEST_DATABASE_URL, else the local one, else a temporary cluster the tests start."""
    url = os.environ.get("TEST_DATABASE_URL") or (LOCAL_PG if _pg_reachable(LOCAL_PG) else None)
    if url:
        yield url
        return
    started = _temp_pg_cluster(tmp_path_factory.mktemp("pg"))
    if started is None:
        pytest.skip("no PostgreSQL: set TEST_DATABASE_URL or install PostgreSQL (initdb) to run integration tests")
    url, proc = started
    yield url
    proc.terminate()
    proc.wait(10)


@contextmanager
def fresh_database(pg_admin_url: str) -> Iterator[str]:
    """A new, empty database on the PostgreSQL server (its URL), dropped afterwards."""
    name = f"inferq_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield pg_admin_url.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh, empty database on the PostgreSQL server, dropped afterwards."""
    with fresh_database(pg_admin_url) as url:
        yield url


@pytest.fixture(scope="session")
def redis_server_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A Redis server: TEST_REDIS_URL, else the local one, else the bundled redis-server started for the tests."""
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        yield url.rsplit("/", 1)[0] if url.count("/") > 2 else url
        return
    if port_open(*LOCAL_REDIS):
        yield f"redis://{LOCAL_REDIS[0]}:{LOCAL_REDIS[1]}"
        return
    with EmbeddedRedis(tmp_path_factory.mktemp("redis"), free_port(), appendonly=False) as server:
        yield server.url.rsplit("/", 1)[0]


@pytest.fixture(scope="session")
def redis_db(redis_server_url: str) -> Iterator[int]:
    """A Redis database number (1-15) claimed for this test session, so parallel runs never share one."""
    import redis

    for db in range(1, 16):
        client = redis.Redis.from_url(f"{redis_server_url}/{db}")
        if client.set("inferq:test-session-lock", os.getpid(), nx=True, ex=7200):
            yield db
            client.delete("inferq:test-session-lock")
            client.close()
            return
        client.close()
    pytest.skip("every Redis database 1-15 is claimed by other test sessions")


@pytest.fixture
def redis_url(redis_server_url: str, redis_db: int) -> Iterator[str]:
    """This session's Redis database, emptied (but for the session's claim) before and after each test."""
    import redis

    url = f"{redis_server_url}/{redis_db}"
    client = redis.Redis.from_url(url)

    def empty() -> None:
        keys = [k for k in client.scan_iter(count=1000) if k != b"inferq:test-session-lock"]
        if keys:
            client.delete(*keys)

    empty()
    yield url
    empty()
    client.close()


# --- scheduling: the long modules first ------------------------------------------------------------------------------
# pytest-xdist's loadscope hands out one module at a time, in this order (pyproject.toml sets --no-loadscope-reorder,
# which would otherwise put the modules with the most tests first and leave the long single-test ones as the run's
# tail). The longest modules go first (from `python3 dev.py test --durations=30`). The first module that needs the
# trained default model (tests/integration/conftest.py: model_artifact, built once per run) trains it; the modules
# given out while it trains are ones that need no model (the fault suite, the database-only integration tests), so
# no process sits waiting for it. Then the rest of the integration tests, then everything else, which fills the gaps.
SCHEDULE = (
    ("tests/integration/test_schemathesis.py",),
    ("tests/faults/test_fault_worker_kill.py",),
    ("tests/integration/test_scoring_e2e.py",),  # trains the default model
    ("tests/faults/", "tests/integration/test_idempotency_pg.py", "tests/integration/test_webhook_delivery.py"),
    ("tests/integration/test_web_browser.py", "tests/integration/test_cli_up.py"),
    ("tests/integration/",),
)


def _module_rank(path: str) -> int:
    return next((rank for rank, group in enumerate(SCHEDULE) if path.startswith(group)), len(SCHEDULE))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the modules for the scheduler (a stable sort: each module's tests keep their order)."""
    items.sort(key=lambda item: _module_rank(item.nodeid.split("::", 1)[0]))
