"""Backpressure on the interactive lane: refuse new classify jobs while its backlog is past a named limit.

The depth is the LLEN of the lane's Redis lists (its queue of each job priority, kombu's priority sub-lists and
the pre-lanes `inference` queue), read at most once per INFERQ_LANE_DEPTH_CACHE_S per process: one pipelined round
trip now and then, not one per request.
An unreadable broker refuses nothing (the publish path already copes with it)."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from shared.config.errors import LaneFull
from shared.config.settings import Settings
from shared.runtime.celery_app import INFERENCE_QUEUE, interactive_queues
from shared.runtime.metrics import queue_keys

log = logging.getLogger(__name__)


class LaneGauge:
    """The interactive lane's ready messages, cached briefly; check() raises LaneFull past the limit."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.keys = [k for q in (*interactive_queues(settings), INFERENCE_QUEUE) for k in queue_keys(q)]
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._depth = 0
        self._redis: Any = None

    def depth(self) -> int:
        """Messages waiting in the lane (cached for INFERQ_LANE_DEPTH_CACHE_S); 0 if Redis cannot be read."""
        with self._lock:
            if time.monotonic() - self._read_at >= self.settings.lane_depth_cache_s:
                self._depth = self._read()
                self._read_at = time.monotonic()
            return self._depth

    def _read(self) -> int:
        import redis

        try:
            if self._redis is None:
                self._redis = redis.Redis.from_url(self.settings.broker_url(), socket_timeout=0.5)
            pipe = self._redis.pipeline(transaction=False)
            for key in self.keys:
                pipe.llen(key)
            return int(sum(pipe.execute()))
        except (redis.RedisError, OSError) as exc:
            log.warning("interactive lane depth unavailable (%s): not refusing jobs", exc)
            return 0

    def check(self) -> None:
        """Raise LaneFull (503 + Retry-After) when the lane holds more than INFERQ_INTERACTIVE_BACKLOG_MAX."""
        limit = self.settings.interactive_backlog_max
        if limit and (depth := self.depth()) >= limit:
            raise LaneFull(
                f"{depth} classify jobs are waiting in the interactive lane (INFERQ_INTERACTIVE_BACKLOG_MAX = "
                f"{limit}); new work would miss any reasonable deadline",
                retry_after_s=self.settings.lane_full_retry_after_s,
                limit_setting="INFERQ_INTERACTIVE_BACKLOG_MAX",
                limit=limit,
            )
