"""Flower runs with basic auth: generated and saved like the API key, and its HTTP API answers only with it."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from inferq.access import ensure_flower_auth
from shared.config.settings import Settings
from shared.runtime.embedded import free_port
from tests.integration.conftest import REPO, env_for, wait_until


@pytest.fixture(autouse=True)
def _no_flower_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a developer's FLOWER_BASIC_AUTH out of these tests."""
    monkeypatch.delenv("FLOWER_BASIC_AUTH", raising=False)


def test_generated_login_is_saved_private_and_reused(tmp_path: Path) -> None:
    """Without INFERQ_FLOWER_BASIC_AUTH a user:password is generated, saved 0600, and the same one comes back."""
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    first, created = ensure_flower_auth(settings)
    assert created and first.startswith("admin:") and len(first) > 20
    assert stat.S_IMODE(settings.flower_auth_file.stat().st_mode) == 0o600
    assert ensure_flower_auth(settings) == (first, False)


def test_configured_login_wins(tmp_path: Path) -> None:
    """INFERQ_FLOWER_BASIC_AUTH is used as given and nothing is written."""
    settings = Settings(_env_file=None, data_dir=tmp_path, flower_basic_auth="ops:s3cret")  # type: ignore[call-arg]
    assert ensure_flower_auth(settings) == ("ops:s3cret", False)
    assert not settings.flower_auth_file.exists()


def test_flowers_own_variable_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """FLOWER_BASIC_AUTH (the Kubernetes Secret's variable) is used when INFERQ_FLOWER_BASIC_AUTH is empty."""
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "k8s:from-secret")
    settings = Settings(_env_file=None, data_dir=tmp_path)  # type: ignore[call-arg]
    assert ensure_flower_auth(settings) == ("k8s:from-secret", False)
    assert not settings.flower_auth_file.exists()


@pytest.fixture
def flower(tmp_path: Path, redis_url: str) -> Iterator[tuple[str, str]]:
    """`inferq flower` on a free port with a login from the setting; yields (base URL, user:password)."""
    settings = Settings(_env_file=None, data_dir=tmp_path, redis_url=redis_url)  # type: ignore[call-arg]
    port, login = free_port(), "ops:correct-horse"
    env = dict(env_for(settings), INFERQ_FLOWER_BASIC_AUTH=login)
    log = open(tmp_path / "flower.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        [sys.executable, "-m", "inferq", "flower", "--port", str(port), "--address", "127.0.0.1"],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError((tmp_path / "flower.log").read_text()[-2000:])
        try:
            requests.get(f"{base}/healthcheck", timeout=1)
        except requests.ConnectionError:
            return False
        return True

    try:
        wait_until(up, 30, "Flower to listen")
        yield base, login
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
        log.close()


def test_flower_api_needs_the_login(flower: tuple[str, str]) -> None:
    """Flower's /api/workers is 401 without credentials and answers a JSON object with them; /metrics is open."""
    base, login = flower
    user, password = login.split(":", 1)
    assert requests.get(f"{base}/api/workers", timeout=5).status_code == 401
    assert requests.get(f"{base}/api/workers", auth=(user, "wrong"), timeout=5).status_code == 401
    resp = requests.get(f"{base}/api/workers", auth=(user, password), timeout=5)
    assert resp.status_code == 200
    assert isinstance(resp.json(), dict)
    assert requests.get(f"{base}/metrics", timeout=5).status_code == 200
