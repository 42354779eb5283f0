#!/usr/bin/env python3
"""Online benchmark: raw model throughput vs end-to-end single-image jobs, with and without micro-batching.

In one run it measures
  * raw `predict` throughput of the default model at batch 1 and 64 (the reference),
  * end-to-end completed single-image jobs/s with 1 and 32 concurrent HTTP clients (submit + poll until done),
    once with micro-batching (INFERQ_MAX_BATCH=64) and once with INFERQ_MAX_BATCH=1,
and prints mean forward-pass batch size, p50/p99 latency and the ratios.

    python bench/online.py                      # embedded defaults in a temp dir (SQLite + bundled Redis)
    python bench/online.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/test --redis-url redis://127.0.0.1:6379/9
    python bench/online.py --metrics-overhead   # 32 clients, micro-batching, metrics on vs off (alternated, same run)
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import requests
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inferq.access import ensure_local_key  # noqa: E402
from inferq.samples import as_user_photo, mnist_sample  # noqa: E402
from shared.db import upgrade_database  # noqa: E402
from shared.embedded import EmbeddedRedis, free_port, port_open  # noqa: E402
from shared.settings import Settings  # noqa: E402


@dataclass
class Run:
    label: str
    clients: int
    max_batch: int
    jobs: int
    seconds: float
    latencies: list[float]
    mean_batch: float

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    def pct(self, q: float) -> float:
        return float(np.percentile(self.latencies, q) * 1000) if self.latencies else float("nan")


def sample_pngs(n: int = 50) -> list[bytes]:
    out = []
    for i in range(n):
        buf = io.BytesIO()
        as_user_photo(mnist_sample(i % 10, i // 10)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def raw_throughput(settings: Settings, batch: int, seconds: float) -> float:
    """Images/s of the bare model at a fixed batch size, on preprocessed inputs (the reference)."""
    from worker.runtime import load_model

    model = load_model(settings.data_dir / "models" / "mnist-cnn" / "1" / "model.keras", "keras")
    x = np.random.default_rng(0).random((batch, 28, 28), dtype=np.float32)
    for _ in range(3):
        model.predict(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.predict(x)
        n += batch
    return n / (time.perf_counter() - start)


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "inferq", *args],
        env=env,
        cwd=ROOT,
        start_new_session=True,
        stdout=open(log, "wb"),
        stderr=subprocess.STDOUT,
    )  # noqa: SIM115


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def wait_for(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


HEADERS: dict[str, str] = {}  # the API key's header, set once the database exists


def client_loop(url: str, images: list[bytes], deadline: float, lat: list[float], lock: threading.Lock) -> None:
    s = requests.Session()
    s.headers.update(HEADERS)
    i = 0
    while time.monotonic() < deadline:
        t0 = time.perf_counter()
        r = s.post(f"{url}/v1/jobs", files=[("images", ("d.png", images[i % len(images)], "image/png"))], timeout=30)
        job = r.json()
        while job["status"] not in ("succeeded", "failed", "canceled"):  # long poll, as the CLI does
            job = s.get(f"{url}/v1/jobs/{job['id']}", params={"wait": 20}, timeout=30).json()
        with lock:
            lat.append(time.perf_counter() - t0)
        i += 1


def e2e(
    settings: Settings,
    env: dict[str, str],
    *,
    clients: int,
    max_batch: int,
    seconds: float,
    images: list[bytes],
    logs: Path,
) -> Run:
    """Completed single-image jobs per second through the HTTP API and a real worker process."""
    wenv = dict(env, INFERQ_MAX_BATCH=str(max_batch))
    worker = spawn(["worker", "--queues", "inference"], wenv, logs / f"worker-{clients}-{max_batch}.log")
    try:
        wait_for(lambda: " ready." in (logs / f"worker-{clients}-{max_batch}.log").read_text(), 300, "the worker")
        warm: list[float] = []
        client_loop(settings.resolved_api_url, images, time.monotonic() + 3, warm, threading.Lock())  # loads TF model
        engine = sa.create_engine(settings.resolved_database_url)
        with engine.connect() as c:
            since = c.execute(sa.text("SELECT max(id) FROM job_items")).scalar() or 0
        lat: list[float] = []
        lock = threading.Lock()
        deadline = time.monotonic() + seconds
        start = time.monotonic()
        threads = [
            threading.Thread(target=client_loop, args=(settings.resolved_api_url, images, deadline, lat, lock))
            for _ in range(clients)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - start
        with engine.connect() as c:
            n, passes = c.execute(
                sa.text(
                    "SELECT count(*), sum(1.0 / batch_size) FROM job_items WHERE id > :s AND batch_size IS NOT NULL"
                ),
                {"s": since},
            ).one()
        engine.dispose()
        return Run(
            f"{clients} client(s), max_batch={max_batch}",
            clients,
            max_batch,
            len(lat),
            elapsed,
            lat,
            (n / float(passes)) if passes else 0.0,
        )
    finally:
        stop(worker)


def metrics_overhead(settings: Settings, env: dict[str, str], seconds: float, tmp: Path) -> None:
    """Jobs/s with 32 clients and micro-batching, metrics on and off in alternation (on, off, on, off); prints
    the on/off throughput ratio (the issue's bar: metrics cost under 2%)."""
    images, runs = sample_pngs(), []
    for i, enabled in enumerate(("true", "false", "true", "false")):
        menv = dict(env, INFERQ_METRICS_ENABLED=enabled)
        api = spawn(["api", "--workers", "2"], menv, tmp / f"api-{i}.log")
        try:
            wait_for(lambda: port_open("127.0.0.1", settings.api_port), 60, "the API")
            run = e2e(settings, menv, clients=32, max_batch=64, seconds=seconds, images=images, logs=tmp)
        finally:
            stop(api)
        run.label = f"metrics {'on' if enabled == 'true' else 'off'} (run {i + 1})"
        runs.append(run)
        print(f"{run.label:<24}{run.rate:9.1f} jobs/s  mean batch {run.mean_batch:5.1f}  p50 {run.pct(50):6.1f} ms"
              f"  p99 {run.pct(99):6.1f} ms", flush=True)  # fmt: skip
    on = sum(r.jobs for r in runs if "on" in r.label) / sum(r.seconds for r in runs if "on" in r.label)
    off = sum(r.jobs for r in runs if "off" in r.label) / sum(r.seconds for r in runs if "off" in r.label)
    print(f"\nmetrics on {on:.1f} jobs/s, off {off:.1f} jobs/s: on/off = {on / off:.3f} (cost {1 - on / off:+.1%})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20, help="Measured seconds per end-to-end run.")
    ap.add_argument("--database-url", default="", help="Default: SQLite in a temp dir.")
    ap.add_argument("--redis-url", default="", help="Default: the bundled redis-server on a free port.")
    ap.add_argument("--keep", action="store_true", help="Keep the temp dir (logs) afterwards.")
    ap.add_argument("--epochs", type=int, default=5, help="Epochs of the default model trained first.")
    ap.add_argument(
        "--metrics-overhead",
        action="store_true",
        help="Only 32 clients with micro-batching, metrics on / off / on / off (API and worker restarted each time).",
    )
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="inferq-bench-"))
    redis = None
    if not args.redis_url:
        redis = EmbeddedRedis(tmp / "redis", free_port(), appendonly=False).start()
    settings = Settings(
        data_dir=tmp,
        database_url=args.database_url,
        redis_url=args.redis_url or redis.url,
        api_port=free_port(),
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
    env.update(
        INFERQ_DATA_DIR=str(tmp),
        INFERQ_DATABASE_URL=settings.resolved_database_url,
        INFERQ_REDIS_URL=settings.broker_url(),
        INFERQ_API_PORT=str(settings.api_port),
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
        INFERQ_RATE_LIMIT_ENABLED="false",  # the benchmark measures capacity, not the per-key request policy
        INFERQ_WORKER_METRICS_PORT=str(free_port()),  # the worker's /metrics is served while metrics are on
    )
    api = None
    try:
        upgrade_database(settings)
        HEADERS["Authorization"] = f"Bearer {ensure_local_key(settings)[0]}"
        if args.database_url.startswith("postgresql"):
            with sa.create_engine(settings.resolved_database_url).begin() as c:
                c.execute(sa.text("TRUNCATE job_items, jobs, model_aliases, model_versions CASCADE"))
        print(f"training the default model ({args.epochs} epochs) ...", flush=True)
        subprocess.run(
            [sys.executable, "-m", "inferq", "train-default", "--epochs", str(args.epochs), "--force"],
            env=env,
            check=True,
            cwd=ROOT,
            capture_output=True,
        )
        if args.metrics_overhead:
            metrics_overhead(settings, env, args.seconds, tmp)
            return
        raw1 = raw_throughput(settings, 1, 5)
        raw64 = raw_throughput(settings, 64, 5)
        api = spawn(["api", "--workers", "2"], env, tmp / "api.log")
        wait_for(lambda: port_open("127.0.0.1", settings.api_port), 60, "the API")
        images = sample_pngs()
        runs = [
            e2e(settings, env, clients=c, max_batch=b, seconds=args.seconds, images=images, logs=tmp)
            for b in (64, 1)
            for c in (1, 32)
        ]
    finally:
        if api is not None:
            stop(api)
        if redis is not None:
            redis.stop()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    db_kind = settings.resolved_database_url.split(":", 1)[0]
    print(f"\ninferq online benchmark  ({os.cpu_count()} cores, database {db_kind}, {args.seconds:.0f}s per run)\n")
    print(f"raw model.predict   batch 1: {raw1:9.1f} img/s   batch 64: {raw64:9.1f} img/s\n")
    print(f"{'end-to-end run':<32}{'jobs/s':>9}{'mean batch':>12}{'p50 ms':>9}{'p99 ms':>9}{'vs raw b1':>11}")
    for r in runs:
        print(f"{r.label:<32}{r.rate:9.1f}{r.mean_batch:12.2f}{r.pct(50):9.1f}{r.pct(99):9.1f}{r.rate / raw1:10.2f}x")
    by = {(r.clients, r.max_batch): r for r in runs}
    ratio = by[(32, 64)].rate / by[(32, 1)].rate
    print(
        f"\n32 clients: micro-batching vs MAX_BATCH=1 throughput ratio {ratio:.2f}x "
        f"(target >= 3x); mean batch {by[(32, 64)].mean_batch:.1f} (target >= 8)"
    )
    print(f"32 clients with batching vs raw batch-64 throughput: {by[(32, 64)].rate / raw64:.1%}")


if __name__ == "__main__":
    main()
