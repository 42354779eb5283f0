"""The stacks bench/online.py drives: one per source tree (the working tree, or a temporary worktree of a git ref),
each with a database the benchmark created itself, its own data dir, API and worker processes, and the load."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import requests
import sqlalchemy as sa
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
OWN_DB_PREFIX = "inferq_bench_"  # every database this benchmark creates (and the only ones it drops) is named so
# Run inside the stack's tree: a baseline commit may predate the package layout (shared/db.py, shared/settings.py).
SETUP = """
try:
    from shared.db.engine import upgrade_database
    from shared.config.settings import Settings
except ImportError:
    from shared.db import upgrade_database
    from shared.settings import Settings
from inferq.access import ensure_local_key
s = Settings()
upgrade_database(s)
print(ensure_local_key(s)[0])
"""


@dataclass
class Run:
    label: str
    clients: int
    max_batch: int
    jobs: int
    seconds: float
    latencies: list[float]
    mean_batch: float
    cpu_s: float = 0.0  # CPU seconds the API's and the worker's processes used during the measured load
    cpu_split: dict[str, float] = field(default_factory=dict)  # CPU seconds by part of the machine (CpuProbe)

    @property
    def cpu_ms_per_job(self) -> float:
        return 1000 * self.cpu_s / self.jobs if self.jobs else float("nan")

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")


def create_own_database(server_url: str) -> str:
    """A new, empty PostgreSQL database on the server of `server_url`, named inferq_bench_<hex>; its URL. The
    database named in `server_url` is only connected to (to issue CREATE DATABASE), never written."""
    url = make_url(server_url)
    name = f"{OWN_DB_PREFIX}{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


def drop_own_database(own_url: str, server_url: str) -> None:
    """Drop a database made by create_own_database; refuses any other name."""
    name = make_url(own_url).database or ""
    if not name.startswith(OWN_DB_PREFIX):
        raise SystemExit(f"refusing to drop {name!r}: bench/online.py only drops databases it created")
    admin = sa.create_engine(make_url(server_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def assert_own_database(url: str) -> None:
    """Anything destructive first checks that the database is one this benchmark made (named inferq_bench_*)."""
    if url.startswith("postgresql") and not (make_url(url).database or "").startswith(OWN_DB_PREFIX):
        raise SystemExit(
            f"refusing to run against {make_url(url).database!r}: bench/online.py only writes to "
            f"databases it created ({OWN_DB_PREFIX}*)"
        )


def pgroup_pids(pgid: int) -> list[int]:
    """Every live process of a process group (an API's gunicorn master and its workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid:
                pids.append(int(entry.name))
    return pids


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def wait_for(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


def tree_cpu_s(*procs: subprocess.Popen[bytes] | None) -> float:
    """User + system CPU seconds of these processes and all their children (gunicorn's workers, ...)."""
    total = 0.0
    for proc in procs:
        if proc is None:
            continue
        try:
            root = psutil.Process(proc.pid)
            for p in [root, *root.children(recursive=True)]:
                times = p.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


class CpuProbe:
    """CPU seconds so far by part: the API (gunicorn and its workers), the worker process, the PostgreSQL backends
    of the stack's own database (found by its name in their process title), every redis-server, this benchmark
    process (its client threads, during a load) and the whole machine (busy core-seconds)."""

    def __init__(self, stack: Stack, worker: subprocess.Popen[bytes]) -> None:
        self.stack, self.worker = stack, worker
        self.database = make_url(stack.database_url).database or ""
        self.seen: dict[str, dict[int, float]] = {"postgres": {}, "redis": {}}  # a process that exits keeps its share

    def read(self) -> dict[str, float]:
        out = {"api": tree_cpu_s(self.stack.api), "worker": tree_cpu_s(self.worker)}
        for proc in psutil.process_iter(["name", "cmdline"]):
            name, cmdline = proc.info["name"], " ".join(proc.info["cmdline"] or [])
            part = "postgres" if name == "postgres" and self.database in cmdline else None
            part = "redis" if name == "redis-server" else part
            if part is not None:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    self.seen[part][proc.pid] = times.user + times.system
        out.update({part: sum(pids.values()) for part, pids in self.seen.items()})
        out["bench clients"] = time.process_time()
        times = psutil.cpu_times()
        out["machine"] = float(sum(times) - times.idle - getattr(times, "iowait", 0.0))
        return out


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


@dataclass
class Stack:
    """One source tree's running stack; `env` points every process at this tree's code and this stack's state."""

    name: str
    tree: Path
    data_dir: Path
    database_url: str
    env: dict[str, str]
    api_port: int
    headers: dict[str, str] = field(default_factory=dict)
    api: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def spawn(self, args: list[str], log: str, **extra_env: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "inferq", *args],
            env=dict(self.env, **extra_env),
            cwd=self.tree,
            start_new_session=True,
            stdout=open(self.data_dir / log, "wb"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )

    def prepare(self, epochs: int) -> None:
        """Migrate this tree's schema into the stack's own database, make an API key, train the default model."""
        assert_own_database(self.database_url)
        out = subprocess.run([sys.executable, "-c", SETUP], env=self.env, cwd=self.tree, capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"setting up {self.name} failed:\n{out.stderr[-3000:]}")
        self.headers = {"Authorization": f"Bearer {out.stdout.strip().splitlines()[-1]}"}
        subprocess.run(
            [sys.executable, "-m", "inferq", "train-default", "--epochs", str(epochs), "--force"],
            env=self.env,
            cwd=self.tree,
            check=True,
            capture_output=True,
        )

    def start_api(self, **extra_env: str) -> None:
        self.stop_api()
        self.api = self.spawn(["api", "--workers", self.env.get("BENCH_API_WORKERS", "2")], "api.log", **extra_env)
        wait_for(lambda: requests.get(f"{self.url}/healthz", timeout=2).ok, 90, f"the API of {self.name}")

    def stop_api(self) -> None:
        if self.api is not None:
            stop(self.api)
            self.api = None


def sample_pngs(n: int = 50) -> list[bytes]:
    from inferq.samples import as_user_photo, mnist_sample

    out = []
    for i in range(n):
        buf = io.BytesIO()
        as_user_photo(mnist_sample(i % 10, i // 10)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def client_loop(
    stack: Stack, images: list[bytes], deadline: float, lat: list[float], lock: threading.Lock, model: str | None
) -> None:
    """Submit one single-image job, long-poll it to the end, repeat until the deadline."""
    s = requests.Session()
    s.headers.update(stack.headers)
    form = {"model": model} if model else None
    i = 0
    while time.monotonic() < deadline:
        seconds = timed_job(s, stack.url, images[i % len(images)], form)
        with lock:
            lat.append(seconds)
        i += 1


def timed_job(
    s: requests.Session,
    url: str,
    image: bytes,
    form: dict[str, str] | None = None,
    stages: list[dict[str, float]] | None = None,
) -> float:
    """Submit one single-image job (Prefer: wait) and long-poll it to the end if needed, as the CLI does; the
    seconds it took. A refused or unsuccessful job ends the benchmark. `stages`, if given, gets the job's time split
    at its server-side stamps (see job_stages)."""
    submitted = time.time()
    t0 = time.perf_counter()
    resp = s.post(
        f"{url}/v1/jobs",
        files=[("images", ("d.png", image, "image/png"))],
        data=form,
        headers={"Prefer": "wait=20"},  # as the CLI asks; a tree without it answers 202 and is long-polled
        timeout=60,
    )
    if resp.status_code not in (201, 202):
        raise SystemExit(f"a benchmark job was refused: {resp.status_code} {resp.text[:500]}")
    job = resp.json()
    while job["status"] not in ("succeeded", "failed", "canceled", "expired"):
        job = s.get(f"{url}/v1/jobs/{job['id']}", params={"wait": 20}, timeout=60).json()
    if job["status"] != "succeeded":
        raise SystemExit(f"a benchmark job ended {job['status']}: {job.get('error')}")
    if stages is not None:
        stages.append(job_stages(job, submitted, time.time()))
    return time.perf_counter() - t0


STAGES = {
    "accept": "request sent -> job row stamped (HTTP, auth, image check)",
    "dispatch": "job stamped -> worker started it (insert, commit, publish, broker, claim)",
    "work": "worker started -> job finished (preprocess, batch, forward pass, result rows)",
    "answer": "job finished -> client has it (notify, long-poll wake-up, response)",
}


def _epoch(stamp: str) -> float:
    """An API timestamp (UTC, with or without its offset) as seconds since the epoch."""
    at = datetime.fromisoformat(stamp)
    return (at if at.tzinfo else at.replace(tzinfo=UTC)).timestamp()


def job_stages(job: dict[str, Any], submitted: float, received: float) -> dict[str, float]:
    """One finished job's seconds per stage (STAGES), from its created/started/finished stamps and the client's
    clock (the same machine's)."""
    created, started, finished = (_epoch(job[k]) for k in ("created_at", "started_at", "finished_at"))
    return {
        "accept": created - submitted,
        "dispatch": started - created,
        "work": finished - started,
        "answer": received - finished,
    }


def load(stack: Stack, *, clients: int, seconds: float, images: list[bytes], model: str | None) -> tuple[list, float]:
    """`clients` threads of client_loop for `seconds`; (latencies, elapsed)."""
    lat: list[float] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds
    start = time.monotonic()
    threads = [
        threading.Thread(target=client_loop, args=(stack, images, deadline, lat, lock, model)) for _ in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return lat, time.monotonic() - start


def e2e(
    stack: Stack,
    *,
    clients: int,
    max_batch: int,
    seconds: float,
    images: list[bytes],
    model: str | None = None,
    **extra_env: str,
) -> Run:
    """Completed single-image jobs per second through the HTTP API and a real worker process."""
    log = f"worker-{clients}-{max_batch}-{model or 'default'}-{uuid.uuid4().hex[:6]}.log"
    worker = stack.spawn(["worker", "--queues", "inference"], log, INFERQ_MAX_BATCH=str(max_batch), **extra_env)
    try:
        wait_for(lambda: " ready." in (stack.data_dir / log).read_text(), 300, f"the worker of {stack.name}")
        load(stack, clients=min(clients, 4), seconds=3, images=images, model=model)  # warm-up: model load
        engine = sa.create_engine(stack.database_url)
        with engine.connect() as c:
            since = c.execute(sa.text("SELECT max(id) FROM job_items")).scalar() or 0
        probe = CpuProbe(stack, worker)
        cpu_before = probe.read()
        lat, elapsed = load(stack, clients=clients, seconds=seconds, images=images, model=model)
        split = {part: used - cpu_before[part] for part, used in probe.read().items()}
        cpu_s = split["api"] + split["worker"]
        with engine.connect() as c:
            n, passes = c.execute(
                sa.text(
                    "SELECT count(*), sum(1.0 / batch_size) FROM job_items WHERE id > :s AND batch_size IS NOT NULL"
                ),
                {"s": since},
            ).one()
        engine.dispose()
    finally:
        stop(worker)
    mean = (n / float(passes)) if passes else 0.0
    label = f"{stack.name}: {clients} client(s), max_batch={max_batch}" + (f", {model}" if model else "")
    return Run(label, clients, max_batch, len(lat), elapsed, lat, mean, cpu_s, split)
