"""The bulk lane's own consumer threads (worker/lanes.py) on a real Redis: one reserved message per thread, Celery's
task machinery (retries with their countdown, late acks), and a clean hand-back at shutdown."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from celery import Celery

from shared.runtime.celery_app import make_celery, worker_queues
from tests.factories import make_settings
from worker.lanes import DedicatedLane

QUEUE = "bulk-test"


@pytest.fixture
def app(tmp_path: Path, redis_url: str) -> Celery:
    settings = make_settings(tmp_path, redis_url=redis_url, visibility_timeout=600)
    return make_celery(settings)


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def _lane(app: Celery, threads: int) -> DedicatedLane:
    return DedicatedLane(app, QUEUE, threads=threads, hostname="test@lanes", nice=0)


def _until(check: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_each_thread_reserves_one_message_and_acks_it_after_the_task(app: Celery, client: redis.Redis) -> None:
    """Five chunks and two threads: two run, three stay in the queue for other workers; all run once, all acked."""
    release, ran = threading.Event(), []

    @app.task(name="t.chunk")
    def chunk(i: int) -> int:
        release.wait(10)
        ran.append(i)
        return i

    for i in range(5):
        chunk.apply_async((i,), queue=QUEUE)
    lane = _lane(app, threads=2)
    lane.start()
    try:
        _until(lambda: client.llen(QUEUE) == 3)
        time.sleep(0.3)  # time enough to reserve more, were the window wider
        assert client.llen(QUEUE) == 3
        assert client.hlen("unacked") == 2
        release.set()
        _until(lambda: len(ran) == 5)
        _until(lambda: client.hlen("unacked") == 0)
    finally:
        lane.stop()
        lane.join(10)
    assert sorted(ran) == [0, 1, 2, 3, 4]
    assert client.llen(QUEUE) == 0
    assert lane.alive == 0


def test_a_retry_runs_again_after_its_countdown(app: Celery, client: redis.Redis) -> None:
    """A task's self.retry(countdown=...) republishes it; the lane holds the new message until the countdown ends."""
    calls: list[float] = []

    @app.task(name="t.flaky", bind=True, max_retries=3)
    def flaky(self: Any) -> str:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise self.retry(countdown=1)
        return "ok"

    flaky.apply_async(queue=QUEUE)
    lane = _lane(app, threads=1)
    lane.start()
    try:
        _until(lambda: len(calls) == 2)
        _until(lambda: client.hlen("unacked") == 0 and client.llen(QUEUE) == 0)
    finally:
        lane.stop()
        lane.join(10)
    assert calls[1] - calls[0] >= 0.9


def test_stopping_hands_a_waiting_message_back_to_the_queue(app: Celery, client: redis.Redis) -> None:
    """A message held for its countdown when the worker stops is not run and not lost: it is back in the queue."""
    ran = []

    @app.task(name="t.later")
    def later() -> None:
        ran.append(1)

    later.apply_async(queue=QUEUE, countdown=60)
    lane = _lane(app, threads=1)
    lane.start()
    _until(lambda: client.hlen("unacked") == 1)
    lane.stop()
    lane.join(10)
    assert lane.alive == 0
    assert not ran
    assert client.llen(QUEUE) == 1
    assert client.hlen("unacked") == 0


def test_the_bulk_queue_gets_its_own_consumer_only_beside_other_lanes(tmp_path: Path) -> None:
    """A worker of every lane takes bulk chunks on its own threads; a bulk-only worker leaves them to Celery (nothing
    else waits there), and INFERQ_BULK_OWN_CONSUMER=false turns it off."""
    s = make_settings(tmp_path)
    assert worker_queues(s, "interactive,bulk,training,ops").own_threads == ["bulk"]
    assert worker_queues(s, "bulk,ops").own_threads == ["bulk"]
    assert worker_queues(s, "bulk").own_threads == []
    assert worker_queues(s, "interactive,ops").own_threads == []
    assert worker_queues(make_settings(tmp_path, bulk_own_consumer=False), "interactive,bulk").own_threads == []


DEAD_WORKER = """
import os, sys
from kombu import Connection
from kombu.transport.redis import Mutex
url, queue, options = sys.argv[1], sys.argv[2], eval(sys.argv[3])
conn = Connection(url, transport_options=options)
channel = conn.default_channel
message = channel.basic_get(queue, no_ack=False)
assert message is not None
lock = Mutex(channel.client, channel.unacked_mutex_key, channel.unacked_mutex_expire)
lock.__enter__()  # a sweep in progress
print("holding", flush=True)
sys.stdin.read()
"""


def test_a_worker_killed_during_a_sweep_does_not_stall_redelivery(tmp_path: Path, redis_url: str) -> None:
    """A worker killed -9 while it holds kombu's sweep lock, with a message reserved: the lock lapses within
    unacked_mutex_expire seconds (kombu's default kept it 300 s), and another worker's lane runs the message."""
    import subprocess
    import sys

    from shared.runtime.celery_app import transport_options

    limits = {"task_time_limit": 2, "task_soft_time_limit": 1, "train_time_limit": 2}
    settings = make_settings(tmp_path, redis_url=redis_url, visibility_timeout=3, **limits)
    app = make_celery(settings)
    ran = threading.Event()

    @app.task(name="t.orphan")
    def orphan() -> None:
        ran.set()

    orphan.apply_async(queue=QUEUE)
    options = transport_options(settings)
    dead = subprocess.Popen(
        [sys.executable, "-c", DEAD_WORKER, redis_url, QUEUE, repr(options)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert dead.stdout is not None and dead.stdout.readline() == b"holding\n"
    finally:
        dead.kill()
        dead.wait(10)
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.hlen("unacked") == 1 and client.llen(QUEUE) == 0
        lock_ttl = client.pttl("unacked_mutex") / 1000
        assert 0 < lock_ttl <= float(options["unacked_mutex_expire"])  # type: ignore[arg-type]
    finally:
        client.close()
    began = time.monotonic()
    lane = _lane(app, threads=1)
    lane.start()
    try:
        assert ran.wait(30), "the dead worker's message was not redelivered"
    finally:
        lane.stop()
        lane.join(10)
    assert time.monotonic() - began <= float(options["unacked_mutex_expire"]) + 5  # type: ignore[arg-type]


def test_flower_sees_the_lanes_tasks_through_celery_events(app: Celery, client: redis.Redis) -> None:
    """What Flower lists comes from task events: a chunk run on the lane's threads sends task-received, -started
    and -succeeded (and a failing one task-failed), with the task's id and name, to a real event receiver."""
    seen: list[tuple[str, str]] = []
    done = threading.Event()

    @app.task(name="t.ok")
    def ok() -> int:
        return 1

    @app.task(name="t.bad")
    def bad() -> None:
        raise ValueError("no")

    def record(event: dict[str, Any]) -> None:
        seen.append((event["type"], event.get("uuid", "")))
        if event["type"] in ("task-failed",):
            done.set()

    with app.connection_for_read() as conn, app.events.default_dispatcher() as probe:
        receiver = app.events.Receiver(conn, handlers={"*": record})
        listening = threading.Thread(target=lambda: receiver.capture(limit=None, timeout=20), daemon=True)
        listening.start()
        # listening before anything is sent: events are Redis pub/sub, so one sent earlier is gone. Probe until the
        # receiver sees a probe of its own (counting bindings raced with other tests' receivers on the same Redis).
        mark = uuid.uuid4().hex

        def heard() -> bool:
            probe.send("probe", uuid=mark)
            return any(u == mark for _, u in seen)

        _until(heard)
        first = ok.apply_async(queue=QUEUE).id
        second = bad.apply_async(queue=QUEUE).id
        lane = _lane(app, threads=1)
        lane.start()
        try:
            assert done.wait(20), seen
        finally:
            lane.stop()
            lane.join(10)
            receiver.should_stop = True
    of = {uid: [kind for kind, u in seen if u == uid and kind != "task-sent"] for uid in (first, second)}
    assert of == {
        first: ["task-received", "task-started", "task-succeeded"],
        second: ["task-received", "task-started", "task-failed"],
    }
