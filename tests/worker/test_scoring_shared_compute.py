"""Bulk forward passes take turns when the worker process also serves classify jobs (INFERQ_BULK_SHARED_PASSES).

TensorFlow has one pool of compute threads per process, so a classify job's pass queues behind every bulk pass
running at that moment; bench/shared_passes.py measures what taking turns is worth."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import worker.celery_app
from shared.config.settings import Settings
from shared.inputs.datasets import StoredItem
from worker import scoring


class Overlaps:
    """A model that counts how many of its forward passes run at the same moment."""

    num_classes = 10

    def __init__(self, meet: threading.Barrier | None = None) -> None:
        self.meet, self.running, self.most = meet, 0, 0
        self.lock = threading.Lock()

    def predict(self, x: np.ndarray) -> np.ndarray:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            if self.meet is not None:
                self.meet.wait()  # every thread's pass is in here at once, or this raises BrokenBarrierError
            else:
                time.sleep(0.03)
        finally:
            with self.lock:
                self.running -= 1
        return np.full((len(x), 10), 0.1, dtype=np.float32)


@pytest.fixture(autouse=True)
def no_gate() -> Iterator[None]:
    yield
    scoring.share_compute_with_interactive(0)  # the process-wide default: no limit


def score_in_threads(model: Overlaps, threads: int = 3) -> list[BaseException]:
    """Score a small chunk on each of `threads` threads, as the bulk lane's consumer threads do."""
    settings = Settings(score_batch=4)
    items = [StoredItem(i, str(i), None, pixels=np.full((28, 28), 200, dtype=np.uint8)) for i in range(8)]
    errors: list[BaseException] = []

    def run() -> None:
        try:
            rows = scoring.score_items(
                model, items, labels=[], top_k=1, batch=4, settings=settings, version_id=1, job_id=uuid.uuid4()
            )
            assert [r["status"] for r in rows.dicts()] == ["succeeded"] * len(items)
        except BaseException as exc:  # noqa: BLE001 - reported to the test's thread
            errors.append(exc)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(30)
    return errors


def test_with_a_limit_of_one_bulk_passes_never_overlap() -> None:
    scoring.share_compute_with_interactive(1)
    model = Overlaps()
    assert score_in_threads(model) == []
    assert model.most == 1


def test_without_a_limit_the_passes_of_parallel_chunks_overlap() -> None:
    """The control: the same three threads do run their passes at once when nothing limits them."""
    model = Overlaps(meet=threading.Barrier(3, timeout=10))
    assert score_in_threads(model) == []
    assert model.most == 3


def test_a_limit_of_two_lets_two_passes_run_at_once() -> None:
    scoring.share_compute_with_interactive(2)
    model = Overlaps()
    assert score_in_threads(model, threads=4) == []
    assert model.most == 2


@pytest.mark.parametrize(
    ("own_threads", "setting", "limited"),
    [(["bulk"], 1, True), ([], 1, False), (["bulk"], 0, False)],
    ids=["bulk-beside-classify", "bulk-only-or-no-bulk", "turned-off"],
)
def test_the_worker_limits_bulk_passes_only_when_its_bulk_threads_share_the_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, own_threads: list[str], setting: int, limited: bool
) -> None:
    """create_worker_app sets the limit when the bulk lane runs on threads beside Celery's (classify) consumer; a
    bulk-only worker, or one whose bulk child process has the lane, scores with no limit."""
    monkeypatch.setattr(worker.celery_app, "_serve_on_own_threads", lambda *a, **k: None)
    monkeypatch.setattr(worker.celery_app.worker_ready, "connect", lambda *a, **k: None)
    settings = Settings(bulk_shared_passes=setting, data_dir=tmp_path, metrics_enabled=False)
    worker.celery_app.create_worker_app(settings, own_consumer_queues=own_threads)
    assert (scoring._PASSES is not None) is limited
