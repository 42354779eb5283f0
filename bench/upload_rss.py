"""`--upload-rss N` of bench/online.py: the API processes' RSS while one N-image .npy dataset is uploaded.

The array (N x 28 x 28 uint8; N = 1,000,000 is the issue's 784 MB) is written to disk, then streamed as the raw
body of POST /v1/datasets; a thread samples VmRSS of every process of the API's process group (gunicorn's
master and workers) every 20 ms from before the upload until the 201.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import requests
from online_stack import Stack, pgroup_pids, rss_bytes

MB = 1024 * 1024


def write_array(path: Path, n: int) -> int:
    """An (n, 28, 28) uint8 .npy of noise digits, written in blocks; its size in bytes."""
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(n, 28, 28))
    rng = np.random.default_rng(0)
    for start in range(0, n, 50_000):
        out[start : start + 50_000] = rng.integers(0, 256, size=out[start : start + 50_000].shape, dtype=np.uint8)
    out.flush()
    del out
    return path.stat().st_size


def upload_rss(stack: Stack, tmp: Path, n: int) -> dict[str, Any]:
    """Upload the array to the running API while sampling RSS; baseline, peak and the rise, per process and summed."""
    assert stack.api is not None
    src = tmp / "upload.npy"
    size = write_array(src, n)
    pgid = stack.api.pid
    base = {pid: rss_bytes(pid) for pid in pgroup_pids(pgid)}
    peak = dict(base)
    peak_sum = sum(base.values())
    done = threading.Event()

    def sample() -> None:
        nonlocal peak_sum
        while not done.is_set():
            now = {pid: rss_bytes(pid) for pid in pgroup_pids(pgid)}
            for pid, rss in now.items():
                peak[pid] = max(peak.get(pid, 0), rss)
            peak_sum = max(peak_sum, sum(now.values()))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.monotonic()
    with open(src, "rb") as body:
        r = requests.post(
            f"{stack.url}/v1/datasets", params={"filename": "upload.npy"}, data=body, headers=stack.headers, timeout=900
        )
    seconds = time.monotonic() - t0
    done.set()
    sampler.join()
    src.unlink()
    if r.status_code != 201:
        raise SystemExit(f"the upload answered {r.status_code}: {r.text[:500]}")
    rise = max(peak[pid] - base.get(pid, 0) for pid in peak)
    return {
        "upload_bytes": size,
        "upload_seconds": seconds,
        "upload_rss_base_mb": sum(base.values()) / MB,
        "upload_rss_peak_mb": peak_sum / MB,
        "upload_rss_rise_mb": (peak_sum - sum(base.values())) / MB,
        "upload_rss_rise_one_process_mb": rise / MB,
    }
