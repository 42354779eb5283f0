"""The command line as a user runs it: `inferq up` on embedded defaults, `classify`, `jobs`, `models`, Ctrl-C."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import requests

from shared.config.settings import Settings
from shared.db.engine import upgrade_database
from shared.runtime.embedded import free_port
from tests.integration.conftest import REPO, register_artifact_copy, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def run_cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "inferq", *args], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_every_command() -> None:
    """`inferq --help` names every command, and each command has its own help."""
    env = dict(os.environ)
    out = run_cli("--help", env=env).stdout
    commands = [
        "up", "api", "worker", "flower", "migrate", "train-default", "classify", "jobs", "models", "keys", "top",
    ]  # fmt: skip
    assert all(f"  {c} " in out for c in commands), out
    assert "--gpu" in run_cli("worker", "--help", env=env).stdout


def test_up_serves_classify_and_stops_cleanly_on_ctrl_c(tmp_path: Path, model_artifact: Path) -> None:
    """`inferq up` on embedded defaults makes and prints a local API key (which the CLI then sends), serves a
    classify, Flower behind the printed login, the API's and the worker's metrics (which `inferq top` reads), and
    Ctrl-C stops every process. The data dir already holds the run's default model (model_artifact: trained once by
    `inferq train-default`, the very command `up` runs), as on any `up` after the first: training it again here
    would add two minutes of CPU and test nothing new."""
    api_port, flower_port, redis_port, metrics_port = free_port(), free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
    settings = Settings(_env_file=None, data_dir=tmp_path / "var")  # what `up` builds from embedded defaults
    upgrade_database(settings)
    register_artifact_copy(settings, model_artifact, version=1, aliases=("production",))
    env.update(
        INFERQ_DATA_DIR=str(tmp_path / "var"),
        INFERQ_API_PORT=str(api_port),
        INFERQ_FLOWER_PORT=str(flower_port),
        INFERQ_EMBEDDED_REDIS_PORT=str(redis_port),
        INFERQ_WORKER_METRICS_PORT=str(metrics_port),
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="2",
        COLUMNS="200",
    )
    log = open(tmp_path / "up.log", "w")  # noqa: SIM115
    up = subprocess.Popen(
        [sys.executable, "-m", "inferq", "up"],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_until(
            lambda: "inferq is up" in (tmp_path / "up.log").read_text() or up.poll() is not None,
            300,
            "the stack to come up",
        )
        assert up.poll() is None, (tmp_path / "up.log").read_text()
        banner = (tmp_path / "up.log").read_text()
        assert "model mnist-cnn is already registered" in banner
        assert f"http://127.0.0.1:{api_port}/docs" in banner and f"http://127.0.0.1:{flower_port}" in banner
        assert f"Web app    http://127.0.0.1:{api_port}/" in banner
        key_file = tmp_path / "var" / "api-key"
        key = key_file.read_text().strip()
        assert key in banner and "Authorization: Bearer $(cat" in banner and key_file.stat().st_mode & 0o077 == 0
        assert requests.get(f"http://127.0.0.1:{api_port}/v1/jobs", timeout=10).status_code == 401
        sample = tmp_path / "var" / "samples" / "digit-7.png"
        url = f"http://127.0.0.1:{api_port}"
        done = run_cli("classify", str(sample), "--api-url", url, env=env)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "succeeded" in done.stdout and "digit-7.png" in done.stdout
        assert "classify" in run_cli("jobs", "--api-url", url, env=env).stdout
        assert "mnist-cnn" in run_cli("models", "--api-url", url, env=env).stdout
        flower = f"http://127.0.0.1:{flower_port}"
        login = (tmp_path / "var" / "flower-auth").read_text().strip()
        assert f"(login {login})" in banner
        assert requests.get(f"{flower}/api/workers", timeout=10).status_code == 401
        auth = tuple(login.split(":", 1))

        def flower_workers() -> list[str]:
            resp = requests.get(f"{flower}/api/workers?refresh=1", auth=auth, timeout=30)
            assert resp.status_code == 200, resp.text[:300]
            return list(resp.json())  # worker names, once Flower's inspect reaches the worker

        wait_until(flower_workers, 60, "Flower's API to list the worker")
        worker_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        assert f"{url}/metrics" in banner and worker_metrics in banner
        assert "inferq_batch_size_count" in requests.get(worker_metrics, timeout=10).text
        top = run_cli("top", "--once", "--api-url", url, "--worker-url", worker_metrics, env=env)
        assert top.returncode == 0 and "interactive" in top.stdout and "workers 1" in top.stdout, top.stdout
        children = psutil.Process(up.pid).children(recursive=True)
        assert len(children) >= 4  # redis, api, worker, flower
    finally:
        os.killpg(up.pid, signal.SIGINT)
        code = up.wait(60)
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]
    assert "stopped" in (tmp_path / "up.log").read_text()
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
