#!/usr/bin/env python3
"""A classify job's forward pass beside bulk chunks in the same process, with and without INFERQ_BULK_SHARED_PASSES.

TensorFlow runs every op on one pool of compute threads per process, first come first served, so a batch-1 pass
issued while bulk chunks run their 256-image passes waits behind all of them. In one process and one run this
times, on the default CNN (untrained: the same FLOPs):
  * a batch-1 forward pass (`KerasModel.predict`, what the micro-batcher calls) with nothing else running,
  * the same while --threads threads score 512-image chunks (`worker.scoring.score_items`: preprocessing, forward
    passes of --batch, result rows) with no limit on bulk passes,
  * the same with at most --passes bulk passes at once (`worker.scoring.share_compute_with_interactive`),
and prints the batch-1 p50/p90 and the chunks' images/s of each; --json prints one JSON object as the last line.

    python bench/shared_passes.py
    python bench/shared_passes.py --threads 3 --passes 1 --seconds 8 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from shared.config.settings import Settings  # noqa: E402
from shared.inputs.datasets import StoredItem  # noqa: E402
from worker import scoring  # noqa: E402
from worker.cnn import build_cnn  # noqa: E402
from worker.gpu import ensure_tensorflow  # noqa: E402
from worker.runtime import KerasModel  # noqa: E402


def measure(model: KerasModel, *, threads: int, passes: int | None, seconds: float, batch: int) -> dict[str, float]:
    """Batch-1 pass latencies (ms) while `threads` threads score chunks (none when threads is 0); `passes` limits
    the bulk passes at once (None: no limit)."""
    scoring.share_compute_with_interactive(passes or 0)
    settings = Settings(score_batch=batch)
    rng = np.random.default_rng(0)
    items = [StoredItem(i, str(i), None, pixels=rng.integers(0, 256, (28, 28), dtype=np.uint8)) for i in range(512)]
    stop, scored = threading.Event(), [0]

    def bulk() -> None:
        while not stop.is_set():
            rows = scoring.score_items(
                model, items, labels=[], top_k=3, batch=batch, settings=settings, version_id=1, job_id=uuid.uuid4()
            )
            scored[0] += len(rows)

    runners = [threading.Thread(target=bulk, daemon=True) for _ in range(threads)]
    for r in runners:
        r.start()
    time.sleep(1.0 if threads else 0.0)  # the chunks are under way
    one = np.zeros((1, 28, 28), np.float32)
    latencies: list[float] = []
    began, before = time.perf_counter(), scored[0]
    while time.perf_counter() - began < seconds:
        t = time.perf_counter()
        model.predict(one)
        latencies.append(1000 * (time.perf_counter() - t))
        time.sleep(0.02)  # one client's pace: a pass now and then, not back to back
    rate = (scored[0] - before) / (time.perf_counter() - began)
    stop.set()
    for r in runners:
        r.join()
    scoring.share_compute_with_interactive(0)
    return {
        "p50_ms": round(float(np.percentile(latencies, 50)), 2),
        "p90_ms": round(float(np.percentile(latencies, 90)), 2),
        "bulk_images_per_s": round(rate),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=3, help="Bulk chunk threads (INFERQ_SCORE_PARALLEL_CHUNKS).")
    ap.add_argument("--passes", type=int, default=1, help="The limit measured (INFERQ_BULK_SHARED_PASSES).")
    ap.add_argument("--batch", type=int, default=256, help="Images per bulk forward pass (INFERQ_SCORE_BATCH).")
    ap.add_argument("--seconds", type=float, default=8.0, help="Seconds of batch-1 passes per case.")
    ap.add_argument("--json", action="store_true", help="Print one JSON object as the last line.")
    args = ap.parse_args()

    ensure_tensorflow()
    model = KerasModel(build_cnn())
    for size in (1, args.batch):  # compile both shapes before timing
        model.predict(np.zeros((size, 28, 28), np.float32))
    cases = {
        "alone": measure(model, threads=0, passes=None, seconds=args.seconds, batch=args.batch),
        "no_limit": measure(model, threads=args.threads, passes=None, seconds=args.seconds, batch=args.batch),
        "limited": measure(model, threads=args.threads, passes=args.passes, seconds=args.seconds, batch=args.batch),
    }
    print(f"batch-1 forward pass beside {args.threads} bulk chunk threads (passes of {args.batch}), one process")
    print(f"{'case':34} {'p50 ms':>8} {'p90 ms':>8} {'bulk img/s':>11}")
    names = {"alone": "alone", "no_limit": "bulk, no limit", "limited": f"bulk, {args.passes} pass(es) at once"}
    for key, row in cases.items():
        print(f"{names[key]:34} {row['p50_ms']:8.2f} {row['p90_ms']:8.2f} {row['bulk_images_per_s']:11}")
    free, limited = cases["no_limit"], cases["limited"]
    result: dict[str, Any] = {f"{k}_{m}": v for k, row in cases.items() for m, v in row.items()}
    result["p50_limited_vs_no_limit"] = round(limited["p50_ms"] / free["p50_ms"], 3)
    result["bulk_limited_vs_no_limit"] = round(limited["bulk_images_per_s"] / max(1, free["bulk_images_per_s"]), 3)
    print(
        f"limit / no limit: batch-1 p50 {result['p50_limited_vs_no_limit']:.2f}x, "
        f"bulk images/s {result['bulk_limited_vs_no_limit']:.2f}x"
    )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
