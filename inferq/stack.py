"""`inferq up`: the whole stack on one machine, on embedded defaults, as child processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from rich.console import Console
from rich.panel import Panel

from inferq.access import ensure_flower_auth, ensure_local_key
from shared.config.settings import Settings
from shared.db.engine import upgrade_database
from shared.runtime.embedded import EmbeddedRedis, port_open

console = Console(stderr=True)


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


@dataclass
class Stack:
    """Starts Redis (if embedded), trains the default model if needed, then the API, workers and Flower."""

    settings: Settings
    gpus: list[str] = field(default_factory=list)
    train_epochs: int | None = None
    procs: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)
    redis: EmbeddedRedis | None = None
    api_key: str = ""
    flower_auth: str = ""

    def run(self) -> None:
        """Start everything, print where to look, and stop it all cleanly on Ctrl-C or a child's death."""
        signal.signal(signal.SIGINT, signal.default_int_handler)  # even if started with SIGINT ignored (nohup, &)
        signal.signal(signal.SIGTERM, _interrupt)
        try:
            env = self._prepare()
            self._start_children(env)
            self._wait_ready()
            self._banner()
            self._watch()
        except KeyboardInterrupt:
            console.print("\nstopping...")
        finally:
            self.stop()

    def _prepare(self) -> dict[str, str]:
        s = self.settings
        s.data_dir.mkdir(parents=True, exist_ok=True)
        (s.data_dir / "logs").mkdir(exist_ok=True)
        env = dict(os.environ, INFERQ_DATA_DIR=str(s.data_dir.resolve()), PYTHONUNBUFFERED="1")
        upgrade_database(s)
        console.print(f"[green]database ready[/] ({s.resolved_database_url.split('@')[-1]})")
        key, created = ensure_local_key(s)
        masked = "_".join(key.split("_", 2)[:2]) + "_…  (shown in full when it was created)"
        self.api_key = key if created else masked
        console.print(f"[green]API key {'created' if created else 'ready'}[/] (in {s.api_key_file}, mode 0600)")
        self.flower_auth, created = ensure_flower_auth(s)
        console.print(f"[green]Flower login {'created' if created else 'ready'}[/] (in {s.flower_auth_file})")
        if s.uses_embedded_redis:
            if port_open("127.0.0.1", s.embedded_redis_port):
                raise SystemExit(f"port {s.embedded_redis_port} is taken; set INFERQ_EMBEDDED_REDIS_PORT to a free one")
            self.redis = EmbeddedRedis(s.data_dir / "redis", s.embedded_redis_port).start()
            console.print(
                f"[green]embedded Redis ready[/] ({self.redis.url}, append-only file in {s.data_dir / 'redis'})"
            )
        env["INFERQ_REDIS_URL"] = s.broker_url()
        cmd = [*self._inferq(), "train-default"] + (["--epochs", str(self.train_epochs)] if self.train_epochs else [])
        if subprocess.run(cmd, env=env).returncode != 0:
            raise SystemExit("training the default model failed; see the output above")
        return env

    @staticmethod
    def _inferq() -> list[str]:
        return [sys.executable, "-m", "inferq"]

    def _spawn(self, name: str, args: list[str], env: dict[str, str]) -> None:
        log = open(self.settings.data_dir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        proc = subprocess.Popen(
            [*self._inferq(), *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append((name, proc))

    def _start_children(self, env: dict[str, str]) -> None:
        self._spawn("api", ["api"], env)
        for i, gpu in enumerate(self.gpus or [""]):
            name = f"worker-gpu{gpu}" if gpu else "worker-cpu"
            worker_env = dict(env, INFERQ_WORKER_METRICS_PORT=str(self.worker_metrics_ports()[i]))
            self._spawn(name, ["worker", "--gpu", gpu, *(["--beat"] if i == 0 else [])], worker_env)
        self._spawn("flower", ["flower"], env)

    def worker_metrics_ports(self) -> list[int]:
        """One metrics port per worker process: INFERQ_WORKER_METRICS_PORT, +1, +2... (none when it is 0)."""
        base = self.settings.worker_metrics_port
        return [base + i if base else 0 for i in range(len(self.gpus or [""]))]

    def metrics_lines(self) -> str:
        """Where the banner says metrics are (the API's, each worker's, Flower's)."""
        s = self.settings
        if not s.metrics_enabled:
            return "Metrics    off (INFERQ_METRICS_ENABLED=false)\n"
        workers = [f"http://{s.metrics_host}:{p}/metrics" for p in self.worker_metrics_ports() if p]
        lines = f"Metrics    {s.resolved_api_url}/metrics (API, queue depths, job counts)\n"
        lines += "".join(f"           {url} (worker)\n" for url in workers)
        lines += f"           http://{s.api_host}:{s.flower_port}/metrics (Flower)\n"
        return lines + "Live view  inferq top\n"

    def _wait_ready(self, timeout: float = 90) -> None:
        s = self.settings
        deadline = time.monotonic() + timeout
        with console.status("waiting for the API, the worker and Flower..."):
            while time.monotonic() < deadline:
                self._check_children()
                try:
                    if requests.get(f"{s.resolved_api_url}/readyz", timeout=2).ok and port_open(
                        s.api_host, s.flower_port
                    ):
                        return
                except requests.RequestException:
                    pass
                time.sleep(0.2)
        raise SystemExit(f"the stack did not become ready in {timeout:.0f}s; see {s.data_dir / 'logs'}")

    def _check_children(self) -> None:
        for name, proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(
                    f"{name} exited with code {proc.returncode}; see {self.settings.data_dir / 'logs' / name}.log"
                )

    def _banner(self) -> None:
        s = self.settings
        sample = self._sample_image()
        web = f"Web app    {s.resolved_api_url}/  (sign in with the API key below)\n" if s.web_enabled else ""
        text = (
            f"{web}"
            f"API docs   {s.resolved_api_url}/docs\n"
            f"OpenAPI    {s.resolved_api_url}/openapi.json\n"
            f"Flower     http://{s.api_host}:{s.flower_port}  (login {self.flower_auth})\n"
            f"{self.metrics_lines()}"
            f"Logs       {s.data_dir / 'logs'}\n"
            f"API key    {self.api_key}\n"
            f"           (saved in {s.api_key_file}; the CLI reads it, or set INFERQ_API_KEY)\n\n"
            f"Try it:\n"
            f'  curl -s -H "Authorization: Bearer $(cat {s.api_key_file})" -F images=@{sample} '
            f"{s.resolved_api_url}/v1/jobs\n"
            f"  {Path(sys.executable).parent / 'inferq'} classify {sample}\n\n"
            "Ctrl-C stops everything."
        )
        console.print(Panel(text, title="inferq is up", border_style="green"))

    def _sample_image(self) -> Path:
        """A handwritten-style digit (dark on white, like a user's photo) to try the API with."""
        path = self.settings.data_dir / "samples" / "digit-7.png"
        if not path.exists():
            from inferq.samples import write_sample_digit

            write_sample_digit(path)
        return path.resolve()

    def _watch(self) -> None:
        while True:
            self._check_children()
            time.sleep(0.5)

    def stop(self, timeout: float = 20) -> None:
        """Stop children (SIGTERM: warm shutdown), then Redis."""
        for _, proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for name, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                console.print(f"{name} did not stop in time; killing it")
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        if self.redis is not None:
            self.redis.stop()
        if self.procs or self.redis:
            console.print("[green]stopped[/]")
        self.procs.clear()
        self.redis = None
