"""The worker context keeps a bounded number of micro-batchers: the least recently used are closed."""

from __future__ import annotations

import numpy as np
import pytest

from shared.db.engine import session_scope
from shared.db.models import ModelVersion
from shared.registry.versions import register_version
from tests.worker.conftest import ContextFactory
from worker.batcher import SinkFn
from worker.context import WorkerContext


class Constant:
    """A fake model: ten classes, always class 0."""

    num_classes = 10

    def predict(self, x: np.ndarray) -> np.ndarray:
        out = np.zeros((len(x), 10), dtype=np.float32)
        out[:, 0] = 1.0
        return out


@pytest.fixture
def ctx(make_ctx: ContextFactory) -> WorkerContext:
    """A SQLite context that keeps at most 2 models (and batchers) per process."""
    return make_ctx(model_cache_size=2)


def no_sink(_mv: ModelVersion, _model: object) -> SinkFn:
    """A sink factory whose sink records nothing (these tests only make batchers)."""
    return lambda *_args: None


def versions(ctx: WorkerContext, n: int) -> list[ModelVersion]:
    """n registered versions of model m."""
    out = []
    with session_scope(ctx.sessions) as session:
        for _ in range(n):
            mv = register_version(session, name="m", format="keras", artifact_uri="unused", size_bytes=1)
            session.flush()
            session.expunge(mv)
            out.append(mv)
    return out


def test_batchers_are_bounded_and_evicted_ones_closed(ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch) -> None:
    """A third version closes the least recently used batcher; the recently used one survives."""
    v1, v2, v3 = versions(ctx, 3)
    monkeypatch.setattr(ctx, "model", lambda mv: Constant())
    b1, b2 = ctx.batcher(v1, no_sink), ctx.batcher(v2, no_sink)
    assert ctx.batcher(v1, no_sink) is b1  # v1 is now the most recently used
    b3 = ctx.batcher(v3, no_sink)
    assert list(ctx._batchers) == [v1.id, v3.id]
    assert not b2._thread.is_alive() and b1._thread.is_alive() and b3._thread.is_alive()
