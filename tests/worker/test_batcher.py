"""The micro-batcher: grouping, bounds, routing of outputs, and failure isolation."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import numpy as np
import pytest

from worker.batcher import MicroBatcher


def row_sums(x: np.ndarray) -> np.ndarray:
    """A stand-in model: one output per input, identifying it."""
    return x.reshape(len(x), -1).sum(axis=1, keepdims=True)


class GatedModel:
    """A fake model whose first forward pass waits until the test opens the gate (so a queue builds up)."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.sizes: list[int] = []

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.entered.set()
        self.gate.wait(10)
        self.sizes.append(len(x))
        return row_sums(x)


@pytest.fixture
def gated() -> Iterator[tuple[GatedModel, MicroBatcher]]:
    model = GatedModel()
    batcher = MicroBatcher(model, max_batch=8, max_wait_s=0.005)
    yield model, batcher
    model.gate.set()
    batcher.close()


def test_each_request_gets_its_own_outputs_in_order() -> None:
    """Outputs are split back to the request that sent the inputs, in input order."""
    batcher = MicroBatcher(row_sums, max_batch=64, max_wait_s=0.001)
    futures = [batcher.submit(np.full((k, 2), float(k))) for k in (1, 3, 2)]
    results = [f.result(5) for f in futures]
    batcher.close()
    assert [r.ravel().tolist() for r in results] == [[2.0], [6.0, 6.0, 6.0], [4.0, 4.0]]


def test_queued_requests_are_grouped_up_to_max_batch(gated: tuple[GatedModel, MicroBatcher]) -> None:
    """Requests that queue while the model is busy share the next forward pass, never above max_batch."""
    model, batcher = gated
    first = batcher.submit(np.ones((1, 2)))
    assert model.entered.wait(5)
    rest = [batcher.submit(np.full((1, 2), float(i))) for i in range(20)]
    model.gate.set()
    for f in [first, *rest]:
        f.result(5)
    assert model.sizes[0] == 1
    assert max(model.sizes) == 8
    assert sum(model.sizes) == 21
    assert batcher.stats.mean_batch > 1


def test_a_large_request_is_split_into_max_batch_passes() -> None:
    """One request bigger than max_batch runs as several passes and still gets all outputs."""
    sizes: list[int] = []

    def model(x: np.ndarray) -> np.ndarray:
        sizes.append(len(x))
        return row_sums(x)

    batcher = MicroBatcher(model, max_batch=4, max_wait_s=0.001)
    out = batcher.submit(np.arange(10, dtype=float).reshape(10, 1)).result(5)
    batcher.close()
    assert out.ravel().tolist() == list(range(10))
    assert sizes == [4, 4, 2]


def test_a_failing_pass_fails_its_requests_and_the_batcher_lives_on() -> None:
    """A model error reaches every request of that pass; the next pass works."""
    calls = {"n": 0}

    def flaky(x: np.ndarray) -> np.ndarray:
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("boom")
        return row_sums(x)

    batcher = MicroBatcher(flaky, max_batch=8, max_wait_s=0.001)
    with pytest.raises(RuntimeError, match="boom"):
        batcher.submit(np.ones((2, 2))).result(5)
    assert batcher.submit(np.ones((1, 2))).result(5).ravel().tolist() == [2.0]
    batcher.close()


def test_wrong_number_of_outputs_is_an_error() -> None:
    """A model that returns fewer outputs than inputs fails the requests instead of misrouting results."""
    batcher = MicroBatcher(lambda x: x[:-1], max_batch=8, max_wait_s=0.001)
    with pytest.raises(RuntimeError, match="outputs"):
        batcher.submit(np.ones((3, 1))).result(5)
    batcher.close()


def test_sink_sees_each_pass_with_its_size() -> None:
    """The sink is called once per pass with the requests, their outputs and the pass size."""
    seen: list[tuple[int, int]] = []
    batcher = MicroBatcher(
        row_sums, max_batch=8, max_wait_s=0.001, sink=lambda reqs, outs, size: seen.append((len(reqs), size))
    )
    batcher.submit(np.ones((3, 1)), tag="a").result(5)
    batcher.close()
    assert seen == [(1, 3)]


def test_sink_failure_fails_the_requests() -> None:
    """If results cannot be recorded, the requests fail rather than report success."""

    def sink(*_args: object) -> None:
        raise OSError("database down")

    batcher = MicroBatcher(row_sums, max_batch=8, max_wait_s=0.001, sink=sink)
    with pytest.raises(OSError, match="database down"):
        batcher.submit(np.ones((1, 1))).result(5)
    batcher.close()


def test_empty_request_resolves_immediately() -> None:
    """Submitting zero inputs returns zero outputs without a forward pass."""
    batcher = MicroBatcher(row_sums, max_batch=8, max_wait_s=0.001)
    assert len(batcher.submit(np.ones((0, 2))).result(1)) == 0
    assert batcher.stats.passes == 0
    batcher.close()


def test_a_lone_request_goes_at_once_whatever_the_max_wait() -> None:
    """Nothing else pending: the pass starts at once, not after max_wait (no fixed delay)."""
    batcher = MicroBatcher(row_sums, max_batch=64, max_wait_s=2.0)
    try:
        for _ in range(3):
            started = time.monotonic()
            batcher.submit(np.ones((1, 2))).result(5)
            assert time.monotonic() - started < 0.5
        assert batcher.stats.passes == 3 and batcher.stats.largest == 1
    finally:
        batcher.close()


def test_the_wait_grows_only_while_work_keeps_arriving(gated: tuple[GatedModel, MicroBatcher]) -> None:
    """Requests pending after a pass mean work is arriving: the next pass waits for the ones still coming
    (a few ms apart), then goes; a pass after the stream stopped does not wait."""
    model, _ = gated
    batcher = MicroBatcher(model, max_batch=64, max_wait_s=0.5)
    try:
        first = batcher.submit(np.ones((1, 2)))
        assert model.entered.wait(5)
        pending = [batcher.submit(np.ones((1, 2))) for _ in range(3)]
        model.gate.set()
        late = []
        for _ in range(2):
            time.sleep(0.005)
            late.append(batcher.submit(np.ones((1, 2))))
        for f in [first, *pending, *late]:
            f.result(5)
        started = time.monotonic()
        batcher.submit(np.ones((1, 2))).result(5)
        assert time.monotonic() - started < 0.25  # well under max_wait: nothing was arriving
        assert model.sizes == [1, 5, 1]
    finally:
        batcher.close()
