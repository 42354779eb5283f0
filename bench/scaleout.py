#!/usr/bin/env python3
"""Scale-out benchmark: one worker pinned to one core vs two such workers on two cores, on the same bulk job.

This is the scale-out KEDA relies on when it adds inference workers (deploy/k8s). In one run it
  * trains the default MNIST CNN (a short run: the model's size, not its accuracy, sets the speed),
  * uploads one dataset of --items MNIST digits (bench/bulk.py's builder) through the API, in-process,
  * phase 1: starts one real worker (`python -m inferq worker --queues inference`) under `taskset -c 0`, with one
    TensorFlow intra-op and one inter-op thread, and times a score job of the whole dataset from "202 accepted" to
    "every prediction committed in PostgreSQL"; stops the worker (SIGTERM, warm shutdown),
  * phase 2: the same with two such workers, on cores 0 and 1, and a second score job of the same dataset,
  * prints both times and the speed-up (target >= 1.6x).

PostgreSQL, Redis and this process share the two cores with the workers, as they would share a small node.

    python bench/scaleout.py                    # 100,000 images, local PostgreSQL and Redis db 7
    python bench/scaleout.py --items 20000      # quicker
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import sqlalchemy as sa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
from bulk import build_dataset, busy_share, cpu_times, scratch_stack, wait_for  # noqa: E402

from inferq.access import ensure_local_key  # noqa: E402
from shared.db.engine import upgrade_database  # noqa: E402

ONE_THREAD = {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": "1"}


def start_worker(env: dict[str, str], core: int, log: Path) -> subprocess.Popen[bytes]:
    """A real inference worker pinned to `core`, with one TensorFlow thread each for intra- and inter-op work."""
    with open(log, "wb") as fh:
        return subprocess.Popen(
            ["taskset", "-c", str(core), sys.executable, "-m", "inferq", "worker", "--queues", "inference"],
            env={**env, **ONE_THREAD},
            cwd=ROOT,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(workers: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every worker (warm shutdown) and wait for each to exit."""
    for w in workers:
        if w.poll() is None:
            os.killpg(w.pid, signal.SIGTERM)
    for w in workers:
        w.wait(120)


def score(client: Any, engine: sa.Engine, dataset: str, items: int) -> tuple[float, tuple[float, float] | None]:
    """Seconds from POST /v1/jobs (score) to every prediction committed, and the cores' busy share meanwhile."""
    cpu0, t0 = cpu_times(), time.perf_counter()
    resp = client.post("/v1/jobs", json={"kind": "score", "dataset": dataset, "top_k": 1})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    job_id = resp.get_json()["id"]

    def committed() -> bool:
        with engine.connect() as c:
            sql = "SELECT completed_items + failed_items, completed_items FROM jobs WHERE id = :j"
            done, ok = c.execute(sa.text(sql), {"j": job_id}).one()
        if int(done) >= items:
            assert int(ok) == items, f"{items - int(ok)} items failed"
            return True
        return False

    wait_for(committed, 1800, "every prediction to be committed", interval=0.05)
    return time.perf_counter() - t0, busy_share(cpu0, cpu_times())


STARTS: list[float] = []  # seconds from a worker's exec to its default model loaded (the 0 -> 1 start, minus the pod)


def phase(
    cores: list[int], env: dict[str, str], tmp: Path, client: Any, engine: sa.Engine, dataset: str, items: int
) -> tuple[float, tuple[float, float] | None]:
    """Start one pinned worker per core, wait until each has loaded the model, score the dataset, stop them."""
    logs = [tmp / f"worker-{len(cores)}-{core}.log" for core in cores]
    t0 = time.perf_counter()
    workers = [start_worker(env, core, log) for core, log in zip(cores, logs, strict=True)]
    try:
        for log in logs:
            wait_for(lambda log=log: "default model" in log.read_text(errors="replace"), 180, "a worker", interval=0.05)
            STARTS.append(time.perf_counter() - t0)
        return score(client, engine, dataset, items)
    finally:
        stop(workers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--pg-admin-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    ap.add_argument("--epochs", type=int, default=1, help="Epochs of the model trained for the run.")
    args = ap.parse_args()
    if shutil.which("taskset") is None or (os.cpu_count() or 1) < 2:
        raise SystemExit("needs taskset (util-linux) and at least 2 cores")

    with scratch_stack(args.pg_admin_url, args.redis_url, "scaleout") as (settings, env, tmp):
        env["INFERQ_GPU"] = ""
        engine = None
        try:
            upgrade_database(settings)
            print(f"training the default model ({args.epochs} epoch(s)) ...", flush=True)
            train = [sys.executable, "-m", "inferq", "train-default", "--epochs", str(args.epochs)]
            subprocess.run(train, env=env, check=True, cwd=ROOT, capture_output=True)
            from api.app import create_app

            app = create_app(settings)
            client = app.test_client()
            client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {ensure_local_key(settings)[0]}"
            buf = io.BytesIO()
            np.save(buf, build_dataset(args.items))
            ds = client.post(
                "/v1/datasets?filename=scaleout.npy", data=buf.getvalue(), content_type="application/octet-stream"
            )
            assert ds.status_code == 201, ds.get_data(as_text=True)
            dataset = ds.get_json()["id"]
            engine = sa.create_engine(settings.resolved_database_url)
            print(f"phase 1: one worker on core 0, {args.items} images ...", flush=True)
            one_s, one_cpu = phase([0], env, tmp, client, engine, dataset, args.items)
            print(f"phase 2: two workers on cores 0 and 1, {args.items} images ...", flush=True)
            two_s, two_cpu = phase([0, 1], env, tmp, client, engine, dataset, args.items)
            app.extensions["inferq"].engine.dispose()
        finally:
            if engine is not None:
                engine.dispose()

    print(
        f"\ninferq scale-out benchmark ({os.cpu_count()} cores, PostgreSQL + Redis on the same cores, "
        f"chunk {settings.array_chunk_size}, batch {settings.score_batch}, 1 TF thread per worker)\n"
    )
    print(f"{'measure':<52}{'value':>16}")
    for label, secs, cpu in (("1 worker, core 0", one_s, one_cpu), ("2 workers, cores 0+1", two_s, two_cpu)):
        busy = f" (cores {cpu[0]:.0%} busy)" if cpu else ""
        print(f"{label + ': 202 -> all rows committed':<52}{secs:>14.2f} s   {args.items / secs:>7.0f} img/s{busy}")
    print(f"{'speed-up, 2 workers / 1 worker (target >= 1.6x)':<52}{one_s / two_s:>15.2f}x")
    starts = ", ".join(f"{s:.1f}" for s in STARTS)
    print(f"{'worker start: exec -> default model loaded':<52}{max(STARTS):>14.1f} s   (each: {starts})")


if __name__ == "__main__":
    main()
