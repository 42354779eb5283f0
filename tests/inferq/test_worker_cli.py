"""`inferq worker`: which queues Celery's consumer gets, and where the bulk lane runs (threads of its own, a child
process with INFERQ_BULK_PROCESS, or Celery itself in a bulk-only worker). Celery is not started: its argv is read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import worker.celery_app
import worker.lanes
from inferq.cli import main


class FakeApp:
    def __init__(self, own: Any) -> None:
        self.own, self.argv = list(own), None

    def worker_main(self, argv: list[str]) -> None:
        self.argv = argv


class FakeChild:
    made: list[FakeChild] = []

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv, self.env, self.events = argv, env, []
        FakeChild.made.append(self)

    def start(self) -> None:
        self.events.append("start")

    def stop(self, timeout: float) -> None:
        self.events.append("stop")


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Any:
    apps: list[FakeApp] = []

    def create(settings: Any, *, own_consumer_queues: Any = ()) -> FakeApp:
        apps.append(FakeApp(own_consumer_queues))
        return apps[-1]

    monkeypatch.setattr(worker.celery_app, "create_worker_app", create)
    monkeypatch.setattr(worker.lanes, "BulkProcess", FakeChild)
    FakeChild.made.clear()

    def invoke(*args: str, **env: str) -> tuple[FakeApp, dict[str, str]]:
        base = {"INFERQ_DATA_DIR": str(tmp_path), "INFERQ_GPU": "", **env}
        result = CliRunner().invoke(main, ["worker", *args], env=base)
        assert result.exit_code == 0, result.output
        app = apps[-1]
        assert app.argv is not None
        return app, dict(a.removeprefix("--").split("=", 1) for a in app.argv[1:] if "=" in a)

    return invoke


def test_bulk_beside_other_lanes_runs_on_threads_of_its_own(run: Any) -> None:
    app, argv = run("--lanes", "interactive,bulk,ops")
    assert argv["queues"] == "interactive-high,interactive,inference,interactive-low,ops"
    assert app.own == ["bulk"] and not FakeChild.made


def test_a_bulk_only_worker_takes_a_few_chunks_and_reserves_none_behind_them(run: Any) -> None:
    app, argv = run("--lanes", "bulk", INFERQ_SCORE_PARALLEL_CHUNKS="3")
    assert argv["queues"] == "bulk" and app.own == []
    assert argv["concurrency"] == "3" and argv["prefetch-multiplier"] == "1"
    assert argv["hostname"].startswith("cpu-bulk@")


def test_bulk_process_starts_a_niced_child_and_stops_it_with_the_worker(run: Any) -> None:
    app, argv = run("--lanes", "interactive,bulk,ops", INFERQ_BULK_PROCESS="true", INFERQ_BULK_NICE="7")
    assert "bulk" not in argv["queues"].split(",") and app.own == []
    (child,) = FakeChild.made
    assert child.argv[child.argv.index("--lanes") + 1] == "bulk"
    assert child.argv[child.argv.index("--nice") + 1] == "7" and "--parent-pid" in child.argv
    assert child.env["INFERQ_WORKER_METRICS_PORT"] == "0"  # no second /metrics on the parent's port
    assert child.events == ["start", "stop"]


def test_the_bulk_child_serves_metrics_on_a_port_of_its_own(run: Any) -> None:
    run("--lanes", "interactive,bulk,ops", INFERQ_BULK_PROCESS="true", INFERQ_BULK_METRICS_PORT="9911")
    (child,) = FakeChild.made
    assert child.env["INFERQ_WORKER_METRICS_PORT"] == "9911"
