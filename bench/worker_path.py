#!/usr/bin/env python3
"""Worker-path benchmark: the classify path of one worker process, without HTTP or Celery, on PostgreSQL.

In one run it creates N single-image jobs, then lets 32 threads call `run_classify` (what the Celery task does)
against a fake model that sleeps like a real one (about 1 ms per pass plus 0.1 ms per image), once with
micro-batching (INFERQ_MAX_BATCH=64) and once with INFERQ_MAX_BATCH=1. It prints jobs/s, CPU and SQL statements
per job, the mean forward-pass batch, and the batching ratio: the part of inferq's per-job cost that is its own.

    python bench/worker_path.py                                  # local PostgreSQL, 1,500 jobs per run
    python bench/worker_path.py --jobs 3000 --pg-admin-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy import event

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inferq.samples import as_user_photo, mnist_sample  # noqa: E402
from shared.config.settings import Settings  # noqa: E402
from shared.db.engine import session_scope, upgrade_database  # noqa: E402
from shared.jobs import lifecycle as jobstore  # noqa: E402
from shared.registry.versions import register_version  # noqa: E402
from worker.context import WorkerContext  # noqa: E402
from worker.inference import run_classify  # noqa: E402


class SleepyModel:
    """Ten classes; costs about as much wall time as the MNIST CNN on this machine's CPU."""

    num_classes = 10

    def predict(self, x: np.ndarray) -> np.ndarray:
        time.sleep(0.0009 + 0.0001 * len(x))
        out = np.full((len(x), 10), 0.01, dtype=np.float32)
        out[:, 1] = 0.91
        return out


def png() -> bytes:
    buf = io.BytesIO()
    as_user_photo(mnist_sample(7, 0)).save(buf, format="PNG")
    return buf.getvalue()


def run(admin_url: str, *, max_batch: int, jobs: int, threads: int) -> dict[str, Any]:
    """One measured run on a fresh database; returns jobs/s, CPU ms and statements per job, mean batch."""
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"inferq_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = admin_url.rsplit("/", 1)[0] + "/" + name
    settings = Settings(
        data_dir=Path(tempfile.mkdtemp(prefix="inferq-wp-")),
        database_url=url,
        redis_url="redis://127.0.0.1:1/0",  # no notifications needed: nobody long-polls here
        max_batch=max_batch,
    )
    upgrade_database(settings)
    ctx = WorkerContext(settings)
    try:
        with session_scope(ctx.sessions) as s:
            mv = register_version(
                s, name="mnist-cnn", format="keras", artifact_uri="x", size_bytes=1, aliases=("production",)
            )
        ctx.models.get((mv.name, mv.version, mv.variant), SleepyModel)
        image, ids = png(), []
        for _ in range(jobs):
            with session_scope(ctx.sessions) as s:
                up = [jobstore.Upload("d.png", image)]
                ids.append(
                    jobstore.create_classify_job(
                        session=s, store=ctx.store, uploads=up, model_ref="mnist-cnn", top_k=3
                    ).id
                )
        statements = [0]

        def count(*_args: Any) -> None:
            statements[0] += 1

        event.listen(ctx.engine, "before_cursor_execute", count)
        todo, lock = iter(ids), threading.Lock()

        def work() -> None:
            while True:
                with lock:
                    job_id = next(todo, None)
                if job_id is None:
                    return
                run_classify(ctx, job_id)

        wall, cpu = time.perf_counter(), time.process_time()
        pool = [threading.Thread(target=work) for _ in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        with session_scope(ctx.sessions) as s:
            done = s.scalar(sa.text("SELECT count(*) FROM jobs WHERE status = 'succeeded'"))
        stats = next(iter(ctx._batchers.values())).stats
        return {
            "done": done,
            "rate": jobs / wall,
            "cpu_ms": cpu / jobs * 1000,
            "statements": statements[0] / jobs,
            "mean_batch": stats.mean_batch,
        }
    finally:
        ctx.close()
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=1500, help="Single-image jobs per run.")
    ap.add_argument("--threads", type=int, default=32, help="Task threads calling run_classify.")
    ap.add_argument("--pg-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    args = ap.parse_args()
    runs = {b: run(args.pg_admin_url, max_batch=b, jobs=args.jobs, threads=args.threads) for b in (64, 1)}
    print(f"\ninferq worker-path benchmark ({args.jobs} single-image jobs, {args.threads} threads, PostgreSQL)\n")
    print(f"{'run':<16}{'jobs/s':>9}{'CPU ms/job':>12}{'SQL/job':>9}{'mean batch':>12}{'succeeded':>11}")
    for b, r in runs.items():
        print(
            f"{f'max_batch={b}':<16}{r['rate']:9.1f}{r['cpu_ms']:12.2f}{r['statements']:9.1f}"
            f"{r['mean_batch']:12.1f}{r['done']:11d}"
        )
    print(f"\nmicro-batching vs MAX_BATCH=1 on the worker path: {runs[64]['rate'] / runs[1]['rate']:.2f}x")


if __name__ == "__main__":
    main()
