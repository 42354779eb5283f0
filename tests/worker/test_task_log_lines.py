"""Celery's per-task INFO lines are off unless INFERQ_LOG_EACH_TASK; failures are logged either way."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery import Celery
from celery.app.trace import build_tracer

from tests.factories import make_settings
from worker.celery_app import quiet_task_lines

LOGGERS = ("celery.worker.strategy", "celery.app.trace")


@pytest.fixture(autouse=True)
def restore_levels() -> Iterator[None]:
    before = {name: logging.getLogger(name).level for name in LOGGERS}
    yield
    for name, level in before.items():
        logging.getLogger(name).setLevel(level)


def _run(app: Celery, task_name: str) -> None:
    task = app.tasks[task_name]
    tracer = build_tracer(task.name, task, eager=True, propagate=False, app=app)  # reads the level, as a worker does
    tracer("id-1", (), {}, {"id": "id-1", "delivery_info": {}})


@pytest.mark.parametrize("each", [False, True])
def test_success_lines_only_when_asked_and_failures_always(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, each: bool
) -> None:
    quiet_task_lines(make_settings(tmp_path, log_each_task=each))
    app = Celery("t", set_as_current=False)

    @app.task(name=f"t.ok.{each}")
    def ok() -> int:
        return 1

    @app.task(name=f"t.broken.{each}")
    def broken() -> None:
        raise RuntimeError("boom")

    with caplog.at_level(logging.INFO):
        _run(app, f"t.ok.{each}")
        _run(app, f"t.broken.{each}")
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "celery.app.trace"]
    assert any(level == logging.ERROR and "boom" in text for level, text in lines)
    assert any("succeeded in" in text for _, text in lines) is each
