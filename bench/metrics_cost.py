"""CPU cost of the Prometheus metrics per single-image classify job, measured on the code that records them.

End to end, metrics on vs off moves throughput by less than this machine's run-to-run noise (10-20%), so that
comparison cannot resolve 2%. This measures the recording itself instead, in one process and the same run, as the
API's gunicorn workers do it (prometheus-client's multiprocess mode, values in mmap'd files) and as the worker does
it (in memory), at the worst case for a job: its own forward pass (batch of 1) and three HTTP requests (the
submission and two polls). `bench/online.py --metrics-overhead` divides it by the CPU the API's and worker's
processes spend per job.

    python bench/metrics_cost.py            # prints microseconds per job and per part
    python bench/metrics_cost.py --json     # ... and a JSON object as the last line
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQUESTS_PER_JOB = 3  # POST /v1/jobs, then long polls (one usually answers the end; two to be safe)


def per_call_us(fn: Callable[[], object], n: int) -> float:
    """Median over 5 rounds of the CPU time of n calls, in microseconds per call."""
    rounds = []
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(n):
            fn()
        rounds.append((time.process_time() - t0) / n * 1e6)
    return sorted(rounds)[2]


def api_side(n: int) -> dict[str, float]:
    """The API's before/after-request hooks (api.metrics) on a poll and on a submission's 202."""
    from flask import Flask, Response

    from api import metrics as api_metrics

    app = Flask("metrics-cost")
    app.add_url_rule("/v1/jobs/<job_id>", "jobs.get_job", lambda job_id: "", methods=["GET"])
    app.add_url_rule("/v1/jobs", "jobs.create_job", lambda: "", methods=["POST"])
    poll = Response('{"status": "running"}', mimetype="application/json")
    created = Response(json.dumps({"id": "x", "kind": "classify", "status": "queued"}), mimetype="application/json")

    def request(resp: Response) -> None:
        api_metrics._started()
        api_metrics._record(resp)

    with app.test_request_context("/v1/jobs/0f8fad5b-d9cb-469f-a165-70867728950e"):
        poll_us = per_call_us(lambda: request(poll), n)
    with app.test_request_context("/v1/jobs", method="POST"):
        submit_us = per_call_us(lambda: request(created), n)
    return {"api_poll_us": poll_us, "api_submit_us": submit_us}


def worker_side(n: int) -> dict[str, float]:
    """Per job: its queue and run time, its image outcome; per forward pass (a batch of one): size, wait, time."""
    from shared.runtime import metrics

    created = datetime.now(UTC)
    started, finished = created + timedelta(seconds=0.02), created + timedelta(seconds=0.05)
    size, forward = metrics.BATCH_SIZE.labels("classify"), metrics.FORWARD.labels("mnist-cnn", "1", "keras")

    def job() -> None:
        metrics.observe_started("classify", created, started)
        size.observe(1)
        metrics.BATCH_WAIT.observe(0.001)
        forward.observe(0.002)
        metrics.IMAGES.labels("succeeded").inc(1)
        metrics.IMAGES.labels("failed").inc(0)
        metrics.observe_finished([("classify", "succeeded", created, finished)])

    return {"worker_job_us": per_call_us(job, n)}


def measure(n: int) -> dict[str, float]:
    """Run in a child process per mode, so that PROMETHEUS_MULTIPROC_DIR is set (or not) before the import."""
    import subprocess

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        for mode, env in (("multiprocess", {"PROMETHEUS_MULTIPROC_DIR": folder}), ("in_memory", {})):
            child = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
            child.update(env, PYTHONPATH=str(ROOT))
            done = subprocess.run(
                [sys.executable, __file__, "--child", str(n)], env=child, capture_output=True, text=True, check=True
            )
            out.update({f"{mode}_{k}": v for k, v in json.loads(done.stdout.splitlines()[-1]).items()})
    # the API runs multiprocess (gunicorn); the worker either way: take the dearer
    out["metrics_us_per_job"] = (
        (REQUESTS_PER_JOB - 1) * out["multiprocess_api_poll_us"]
        + out["multiprocess_api_submit_us"]
        + max(out["multiprocess_worker_job_us"], out["in_memory_worker_job_us"])
    )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20_000, help="Calls per round (5 rounds, median).")
    ap.add_argument("--json", action="store_true", help="Print a JSON object as the last line.")
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        sys.path.insert(0, str(ROOT))
        print(json.dumps({**api_side(args.child), **worker_side(args.child)}))
        return
    result = measure(args.n)
    for key, value in result.items():
        print(f"{key:40s} {value:8.2f} µs")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
