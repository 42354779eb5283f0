#!/usr/bin/env python3
"""Busy mode: interactive latency while a bulk job runs, against the same stack idle, in one run.

On a scratch stack (its own PostgreSQL database, a Redis database, `inferq api` and one `inferq worker` serving
every lane, as `inferq up` runs them) it
  * uploads a dataset of --items MNIST digits (default 60,000) and scores it alone: the bulk job's images/s idle,
  * runs one interactive client (submit a single-image job over HTTP, long-poll it to the end, repeat) for
    --seconds with nothing else running: the idle p50/p99,
  * scores the dataset again while the same client runs until the score job ends: the p50/p99 during bulk and the
    bulk job's images/s shared,
and prints them; --json prints one JSON object as the last line (bench/online.py --busy merges it).

    python bench/busy.py --json
    python bench/busy.py --items 60000 --seconds 15 --pg-admin-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import requests
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench.bulk import build_dataset, scratch_stack, train_default, wait_for  # noqa: E402
from bench.online_stack import STAGES, sample_pngs, timed_job  # noqa: E402
from inferq.access import ensure_local_key  # noqa: E402
from shared.db.engine import upgrade_database  # noqa: E402
from shared.runtime.embedded import free_port  # noqa: E402

TERMINAL = ("succeeded", "failed", "canceled", "expired")


def interactive(
    url: str, headers: dict[str, str], until: threading.Event, images: list[bytes], stages: list[dict[str, float]]
) -> list[float]:
    """One client: submit a single-image job, long-poll it to the end, repeat until `until` is set; seconds each
    (and each job's stages into `stages`)."""
    s = requests.Session()
    s.headers.update(headers)
    lat: list[float] = []
    while not until.is_set():
        lat.append(timed_job(s, url, images[len(lat) % len(images)], stages=stages))
    return lat


def stage_medians(stages: list[dict[str, float]]) -> dict[str, float]:
    """The median milliseconds of each stage (bench.online_stack.STAGES)."""
    return {name: round(1000 * float(np.median([st[name] for st in stages])), 1) for name in STAGES} if stages else {}


def score(url: str, headers: dict[str, str], dataset: str) -> tuple[str, float]:
    """Submit a score job of the dataset and wait for its end; (status, images/s from 202 to the end)."""
    t0 = time.perf_counter()
    job = requests.post(f"{url}/v1/jobs", json={"kind": "score", "dataset": dataset}, headers=headers, timeout=60)
    job.raise_for_status()
    body = job.json()
    while body["status"] not in TERMINAL:
        body = requests.get(f"{url}/v1/jobs/{body['id']}", params={"wait": 5}, headers=headers, timeout=60).json()
    return body["status"], body["counts"]["total"] / (time.perf_counter() - t0)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:  # not listening yet, or still starting
        return False


def ms(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(1000 * ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


class StackCpu:
    """CPU seconds used so far by the stack: its processes and their children, and the PostgreSQL backends serving
    its database (found by the database's name in their process title)."""

    def __init__(self, roots: list[int], database: str) -> None:
        self.roots, self.database = roots, database
        self.seen: dict[int, float] = {}  # pid -> its CPU seconds when last read (an exited process keeps its share)

    def _processes(self) -> list[psutil.Process]:
        found = []
        for pid in self.roots:
            with contextlib.suppress(psutil.Error):
                root = psutil.Process(pid)
                found += [root, *root.children(recursive=True)]
        for proc in psutil.process_iter(["name", "cmdline"]):
            if proc.info["name"] == "postgres" and self.database in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
        return found

    def seconds(self) -> float:
        for proc in self._processes():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                self.seen[proc.pid] = times.user + times.system
        return sum(self.seen.values())


class Phase:
    """CPU seconds of the stack and busy cores of the whole machine over one phase of the run."""

    def __init__(self, cpu: StackCpu) -> None:
        self.cpu = cpu
        self.t0, self.stack0, self.machine0 = time.monotonic(), cpu.seconds(), _machine_busy()

    def end(self) -> tuple[float, float, float]:
        """(seconds, stack CPU seconds, machine busy core-seconds) since the phase began."""
        return time.monotonic() - self.t0, self.cpu.seconds() - self.stack0, _machine_busy() - self.machine0


def _machine_busy() -> float:
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def measure(  # noqa: PLR0913 - the stack, the dataset and the run's knobs
    url: str, headers: dict[str, str], dataset: str, items: int, seconds: float, cpu: StackCpu
) -> dict[str, Any]:
    images = sample_pngs(50)
    phase = Phase(cpu)
    _, bulk_idle = score(url, headers, dataset)
    bulk_s, bulk_cpu, bulk_machine = phase.end()
    stop = threading.Event()
    timer = threading.Timer(seconds, stop.set)
    timer.start()
    idle_stages: list[dict[str, float]] = []
    phase = Phase(cpu)
    idle = interactive(url, headers, stop, images, idle_stages)
    idle_s, idle_cpu, idle_machine = phase.end()
    shared: dict[str, Any] = {}
    stop = threading.Event()

    def bulk() -> None:
        shared["status"], shared["rate"] = score(url, headers, dataset)
        stop.set()

    phase = Phase(cpu)
    runner = threading.Thread(target=bulk)
    runner.start()
    time.sleep(0.5)  # the score job's chunks are queued and running
    during_stages: list[dict[str, float]] = []
    during = interactive(url, headers, stop, images, during_stages)
    runner.join()
    shared_s, shared_cpu, shared_machine = phase.end()
    return {
        "interactive_jobs_idle": len(idle),
        "interactive_p50_ms_idle": ms(idle, 0.5),
        "interactive_p99_ms_idle": ms(idle, 0.99),
        "interactive_jobs_during_bulk": len(during),
        "interactive_p50_ms_during_bulk": ms(during, 0.5),
        "interactive_p99_ms_during_bulk": ms(during, 0.99),
        "bulk_images_per_s_idle": round(bulk_idle),
        "bulk_images_per_s_shared": round(shared["rate"]),
        "bulk_shared_vs_idle": round(shared["rate"] / bulk_idle, 3),
        "bulk_status_shared": shared["status"],
        "interactive_stage_ms_idle": stage_medians(idle_stages),
        "interactive_stage_ms_during_bulk": stage_medians(during_stages),
        # where the CPU went: the stack's processes (API, workers, their PostgreSQL backends) and the whole machine
        "stack_cpu_ms_per_interactive_job_idle": round(1000 * idle_cpu / max(1, len(idle)), 1),
        "stack_cpu_ms_per_bulk_image_idle": round(1000 * bulk_cpu / items, 3),
        "stack_cores_busy": {
            "bulk_idle": round(bulk_cpu / bulk_s, 2),
            "interactive_idle": round(idle_cpu / idle_s, 2),
            "both": round(shared_cpu / shared_s, 2),
        },
        "machine_cores_busy": {
            "bulk_idle": round(bulk_machine / bulk_s, 2),
            "interactive_idle": round(idle_machine / idle_s, 2),
            "both": round(shared_machine / shared_s, 2),
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=60_000, help="Images in the bulk job's dataset.")
    ap.add_argument("--seconds", type=float, default=15.0, help="Seconds of the idle interactive run.")
    ap.add_argument("--pg-admin-url", "--database-url", default="postgresql+psycopg://postgres@127.0.0.1:5432/postgres")
    ap.add_argument("--redis-url", default="redis://127.0.0.1:6379/7")
    ap.add_argument("--epochs", type=int, default=2, help="Epochs of the model trained for the run.")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="INFERQ_NAME=VALUE",
        help="A setting for the stack's processes (repeatable), e.g. --set INFERQ_BULK_NICE=0.",
    )
    ap.add_argument(
        "--split-bulk",
        type=int,
        default=0,
        metavar="NICE",
        help="Serve the bulk lane from a second worker process (`nice -n NICE inferq worker --lanes bulk`) instead of "
        "the one worker serving every lane.",
    )
    ap.add_argument("--json", action="store_true", help="Print one JSON object as the last line.")
    args = ap.parse_args()
    overrides = dict(item.split("=", 1) for item in args.set)
    if bad := [k for k in overrides if not k.startswith("INFERQ_")]:
        ap.error(f"--set takes INFERQ_* settings, not {', '.join(bad)}")

    with scratch_stack(args.pg_admin_url, args.redis_url, "busy") as (settings, env, tmp):
        port = free_port()
        env.update(INFERQ_API_PORT=str(port), INFERQ_API_HOST="127.0.0.1", INFERQ_RATE_LIMIT_ENABLED="false")
        env.update(overrides)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            upgrade_database(settings)
            key = ensure_local_key(settings)[0]
            train_default(env, args.epochs)
            processes: list[tuple[str, list[str], list[str]]] = [
                ("worker", [], ["worker"]),
                ("api", [], ["api", "--workers", "2"]),
            ]
            if args.split_bulk:  # the bulk lane in a second worker process, at a lower CPU priority
                processes[0] = ("worker", [], ["worker", "--lanes", "interactive,training,ops"])
                processes.append(("worker-bulk", ["nice", "-n", str(args.split_bulk)], ["worker", "--lanes", "bulk"]))
            for name, prefix, cmd in processes:
                procs.append(
                    subprocess.Popen(  # noqa: S603
                        [*prefix, sys.executable, "-m", "inferq", *cmd],
                        env=env,
                        cwd=ROOT,
                        stdout=open(tmp / f"{name}.log", "wb"),  # noqa: SIM115
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
            cpu = StackCpu([p.pid for p in procs], make_url(settings.resolved_database_url).database or "")
            url, headers = f"http://127.0.0.1:{port}", {"Authorization": f"Bearer {key}"}
            wait_for(lambda: _answers(f"{url}/readyz"), 120, "the API")
            for name in (n for n, _, _ in processes if n.startswith("worker")):  # each worker loaded the default model
                log = tmp / f"{name}.log"
                wait_for(lambda log=log: "default model" in log.read_text(errors="replace"), 120, f"the {name}")
            buf = io.BytesIO()
            np.save(buf, build_dataset(args.items))
            ds = requests.post(
                f"{url}/v1/datasets", params={"filename": "busy.npy"}, data=buf.getvalue(), headers=headers, timeout=600
            )
            ds.raise_for_status()
            split = {"split_bulk_nice": args.split_bulk} if args.split_bulk else {}
            measured = measure(url, headers, ds.json()["id"], args.items, args.seconds, cpu)
            result = {"items": args.items, **overrides, **split, **measured}
        finally:
            for proc in procs:
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGTERM)
                    proc.wait(60)
    for key_, value in result.items():
        print(f"{key_:34} {value}")
    ratio = result["interactive_p50_ms_during_bulk"] / max(result["interactive_p50_ms_idle"], 0.1)
    print(f"interactive p50 during bulk / idle: {ratio:.2f}x (#16 asks <= 2x, p99 <= 500 ms, bulk shared >= 0.8)")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
