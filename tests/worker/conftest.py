"""Worker test fixtures: a per-process WorkerContext on a migrated SQLite database."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from shared.config.settings import Settings
from tests.factories import migrate
from worker.context import WorkerContext

ContextFactory = Callable[..., WorkerContext]


@pytest.fixture
def make_ctx(tmp_path: Path) -> Iterator[ContextFactory]:
    """Build WorkerContexts (settings overrides as keywords) on SQLite in tmp_path; all are closed afterwards."""
    made: list[WorkerContext] = []

    def make(**overrides: Any) -> WorkerContext:
        settings = Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0", **overrides)
        migrate(settings)
        made.append(WorkerContext(settings))
        return made[-1]

    yield make
    for context in made:
        context.close()
