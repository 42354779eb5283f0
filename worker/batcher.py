"""An adaptive micro-batcher: images from concurrent tasks meet in one forward pass.

The policy (docs/lanes.md): a pass takes the first request plus whatever is already pending, at once. Only when
more work was pending (requests are actually arriving) does it wait for more, each time for at most about two
recent inter-arrival gaps, never past max_wait after the first request came, and never beyond max_batch images. A
lone request therefore never waits (no fixed delay), and under load batches also grow by themselves: requests
arriving during a forward pass are all pending when it ends."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.runtime import metrics

log = logging.getLogger(__name__)

PredictFn = Callable[[np.ndarray], np.ndarray]
# Called on the batcher thread after each forward pass with the requests served and their outputs.
SinkFn = Callable[[Sequence["Request"], Sequence[np.ndarray], int], None]


@dataclass
class Request:
    """Some images of one task waiting for a forward pass; `future` gets their outputs in order."""

    inputs: np.ndarray
    tag: Any = None
    future: Future[np.ndarray] = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


@dataclass
class BatchStats:
    """Counters of forward passes, for logs and benchmarks."""

    passes: int = 0
    images: int = 0
    largest: int = 0

    @property
    def mean_batch(self) -> float:
        return self.images / self.passes if self.passes else 0.0


class MicroBatcher:
    """One thread runs the model; submit() queues inputs and returns a Future of their outputs."""

    def __init__(
        self,
        predict: PredictFn,
        *,
        max_batch: int,
        max_wait_s: float,
        sink: SinkFn | None = None,
        name: str = "batcher",
    ) -> None:
        self.predict, self.sink = predict, sink
        self._size = metrics.BATCH_SIZE.labels("classify")
        self.max_batch, self.max_wait_s = max_batch, max_wait_s
        self.stats = BatchStats()
        self._queue: queue.Queue[Request | None] = queue.Queue()
        self._carry: Request | None = None
        self._gap = max_wait_s  # EWMA of the time between two submits (seconds): how fast work is arriving
        self._last_submit = 0.0
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, inputs: np.ndarray, tag: Any = None) -> Future[np.ndarray]:
        """Queue a stack of inputs (N, ...) for the next forward passes."""
        req = Request(inputs=inputs, tag=tag)
        if len(inputs) == 0:
            req.future.set_result(inputs[:0])
        else:
            self._note_arrival(req.enqueued)
            self._queue.put(req)
        return req.future

    def _note_arrival(self, now: float) -> None:
        """Update the inter-arrival estimate (approximate under concurrent submits: it only sizes a wait)."""
        if self._last_submit:
            self._gap = 0.8 * self._gap + 0.2 * min(now - self._last_submit, self.max_wait_s)
        self._last_submit = now

    def close(self, timeout: float = 5.0) -> None:
        """Stop the thread after the queued work is done."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _collect(self) -> list[Request] | None:
        """Block for a first request, then take what is pending; wait for more only while work keeps arriving."""
        first = self._carry or self._queue.get()
        self._carry = None
        if first is None:
            return None
        batch, size = [first], len(first.inputs)
        deadline = first.enqueued + self.max_wait_s
        while size < self.max_batch:
            nxt = self._next(deadline, arriving=len(batch) > 1)
            if nxt is None:
                break
            if size + len(nxt.inputs) > self.max_batch and size > 0:
                self._carry = nxt  # it opens the next pass: never split a small request across passes
                break
            batch.append(nxt)
            size += len(nxt.inputs)
        return batch

    def _next(self, deadline: float, *, arriving: bool) -> Request | None:
        """A pending request at once; else, if requests are arriving, one that comes within ~2 gaps (<= deadline)."""
        try:
            nxt = self._queue.get_nowait()
        except queue.Empty:
            wait = min(2 * self._gap, deadline - time.monotonic()) if arriving else 0.0
            if wait <= 0:
                return None
            try:
                nxt = self._queue.get(timeout=wait)
            except queue.Empty:
                return None
        if nxt is None:  # close(): put the sentinel back for _collect's next call
            self._queue.put(None)
        return nxt

    def _run(self) -> None:
        while (batch := self._collect()) is not None:
            self._serve(batch)

    def _serve(self, batch: list[Request]) -> None:
        stacked = np.concatenate([r.inputs for r in batch])
        if metrics.enabled:
            metrics.BATCH_WAIT.observe(time.monotonic() - batch[0].enqueued)
        try:
            outputs = np.concatenate([self._forward(chunk) for chunk in self._chunks(stacked)])
            if len(outputs) != len(stacked):
                raise RuntimeError(f"model returned {len(outputs)} outputs for {len(stacked)} inputs")
            bounds = np.cumsum([0] + [len(r.inputs) for r in batch])
            parts = [outputs[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            if self.sink is not None:
                self.sink(batch, parts, len(stacked))
        except BaseException as exc:  # every request learns of the failure; the thread lives on
            log.exception("forward pass of %d images failed", len(stacked))
            for r in batch:
                if not r.future.done():
                    r.future.set_exception(exc)
            return
        for r, part in zip(batch, parts, strict=True):
            r.future.set_result(part)

    def _chunks(self, stacked: np.ndarray) -> list[np.ndarray]:
        return [stacked[i : i + self.max_batch] for i in range(0, len(stacked), self.max_batch)]

    def _forward(self, chunk: np.ndarray) -> np.ndarray:
        out = self.predict(chunk)
        if metrics.enabled:
            self._size.observe(len(chunk))
        self.stats.passes += 1
        self.stats.images += len(chunk)
        self.stats.largest = max(self.stats.largest, len(chunk))
        return out
