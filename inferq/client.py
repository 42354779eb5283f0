"""A small HTTP client for the CLI: submit, poll with a deadline, print tables."""

from __future__ import annotations

import mimetypes
import time
from pathlib import Path
from typing import Any

import click
import requests
from rich.console import Console
from rich.table import Table

from inferq.edge import command_settings
from shared.config.settings import Settings

out = Console()
TERMINAL = {"succeeded", "failed", "canceled", "expired"}


class ApiError(RuntimeError):
    """The API answered with a problem, or could not be reached."""


def api_key(settings: Settings | None = None) -> str:
    """The CLI's API key: INFERQ_API_KEY, else the key `inferq up` saved in data_dir/api-key ('' if neither)."""
    if settings is None:  # inside a CLI command: that command's one Settings; else (a library call) read now
        settings = command_settings() if click.get_current_context(silent=True) else Settings()
    key = settings.api_key.get_secret_value().strip()
    if not key and settings.api_key_file.is_file():
        key = settings.api_key_file.read_text().strip()
    return key


def auth_headers() -> dict[str, str]:
    """The Authorization header carrying the CLI's API key (none when there is no key)."""
    key = api_key()
    return {"Authorization": f"Bearer {key}"} if key else {}


def _call(method: str, url: str, **kwargs: Any) -> dict[str, Any]:
    """One HTTP call with the API key; connection trouble and problem answers become ApiError."""
    headers = {**auth_headers(), **kwargs.pop("headers", {})}
    try:
        return _check(requests.request(method, url, headers=headers, timeout=kwargs.pop("timeout", 30), **kwargs))
    except requests.RequestException as exc:
        raise ApiError(
            f"cannot reach the API at {url.split('/v1/')[0]} ({type(exc).__name__}); is `inferq up` running?"
        ) from exc


def _check(resp: requests.Response) -> dict[str, Any]:
    if resp.status_code >= 400:
        try:
            body = resp.json()
            raise ApiError(f"{resp.status_code} {body.get('title')}: {body.get('detail')}")
        except ValueError:
            raise ApiError(f"{resp.status_code}: {resp.text[:200]}") from None
    data: dict[str, Any] = resp.json()
    return data


PREFER_WAIT_S = 20  # how long a submit asks the API to wait for its job (then the CLI long-polls)


def submit(  # noqa: PLR0913 - one parameter per job field
    api_url: str,
    paths: tuple[Path, ...],
    *,
    model: str | None,
    top_k: int | None,
    deadline_s: float | None = None,
    priority: int | None = None,
) -> dict[str, Any]:
    """POST the files as one multipart classify job, asking the API to hold the answer until the job finishes
    (`Prefer: wait`, up to INFERQ_MAX_WAIT_S): a quick job comes back finished, with no poll."""
    files = [
        ("images", (p.name, p.read_bytes(), mimetypes.guess_type(p.name)[0] or "application/octet-stream"))
        for p in paths
    ]
    fields = {"model": model, "top_k": top_k, "deadline_s": deadline_s, "priority": priority}
    data = {k: str(v) for k, v in fields.items() if v is not None}
    return _call(
        "POST", f"{api_url}/v1/jobs", files=files, data=data, headers={"Prefer": f"wait={PREFER_WAIT_S}"}, timeout=60
    )


def wait(api_url: str, job_id: str, *, timeout: float) -> dict[str, Any]:
    """Long-poll the job until it is terminal or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while True:
        wait_s = max(0.0, min(20.0, deadline - time.monotonic()))
        job = _call("GET", f"{api_url}/v1/jobs/{job_id}", params={"wait": wait_s}, timeout=wait_s + 10)
        if job["status"] in TERMINAL:
            return job
        if time.monotonic() >= deadline:
            raise ApiError(f"job {job_id} is still {job['status']} after {timeout:.0f}s; poll it later")


def classify_files(
    api_url: str,
    paths: tuple[Path, ...],
    *,
    model: str | None,
    top_k: int | None,
    timeout: float,
    deadline_s: float | None = None,
    priority: int | None = None,
) -> bool:
    """Submit, wait and print one row per image; False if the job did not succeed."""
    try:
        with out.status("submitting..."):
            job = submit(api_url, paths, model=model, top_k=top_k, deadline_s=deadline_s, priority=priority)
        if job["status"] not in TERMINAL:
            with out.status(f"job {job['id']} {job['status']}, waiting..."):
                job = wait(api_url, job["id"], timeout=timeout)
    except ApiError as exc:
        out.print(f"[red]error:[/] {exc}")
        return False
    if job["status"] == "expired":  # none of its images ran
        out.print(f"[yellow]job {job['id']} expired:[/] {(job.get('error') or {}).get('detail', '')}")
        return False
    table = Table(title=f"job {job['id']} · {job['status']} · model {job.get('model_version') or job['model']}")
    for col in ("image", "label", "confidence", "top-k", "warnings"):
        table.add_column(col)
    for p in job.get("predictions") or []:
        if p["status"] == "succeeded":
            topk = "  ".join(f"{t['label']}:{t['confidence']:.3f}" for t in p["top_k"] or [])
            confidence = "" if p["confidence"] is None else f"{p['confidence']:.4f}"
            label = "[yellow]none[/]" if p["label"] is None else p["label"]  # nothing to read: see warnings
            table.add_row(p["filename"] or str(p["index"]), label, confidence, topk, ", ".join(p.get("warnings") or []))
        else:
            table.add_row(
                p["filename"] or str(p["index"]),
                "[red]error[/]",
                "",
                (p.get("error") or {}).get("detail", ""),
                "",
            )
    out.print(table)
    return bool(job["status"] == "succeeded")


def show_jobs(api_url: str, *, status: str | None, limit: int) -> None:
    """Print the newest jobs."""
    params: dict[str, Any] = {"limit": limit}
    if status:
        params["status"] = status
    body = _call("GET", f"{api_url}/v1/jobs", params=params, timeout=10)
    table = Table("id", "kind", "status", "model", "done/total", "created")
    for j in body["data"]:
        c = j["counts"]
        table.add_row(
            j["id"],
            j["kind"],
            j["status"],
            j.get("model_version") or j["model"],
            f"{c['completed'] + c['failed']}/{c['total']}",
            j["created_at"],
        )
    out.print(table)


def show_models(api_url: str) -> None:
    """Print every model version with its aliases and accuracy."""
    body = _call("GET", f"{api_url}/v1/models", timeout=10)
    table = Table("model", "version", "format", "aliases", "size", "test accuracy")
    for m in body["data"]:
        for v in m["versions"]:
            acc = v["metrics"].get("test_accuracy")
            table.add_row(
                m["name"],
                str(v["version"]),
                f"{v['format']}/{v['variant']}",
                ",".join(v["aliases"]),
                f"{v['size_bytes'] / 1e6:.2f} MB",
                f"{acc:.4f}" if acc is not None else "",
            )
    out.print(table)
