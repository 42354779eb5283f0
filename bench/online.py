#!/usr/bin/env python3
"""Online benchmark: raw model throughput vs end-to-end single-image jobs, with and without micro-batching.

In one run it measures
  * raw `predict` throughput of the default model at batch 1 and 64 (the reference),
  * end-to-end completed single-image jobs/s with 1 and 32 concurrent HTTP clients (submit + long poll until
    done), with micro-batching (INFERQ_MAX_BATCH=64) and with INFERQ_MAX_BATCH=1,
  * with --heavy (implied by --json): the same 32 clients on a wider CNN (>= 20x the default model's FLOPs),
    micro-batching vs INFERQ_MAX_BATCH=1 (`heavy_batching_gain`),
  * with --compare REF: the same load against a temporary git worktree of REF first (the baseline),
  * with --peer mlserver: Seldon MLServer with adaptive batching on the same model and clients,
and prints mean forward-pass batch size, p50/p99 latency and the ratios; --json adds one JSON object as the last line.

Every database it writes is one it created: SQLite in a temp dir by default, or with --database-url (a
PostgreSQL *server*) a fresh `inferq_bench_<hex>` database per stack, dropped afterwards. The database named in
the URL is never written (the benchmark used to truncate it).

    python bench/online.py                                  # embedded defaults in a temp dir (SQLite + bundled Redis)
    python bench/online.py --compare 724fcf7 --json --database-url postgresql+psycopg://postgres@127.0.0.1:5432/postgres
    python bench/online.py --profile 300                    # ms of CPU per job per stage (+ --compare REF)
    python bench/online.py --metrics-overhead --repeats 3   # 32 clients, metrics on/off interleaved, same run
    python bench/online.py --upload-rss 1000000             # API RSS while a 784 MB .npy dataset is uploaded
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(ROOT), str(BENCH)]

from online_stack import (  # noqa: E402
    Run,
    Stack,
    create_own_database,
    drop_own_database,
    e2e,
    sample_pngs,
)

from shared.runtime.embedded import EmbeddedRedis, free_port  # noqa: E402


class Bench:
    """The temp dir, the Redis, and the stacks (one per source tree) of one benchmark run; cleans up after itself."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.tmp = Path(tempfile.mkdtemp(prefix="inferq-bench-"))
        self.redis = None if args.redis_url else EmbeddedRedis(self.tmp / "redis", free_port(), appendonly=False)
        self.redis_url = args.redis_url or self.redis.start().url  # type: ignore[union-attr]
        self.stacks: list[Stack] = []
        self.worktrees: list[Path] = []
        self.databases: list[str] = []

    def stack(self, name: str, tree: Path, redis_db: int) -> Stack:
        """A stack of `tree`'s code with its own database, data dir and port (prepared: schema, key, model)."""
        data_dir = self.tmp / f"stack-{len(self.stacks)}"
        data_dir.mkdir()
        if self.args.database_url:
            db_url = create_own_database(self.args.database_url)
            self.databases.append(db_url)
        else:
            db_url = f"sqlite:///{data_dir / 'inferq.db'}"
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
        env.update(
            PYTHONPATH=str(tree),
            INFERQ_DATA_DIR=str(data_dir),
            INFERQ_DATABASE_URL=db_url,
            INFERQ_REDIS_URL=self.redis_url.rsplit("/", 1)[0] + f"/{redis_db}",
            INFERQ_API_PORT=str(port),
            TF_CPP_MIN_LOG_LEVEL="2",
            PYTHONUNBUFFERED="1",
            INFERQ_RATE_LIMIT_ENABLED="false",  # the benchmark measures capacity, not the per-key request policy
            INFERQ_WORKER_METRICS_PORT=str(free_port()),
            INFERQ_DATASET_MAX_UPLOAD_BYTES=str(2 * 1024**3),
        )
        stack = Stack(name, tree, data_dir, db_url, env, port)
        print(
            f"[{name}] migrating, making a key, training the default model ({self.args.epochs} epoch(s)) ...",
            flush=True,
        )
        stack.prepare(self.args.epochs)
        self.stacks.append(stack)
        return stack

    def worktree(self, ref: str) -> Path:
        """A temporary detached git worktree of `ref` (removed at the end)."""
        where = self.tmp / f"ref-{ref.replace('/', '_')}"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(where), ref], check=True, capture_output=True
        )
        self.worktrees.append(where)
        return where

    def close(self) -> None:
        for stack in self.stacks:
            stack.stop_api()
        for where in self.worktrees:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(where)], capture_output=True)
        for url in self.databases:
            drop_own_database(url, self.args.database_url)
        if self.redis is not None:
            self.redis.stop()
        if not self.args.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
        else:
            print(f"kept {self.tmp}")


def raw_throughput(stack: Stack, batch: int, seconds: float, name: str = "mnist-cnn") -> float:
    """Images/s of a bare model (the default one unless `name`) at a fixed batch size, on preprocessed inputs."""
    from worker.runtime import load_model

    model = load_model(max((stack.data_dir / "models" / name).glob("*/model.keras")), "keras")
    x = np.random.default_rng(0).random((batch, 28, 28), dtype=np.float32)
    for _ in range(3):
        model.predict(x)
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model.predict(x)
        n += batch
    return n / (time.perf_counter() - start)


def show(run: Run) -> None:
    print(
        f"{run.label:<58}{run.rate:9.1f} jobs/s  mean batch {run.mean_batch:5.2f}  p50 {run.pct(50):7.1f} ms"
        f"  p99 {run.pct(99):7.1f} ms",
        flush=True,
    )
    if run.cpu_split and run.jobs:
        parts = "  ".join(f"{part} {1000 * s / run.jobs:.1f}" for part, s in run.cpu_split.items())
        print(f"{'':<4}CPU ms per job: {parts}", flush=True)


def standard_runs(stack: Stack, args: argparse.Namespace, images: list[bytes], full: bool) -> dict[str, Any]:
    """1 and 32 clients with micro-batching (and, if `full`, with INFERQ_MAX_BATCH=1 too); the JSON fields."""
    stack.start_api()
    try:
        plan = [(1, 64), (32, 64)] + ([(1, 1), (32, 1)] if full else [])
        runs = {}
        for clients, mb in plan:
            runs[(clients, mb)] = e2e(stack, clients=clients, max_batch=mb, seconds=args.seconds, images=images)
            show(runs[(clients, mb)])
    finally:
        stack.stop_api()
    out = {
        "jobs_per_s_32": runs[(32, 64)].rate,
        "p50_ms_32": runs[(32, 64)].pct(50),
        "p99_ms_32": runs[(32, 64)].pct(99),
        "mean_batch_32": runs[(32, 64)].mean_batch,
        "jobs_per_s_1": runs[(1, 64)].rate,
        "p50_ms_1": runs[(1, 64)].pct(50),
        "p99_ms_1": runs[(1, 64)].pct(99),
    }
    out.update(  # flat, like every field: cpu_ms_per_job_32_api, ..._worker, ..._postgres, ..._clients, ...
        (f"cpu_ms_per_job_32_{part.split()[-1]}", round(1000 * used / max(1, runs[(32, 64)].jobs), 2))
        for part, used in runs[(32, 64)].cpu_split.items()
    )
    if full:
        out.update(
            p50_ms_1_max_batch_1=runs[(1, 1)].pct(50),
            jobs_per_s_1_max_batch_1=runs[(1, 1)].rate,
            jobs_per_s_32_max_batch_1=runs[(32, 1)].rate,
            p99_ms_32_max_batch_1=runs[(32, 1)].pct(99),
        )
    return out


def heavy_runs(stack: Stack, args: argparse.Namespace, images: list[bytes]) -> dict[str, float]:
    """32 clients on the wider CNN: micro-batching vs INFERQ_MAX_BATCH=1."""
    from heavy_model import HEAVY_NAME, register_heavy

    ratio = register_heavy(stack.data_dir, stack.database_url)
    stack.start_api()
    try:
        on = e2e(stack, clients=32, max_batch=64, seconds=args.seconds, images=images, model=HEAVY_NAME)
        show(on)
        off = e2e(stack, clients=32, max_batch=1, seconds=args.seconds, images=images, model=HEAVY_NAME)
        show(off)
    finally:
        stack.stop_api()
    raw_b1, raw_b64 = (raw_throughput(stack, batch, 3.0, name=HEAVY_NAME) for batch in (1, 64))
    return {
        "heavy_flops_ratio": ratio,
        "heavy_raw_img_per_s_b1": raw_b1,
        "heavy_raw_img_per_s_b64": raw_b64,
        "heavy_raw_batching_gain": raw_b64 / raw_b1,  # the ceiling: what batching gives the bare model on this CPU
        "heavy_jobs_per_s_32": on.rate,
        "heavy_jobs_per_s_32_max_batch_1": off.rate,
        "heavy_mean_batch_32": on.mean_batch,
        "heavy_p99_ms_32": on.pct(99),
        "heavy_batching_gain": on.rate / off.rate if off.rate else float("nan"),
    }


def peer_runs(stack: Stack, args: argparse.Namespace, images: list[bytes]) -> dict[str, Any]:
    """MLServer on the same default model file, same clients; errors are reported, not raised."""
    from peer_mlserver import run_peer

    from shared.inputs.imaging import prepare

    arrays = [prepare(png, max_pixels=10**8).image.reshape(1, 28, 28, 1).astype(np.float32) for png in images]
    try:
        out = run_peer(
            stack.data_dir, stack.data_dir / "models" / "mnist-cnn" / "1" / "model.keras", arrays, 32, args.seconds
        )
    except (Exception, SystemExit) as exc:  # an install or start failure is a result too: say what failed
        return {"mlserver_error": f"{type(exc).__name__}: {exc}"[-2000:]}
    print(
        f"{'MLServer (adaptive batching, synchronous, stores nothing): 32 clients':<58}"
        f"{out['mlserver_requests_per_s_32']:9.1f} req/s   p50 {out['mlserver_p50_ms_32']:7.1f} ms"
        f"  p99 {out['mlserver_p99_ms_32']:7.1f} ms",
        flush=True,
    )
    return out


def merge(result: dict[str, Any], extra: dict[str, Any], prefix: str) -> None:
    """Add `extra`'s fields; a name already present is kept and the newcomer is stored as prefix_name."""
    for key, value in extra.items():
        result[key if key not in result else f"{prefix}_{key}"] = value


def busy_fields(args: argparse.Namespace) -> dict[str, Any]:
    """bench/busy.py's result: it is run with --json and its last output line (one JSON object) is merged."""
    script = BENCH / "busy.py"
    if not script.exists():
        return {"busy_error": "bench/busy.py is not in this tree"}
    cmd = [sys.executable, str(script), "--json"] + (["--database-url", args.database_url] if args.database_url else [])
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    try:
        out: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
        return out
    except (IndexError, json.JSONDecodeError):
        return {"busy_error": f"exit {done.returncode}: {(done.stderr or done.stdout)[-1000:]}"}


def full_run(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Baseline (with --compare), working tree, heavy mode and the peer, in that order, in this one process run."""
    images = sample_pngs()
    result: dict[str, Any] = {
        "cores": os.cpu_count(),
        "seconds_per_run": args.seconds,
        "loadavg_start": os.getloadavg()[0],
    }
    if args.compare:
        base = bench.stack(f"baseline {args.compare}", bench.worktree(args.compare), 1)
        result["ref"] = args.compare
        merge(result, {f"baseline_{k}": v for k, v in standard_runs(base, args, images, full=False).items()}, "x")
    work = bench.stack("working tree", ROOT, 2)
    result["raw_img_per_s_b1"] = raw_throughput(work, 1, 5)
    result["raw_img_per_s_b64"] = raw_throughput(work, 64, 5)
    result.update(standard_runs(work, args, images, full=True))
    if args.heavy or args.json:
        result.update(heavy_runs(work, args, images))
    if args.peer == "mlserver":
        result.update(peer_runs(work, args, images))
    if args.busy:
        merge(result, busy_fields(args), "busy")
    result["loadavg_end"] = os.getloadavg()[0]
    return result


def summary(result: dict[str, Any]) -> None:
    print(
        f"\nraw model.predict  batch 1: {result['raw_img_per_s_b1']:.0f} img/s  batch 64: "
        f"{result['raw_img_per_s_b64']:.0f} img/s   (load average {result['loadavg_start']:.1f} at the start)"
    )
    if "baseline_jobs_per_s_32" in result:
        print(
            f"32 clients: {result['jobs_per_s_32']:.1f} jobs/s vs baseline {result['baseline_jobs_per_s_32']:.1f} "
            f"= {result['jobs_per_s_32'] / result['baseline_jobs_per_s_32']:.2f}x (target >= 3x)"
        )
    print(
        f"p99 at 32 clients {result['p99_ms_32']:.0f} ms (target <= 300); p50 at 1 client {result['p50_ms_1']:.1f} ms "
        f"vs {result['p50_ms_1_max_batch_1']:.1f} ms with MAX_BATCH=1 (target <= 15 and <=)"
    )
    if "heavy_batching_gain" in result:
        print(
            f"heavy model ({result['heavy_flops_ratio']:.1f}x FLOPs): batching gain "
            f"{result['heavy_batching_gain']:.2f}x (target >= 3), mean batch {result['heavy_mean_batch_32']:.1f}; "
            f"the bare model gains {result['heavy_raw_batching_gain']:.2f}x from batch 1 to 64 on this CPU "
            f"({result['heavy_raw_img_per_s_b1']:.0f} -> {result['heavy_raw_img_per_s_b64']:.0f} img/s)"
        )
    cpu = {k.removeprefix("cpu_ms_per_job_32_"): v for k, v in result.items() if k.startswith("cpu_ms_per_job_32_")}
    if cpu:
        parts = "  ".join(f"{k} {v:.1f}" for k, v in cpu.items())
        print(f"CPU ms per job at 32 clients: {parts}")


def metrics_overhead(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """Jobs/s with 32 clients and micro-batching, metrics on and off interleaved (on, off, on, off, ...), and the CPU
    the API's and the worker's processes spent per job: on a shared machine throughput swings by 10-20% between
    runs, while CPU per job, which is what the metrics add to, moves far less."""
    stack, images = bench.stack("working tree", ROOT, 2), sample_pngs()
    rates: dict[str, list[float]] = {"true": [], "false": []}
    cpu: dict[str, list[float]] = {"true": [], "false": []}
    for i in range(args.repeats):
        for enabled in ("true", "false") if i % 2 == 0 else ("false", "true"):  # ABBA: drift hits both alike
            stack.start_api(INFERQ_METRICS_ENABLED=enabled)
            try:
                run = e2e(
                    stack, clients=32, max_batch=64, seconds=args.seconds, images=images, INFERQ_METRICS_ENABLED=enabled
                )
            finally:
                stack.stop_api()
            run.label = f"metrics {'on' if enabled == 'true' else 'off'} (round {i + 1})"
            show(run)
            print(f"    CPU of the API and the worker: {run.cpu_ms_per_job:.2f} ms per job")
            rates[enabled].append(run.rate)
            cpu[enabled].append(run.cpu_ms_per_job)
    on, off = float(np.mean(rates["true"])), float(np.mean(rates["false"]))
    cpu_on, cpu_off = float(np.median(cpu["true"])), float(np.median(cpu["false"]))
    pairs = [a / b for a, b in zip(rates["true"], rates["false"], strict=True)]
    print(
        f"\nmetrics on {on:.1f} jobs/s, off {off:.1f} jobs/s: cost {1 - on / off:+.1%}; per-round on/off "
        f"{', '.join(f'{p:.3f}' for p in pairs)} (spread = the noise)\n"
        f"CPU per job (median of rounds): on {cpu_on:.2f} ms, off {cpu_off:.2f} ms: cost {cpu_on / cpu_off - 1:+.1%}; "
        f"per round on {', '.join(f'{c:.2f}' for c in cpu['true'])}, off {', '.join(f'{c:.2f}' for c in cpu['false'])}"
    )
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "metrics_cost.py"), "--json"], capture_output=True, text=True, check=True
    )
    recording_us = float(json.loads(done.stdout.splitlines()[-1])["metrics_us_per_job"])
    share = recording_us / (1000 * cpu_off)
    print(
        f"recording the metrics (bench/metrics_cost.py, worst case per job): {recording_us:.0f} µs = {share:.2%} of "
        f"the {cpu_off:.1f} ms of CPU a job costs with metrics off"
    )
    return {
        "metrics_recording_us_per_job": recording_us,
        "metrics_recording_share_of_job_cpu": share,
        "metrics_on_jobs_per_s_32": on,
        "metrics_off_jobs_per_s_32": off,
        "metrics_cost": 1 - on / off,
        "metrics_round_ratios": pairs,
        "metrics_on_cpu_ms_per_job": cpu_on,
        "metrics_off_cpu_ms_per_job": cpu_off,
        "metrics_cpu_cost": cpu_on / cpu_off - 1,
    }


def profile(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    """ms of CPU per job per stage; with --compare, the baseline's table beside (run with its code, this harness)."""
    from profile_online import print_table

    tables = {}
    trees = ([(f"baseline {args.compare}", bench.worktree(args.compare))] if args.compare else []) + [("now", ROOT)]
    for i, (name, tree) in enumerate(trees):
        stack = bench.stack(name, tree, 1 + i)
        code = (
            "import json, sys; sys.path[:0] = [sys.argv[1], sys.argv[2]]; from profile_online import *; "
            "from shared.config.settings import Settings; from online_stack import sample_pngs; "
            "print(json.dumps(profile_jobs(Settings(max_batch=1), json.loads(sys.argv[3]), sample_pngs(), "
            "int(sys.argv[4]))))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, str(tree), str(BENCH), json.dumps(stack.headers), str(args.profile)],
            env=stack.env,
            cwd=tree,
            check=True,
            capture_output=True,
            text=True,
        )
        tables[name] = json.loads(out.stdout.strip().splitlines()[-1])
    names = list(tables)
    print(f"\nCPU per single-image job, by stage (ms; {args.profile} jobs one at a time, INFERQ_MAX_BATCH=1)\n")
    print_table(tables[names[0]] if len(names) > 1 else None, tables[names[-1]], (names[0], names[-1]))
    return {"profile": tables}


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20, help="Measured seconds per end-to-end run.")
    ap.add_argument(
        "--database-url",
        default="",
        help="A PostgreSQL server; each stack gets its own new database "
        "there (inferq_bench_*), dropped afterwards. Default: SQLite in the temp dir.",
    )
    ap.add_argument("--redis-url", default="", help="Default: the bundled redis-server on a free port.")
    ap.add_argument("--keep", action="store_true", help="Keep the temp dir (logs) afterwards.")
    ap.add_argument("--epochs", type=int, default=1, help="Epochs of the default model trained per stack.")
    ap.add_argument("--compare", metavar="REF", default="", help="Run the same load on a worktree of REF first.")
    ap.add_argument("--json", action="store_true", help="Print one JSON object as the last line (implies --heavy).")
    ap.add_argument("--heavy", action="store_true", help="Also the wide CNN at 32 clients, batching on vs off.")
    ap.add_argument("--peer", choices=["mlserver"], default=None, help="Also Seldon MLServer on the same model.")
    ap.add_argument("--busy", action="store_true", help="Also run bench/busy.py --json and merge its fields.")
    ap.add_argument("--metrics-overhead", action="store_true", help="Only: metrics on vs off, interleaved.")
    ap.add_argument("--repeats", type=int, default=2, help="Rounds of on+off for --metrics-overhead.")
    ap.add_argument("--profile", type=int, metavar="JOBS", default=0, help="Only: CPU per job per stage.")
    ap.add_argument("--upload-rss", type=int, metavar="IMAGES", default=0, help="Only: API RSS during an upload.")
    return ap.parse_args()


def main() -> None:
    args = parse_args()
    if args.database_url and not args.database_url.startswith("postgresql"):
        raise SystemExit("--database-url names a PostgreSQL server (the benchmark creates its own databases there)")
    bench = Bench(args)
    try:
        if args.profile:
            result = profile(bench, args)
        elif args.metrics_overhead:
            result = metrics_overhead(bench, args)
        elif args.upload_rss:
            from upload_rss import upload_rss

            stack = bench.stack("working tree", ROOT, 2)
            stack.start_api()
            result = upload_rss(stack, bench.tmp, args.upload_rss)
            print("\n".join(f"{k:<32}{v:14.1f}" for k, v in result.items()))
        else:
            result = full_run(bench, args)
            summary(result)
    finally:
        bench.close()
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
