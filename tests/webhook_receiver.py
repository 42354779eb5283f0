"""A real webhook receiver on loopback for tests: records every request, answers by a policy, counts connections."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HANG = -1  # a policy answer: hold the request without answering (until released or HANG_LIMIT_S)
HANG_LIMIT_S = 5.0


@dataclass
class Received:
    headers: dict[str, str]
    body: bytes
    path: str


@dataclass
class Receiver:
    """What the server saw; `policy(n)` gives the status of the n-th request (0-based), or HANG."""

    policy: Callable[[int], int] = lambda n: 200
    requests: list[Received] = field(default_factory=list)
    answers: dict[int, int] = field(default_factory=dict)  # request number -> status answered (or HANG)
    connections: int = 0
    port: int = 0
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # a concurrent dispatcher must not meet a full listen backlog
    receiver: Receiver

    def verify_request(self, request: Any, client_address: Any) -> bool:
        with self.receiver.lock:
            self.receiver.connections += 1
        return True


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        rec = self.server.receiver
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        with rec.lock:
            n = len(rec.requests)
            rec.requests.append(Received(dict(self.headers.items()), body, self.path))
        status = rec.policy(n)
        with rec.lock:
            rec.answers[n] = status
        if status == HANG:
            rec.release.wait(HANG_LIMIT_S)
            status = 200
        payload = b'{"ok": true}' if 200 <= status < 300 else b"nope " * 400
        try:
            self.send_response(status)
            self.send_header("content-length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)
        except OSError:  # the dispatcher gave up on us
            pass

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def running_receiver(policy: Callable[[int], int] | None = None) -> Iterator[Receiver]:
    """A receiver listening on 127.0.0.1 (a free port) for the duration of the block."""
    rec = Receiver(policy=policy or (lambda n: 200))
    server = _Server(("127.0.0.1", 0), _Handler)
    server.receiver = rec
    rec.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield rec
    finally:
        rec.release.set()
        server.shutdown()
        server.server_close()
        thread.join(5)
