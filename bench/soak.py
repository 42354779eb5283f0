#!/usr/bin/env python3
"""Soak benchmark: sustained single-image jobs for N minutes, kill -9 of the worker every minute.

Starts its own PostgreSQL cluster and redis-server (append-only) on spare loopback ports (the fault-suite
machinery of tests/faults), one real `inferq worker --beat`, and submits jobs at a steady rate through the API's
fast path (durable input + job row, commit, publish). Reports accepted/terminal/lost/duplicates, p50/p95 latency
(job created -> finished, from the database) and the worker's RSS at start and end.

    python bench/soak.py                       # 10 minutes, 20 jobs/s, a worker kill every 60 s
    python bench/soak.py --minutes 3 --rate 30
    python bench/soak.py --model path/to/model.keras   # else a 1-epoch model is trained first (~1 min)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.config.settings import Settings  # noqa: E402
from tests.faults.conftest import FaultStack, PgServer, build_stack, drop_stack, fault_env, make_template  # noqa: E402


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MiB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def trained_model(root: Path) -> Path:
    """Train the default CNN for one epoch in a scratch data dir (when no --model is given)."""
    settings = Settings(data_dir=root / "train")
    env = fault_env(settings)
    env.pop("INFERQ_DATABASE_URL")
    env.pop("INFERQ_REDIS_URL")
    subprocess.run([sys.executable, "-m", "inferq", "train-default", "--epochs", "1"], env=env, check=True, timeout=900)
    return root / "train" / "models" / "mnist-cnn" / "1" / "model.keras"


def latencies(stack: FaultStack) -> np.ndarray:
    with stack.engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT EXTRACT(EPOCH FROM finished_at - created_at) FROM jobs "
                "WHERE id = ANY(:ids) AND finished_at IS NOT NULL"
            ),
            {"ids": stack.accepted},
        )
        return np.array([float(r[0]) for r in rows])


def soak(stack: FaultStack, minutes: float, rate: float, kill_every: float) -> None:
    stack.start_worker()
    t0 = time.monotonic()
    end, next_kill, kills, rss_start = t0 + minutes * 60, t0 + kill_every, 0, 0.0
    sent = 0
    while (now := time.monotonic()) < end:
        due = int((now - t0) * rate) - sent
        if due > 0:
            stack.submit(due)
            sent += due
        if not rss_start and now - t0 > min(30, kill_every / 2):
            rss_start = rss_mb(stack.worker.proc.pid)
        if now >= next_kill:
            stack.worker.kill9()
            kills += 1
            stack.start_worker(wait=False)
            next_kill += kill_every
            print(f"[{now - t0:6.0f}s] kill -9 #{kills}; accepted {len(stack.accepted)}", flush=True)
        time.sleep(0.05)
    rss_end = rss_mb(stack.worker.proc.pid)
    stack.quiesce(timeout=300)
    v = stack.checker.verdict(f"soak {minutes:g} min, {kills} kills", stack.accepted, 0.0)
    lat = latencies(stack)
    print(
        f"soak: minutes={minutes:g} rate={rate:g}/s kills={kills} accepted={v.accepted} terminal={v.terminal} "
        f"lost={v.lost} duplicates={v.duplicates} failed={v.failed} "
        f"p50_latency_s={np.percentile(lat, 50):.3f} p95_latency_s={np.percentile(lat, 95):.3f} "
        f"max_latency_s={lat.max():.1f} worker_rss_mb start={rss_start:.0f} end={rss_end:.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="How long to keep the load on.")
    parser.add_argument("--rate", type=float, default=20.0, help="Single-image jobs submitted per second.")
    parser.add_argument("--kill-every", type=float, default=60.0, help="Seconds between two worker kill -9s.")
    parser.add_argument(
        "--model", type=Path, default=None, help="A trained .keras or .tflite file (else train 1 epoch)."
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="inferq-soak-") as tmp:
        root = Path(tmp)
        model = args.model or trained_model(root)
        pg = PgServer()
        try:
            stack, name = build_stack(root / "stack", pg, model, make_template(pg, model))
            try:
                soak(stack, args.minutes, args.rate, args.kill_every)
            finally:
                drop_stack(stack, name)
        finally:
            pg.stop("fast")
            shutil.rmtree(pg.root, ignore_errors=True)


if __name__ == "__main__":
    main()
