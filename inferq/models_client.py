"""CLI side of model administration: train (with a live progress line), optimize, promote, benchmark, evaluate,
report."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.table import Table

from inferq.client import TERMINAL, ApiError, _call

out = Console()
err = Console(stderr=True)


def progress_line(job: dict[str, Any]) -> str:
    """One line describing a model job now: status, epoch n/N and the last epoch's numbers."""
    result = job.get("result") or {}
    history = result.get("history") or []
    text = f"{job['status']}"
    if result.get("operation") == "train":
        text += f" · epoch {len(history)}/{result.get('epochs_planned', '?')}"
    if history:
        last = history[-1]
        text += " · " + " ".join(
            f"{k} {last[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in last
        )
    return text


def follow(api_url: str, job: dict[str, Any], *, timeout: float, poll_s: float = 1.0) -> dict[str, Any]:
    """Poll a job until it is terminal, redrawing its progress line; ApiError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    with err.status(progress_line(job)) as status:
        while job["status"] not in TERMINAL:
            if time.monotonic() > deadline:
                raise ApiError(f"job {job['id']} is still {job['status']} after {timeout:.0f}s; poll it later")
            time.sleep(poll_s)
            job = _call("GET", f"{api_url}/v1/jobs/{job['id']}", timeout=10)
            status.update(progress_line(job))
    return job


def _finish(api_url: str, job: dict[str, Any], wait: bool, timeout: float) -> bool:
    err.print(f"job {job['id']} queued ({api_url}/v1/jobs/{job['id']})")
    if not wait:
        return True
    job = follow(api_url, job, timeout=timeout)
    result = job.get("result") or {}
    if job["status"] != "succeeded":
        err.print(f"[red]{job['status']}[/]: {(job.get('error') or {}).get('detail', '')}")
        return False
    acc = result.get("test_accuracy")
    err.print(
        f"[green]registered {result.get('model_version')}[/]"
        + (f": test accuracy {acc:.4f}" if acc is not None else "")
    )
    return True


def train(api_url: str, name: str, params: dict[str, Any], *, wait: bool, timeout: float) -> bool:
    """POST a training job; with `wait`, follow it to the end with a live progress line."""
    job = _call("POST", f"{api_url}/v1/models/{name}/trainings", json=params)
    return _finish(api_url, job, wait, timeout)


def optimize(api_url: str, name: str, version: int, method: str, *, wait: bool, timeout: float) -> bool:
    """POST an optimize job for name:version; with `wait`, follow it."""
    job = _call("POST", f"{api_url}/v1/models/{name}/versions/{version}/optimize", json={"method": method})
    return _finish(api_url, job, wait, timeout)


def benchmark(api_url: str, name: str, version: int, *, wait: bool, timeout: float) -> bool:
    """POST a benchmark job for name:version; with `wait`, follow it."""
    job = _call("POST", f"{api_url}/v1/models/{name}/versions/{version}/benchmark")
    return _finish(api_url, job, wait, timeout)


def evaluate(
    api_url: str, ref: str, *, corruptions: list[str] | None, per_corruption: int, wait: bool, timeout: float
) -> bool:
    """POST a real-world evaluation of NAME[:VERSION] (default: the version the production alias names), then
    with `wait` follow it and print accuracy per corruption."""
    name, _, version = ref.partition(":")
    if not version:
        model = _call("GET", f"{api_url}/v1/models/{name}", timeout=10)
        version = str(model["aliases"].get("production") or max(v["version"] for v in model["versions"]))
    body: dict[str, Any] = {"per_corruption": per_corruption}
    if corruptions:
        body["corruptions"] = corruptions
    job = _call("POST", f"{api_url}/v1/models/{name}/versions/{version}/evaluate", json=body)
    err.print(f"job {job['id']} queued ({api_url}/v1/jobs/{job['id']})")
    if not wait:
        return True
    job = follow(api_url, job, timeout=timeout)
    if job["status"] != "succeeded":
        err.print(f"[red]{job['status']}[/]: {(job.get('error') or {}).get('detail', '')}")
        return False
    out.print(realworld_table(job["result"]))
    return True


def realworld_table(result: dict[str, Any]) -> Table:
    """An evaluation's result as a table: accuracy per corruption, overall, no-digit pictures given a label."""
    table = Table(title=f"{result.get('model_version', '')}: pictures as users send them")
    table.add_column("corruption")
    table.add_column("accuracy", justify="right")
    table.add_column("images", justify="right")
    for name, row in result["corruptions"].items():
        table.add_row(name, f"{row['accuracy']:.3f}", str(row["images"]))
    table.add_row("[bold]overall[/] (all but clean)", f"[bold]{result['overall']:.3f}[/]", "")
    shown = sum(r["images"] for r in result["non_digits"].values())
    table.add_row("no-digit pictures given a label", str(result["non_digits_labelled"]), str(shown))
    return table


def promote(api_url: str, name: str, alias: str, version: int) -> None:
    """Point name@alias at a version and print the model's aliases."""
    body = _call("PUT", f"{api_url}/v1/models/{name}/aliases/{alias}", json={"version": version})
    out.print(f"{name}@{alias} -> version {version}; aliases now {body['aliases']}")


def report_table(body: dict[str, Any]) -> Table:
    """The report as a table: one row per version."""
    table = Table(title=f"{body['name']}: versions measured on a worker")
    numbers = {"size", "test acc", "real-world acc", "ms @1", "img/s @64"}
    for col in (
        "version",
        "format/variant",
        "parent",
        "aliases",
        "size",
        "test acc",
        "real-world acc",
        "ms @1",
        "img/s @64",
    ):
        table.add_column(col, justify="right" if col in numbers else "left")
    for r in body["rows"]:
        table.add_row(
            r["ref"],
            f"{r['format']}/{r['variant']}",
            r["parent"] or "",
            ",".join(r["aliases"]),
            f"{r['size_bytes'] / 1024:.0f} KiB",
            f"{r['test_accuracy']:.4f}" if r["test_accuracy"] is not None else "",
            f"{r['realworld_accuracy']:.4f}" if r.get("realworld_accuracy") is not None else "",
            f"{r['latency_ms_batch1']:.3f}" if r["latency_ms_batch1"] is not None else "",
            f"{r['throughput_batch64']:,.0f}" if r["throughput_batch64"] is not None else "",
        )
    return table


def report(api_url: str, name: str) -> None:
    """Print GET /v1/models/{name}/report as a table."""
    out.print(report_table(_call("GET", f"{api_url}/v1/models/{name}/report", timeout=10)))
