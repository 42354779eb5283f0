"""Job-finished notifications over Redis pub/sub, so a long poll wakes at once instead of re-reading the database.

The database stays the source of truth: a notification only says "look again". Publishing is best effort and a
waiter also re-reads the job every INFERQ_WAIT_POLL_INTERVAL_S, so a lost message (or no Redis) delays an answer by
at most that interval and never changes it.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import redis

log = logging.getLogger(__name__)

CHANNEL = "inferq:jobs:finished"


class FinishedPublisher:
    """Publishes the ids of jobs that reached a terminal state (one message per batch, ids comma-separated)."""

    def __init__(self, url: str) -> None:
        self._client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)

    def publish(self, job_ids: Iterable[uuid.UUID]) -> None:
        """Tell waiting long polls that these jobs are done; failures are logged and ignored."""
        payload = ",".join(str(j) for j in job_ids)
        if not payload:
            return
        try:
            self._client.publish(CHANNEL, payload)
        except redis.RedisError as exc:
            log.debug("could not publish finished jobs (long polls fall back to re-reading): %s", exc)

    def close(self) -> None:
        self._client.close()


class FinishedWaiter:
    """One subscriber thread per process; each waiting request holds an Event for its job id."""

    def __init__(self, url: str, *, retry_s: float = 1.0) -> None:
        self._url, self._retry_s = url, retry_s
        self._events: dict[str, set[threading.Event]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._subscribed = threading.Event()  # set while Redis has confirmed the subscription
        self._thread: threading.Thread | None = None

    @contextmanager
    def watch(self, job_id: uuid.UUID, *, ready_within_s: float = 0.0) -> Iterator[threading.Event]:
        """An Event that is set when a notification names `job_id` (register before re-reading the job).

        The first watch of a process starts the subscriber thread: waiting up to `ready_within_s` for Redis to
        confirm the subscription keeps a job that finishes in the next moments from being announced to nobody
        (its waiter would then learn of it only at the next fallback re-read)."""
        self._ensure_thread()
        if ready_within_s > 0:
            self._subscribed.wait(ready_within_s)
        event, key = threading.Event(), str(job_id)
        with self._lock:
            self._events.setdefault(key, set()).add(event)
        try:
            yield event
        finally:
            with self._lock:
                waiting = self._events.get(key)
                if waiting is not None:
                    waiting.discard(event)
                    if not waiting:
                        del self._events[key]

    def notify(self, payload: str) -> int:
        """Wake the waiters of every id in a comma-separated payload; returns how many were woken."""
        woken = 0
        with self._lock:
            for key in payload.split(","):
                for event in self._events.get(key.strip(), ()):
                    event.set()
                    woken += 1
        return woken

    def close(self) -> None:
        self._stop.set()

    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="inferq-finished-waiter", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._listen()
            except (redis.RedisError, OSError) as exc:
                log.debug("job-finished subscription lost (long polls fall back to re-reading): %s", exc)
            self._stop.wait(self._retry_s)

    def _listen(self) -> None:
        client = redis.Redis.from_url(self._url, socket_connect_timeout=1.0, health_check_interval=30)
        pubsub = client.pubsub()
        try:
            pubsub.subscribe(CHANNEL)
            while not self._stop.is_set():
                message = pubsub.get_message(timeout=1.0)
                if message and message.get("type") == "subscribe":
                    self._subscribed.set()
                elif message and message.get("type") == "message":
                    data = message["data"]
                    self.notify(data.decode() if isinstance(data, bytes) else str(data))
        finally:
            self._subscribed.clear()
            pubsub.close()
            client.close()
