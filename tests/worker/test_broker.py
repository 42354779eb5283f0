"""The worker survives the broker dying under it: kombu's Redis channel closes fully with a BRPOP pending."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest
from kombu import Connection, Consumer, Exchange, Queue
from kombu.transport import redis as kombu_redis

from shared.runtime.embedded import EmbeddedRedis, free_port
from worker import broker


@contextmanager
def doomed_connection(root: Path) -> Iterator[tuple[Connection, kombu_redis.Channel]]:
    """A connection to our own redis-server as a Celery worker holds it when the server dies: the task channel
    has an unacked message and a BRPOP pending, a second channel consumes a fanout queue; then kill -9."""
    server = EmbeddedRedis(root / "redis", free_port(), appendonly=False).start()
    try:
        conn = Connection(server.url)
        tasks = Queue("inference")
        with conn.Producer() as producer:
            producer.publish({"job": 1}, routing_key="inference", declare=[tasks])
        channel = conn.default_channel
        Consumer(channel, [tasks], callbacks=[lambda *_: None], prefetch_count=8).consume()
        fanout = Queue("gossip.test", Exchange("celeryev", type="fanout"), auto_delete=True)
        Consumer(conn.channel(), [fanout], callbacks=[lambda *_: None]).consume()
        deadline = time.monotonic() + 5
        while not (channel.qos._delivered and channel._in_poll) and time.monotonic() < deadline:
            with suppress(TimeoutError):
                conn.drain_events(timeout=0.2)
        assert channel.qos._delivered and channel._in_poll
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait()
        yield conn, channel
    finally:
        server.stop()


def test_the_worker_channel_closes_when_the_broker_dies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With worker.broker installed, Celery's teardown of a lost connection (collect, then close) closes the task
    channel in collect() and raises nothing, so the worker reconnects."""
    monkeypatch.setattr(kombu_redis.Transport, "Channel", kombu_redis.Transport.Channel)  # undone after the test
    broker.install()
    with doomed_connection(tmp_path) as (conn, channel):
        assert isinstance(channel, broker.Channel)
        conn.collect(socket_timeout=5.0)
        assert channel.closed
        conn.close()


def test_kombus_own_channel_makes_the_worker_exit_there(tmp_path: Path) -> None:
    """The upstream behaviour worker.broker works around (should a kombu upgrade make this fail, drop the
    workaround): close() raises AttributeError, which Celery treats as an unrecoverable error."""
    with doomed_connection(tmp_path) as (conn, channel):
        assert type(channel) is kombu_redis.Channel
        conn.collect(socket_timeout=5.0)
        assert not channel.closed
        with pytest.raises(AttributeError, match="hostname"):
            conn.close()
