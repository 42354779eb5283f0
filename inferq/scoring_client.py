"""`inferq score`: upload a dataset with a progress bar, run a score job, download its output, print a summary."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import requests
from rich.console import Console
from tqdm import tqdm

from inferq.client import TERMINAL, ApiError, _call, _check, auth_headers

out = Console()
UPLOAD_BLOCK = 1024 * 1024


class _ProgressFile:
    """A file whose reads advance a progress bar (requests streams it, with a Content-Length)."""

    def __init__(self, path: Path, bar: tqdm) -> None:
        self.fh = open(path, "rb")  # noqa: SIM115 - closed by close()
        self.size = path.stat().st_size
        self.bar = bar

    def __len__(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:
        block = self.fh.read(UPLOAD_BLOCK if n is None or n < 0 else n)
        self.bar.update(len(block))
        return block

    def close(self) -> None:
        self.fh.close()


def upload_dataset(api_url: str, path: Path) -> dict[str, Any]:
    """Stream the file to POST /v1/datasets with a progress bar; returns the dataset."""
    with tqdm(total=path.stat().st_size, unit="B", unit_scale=True, desc=f"upload {path.name}") as bar:
        body = _ProgressFile(path, bar)
        try:
            resp = requests.post(
                f"{api_url}/v1/datasets",
                params={"filename": path.name},
                data=body,
                headers={"Content-Type": "application/octet-stream", **auth_headers()},
                timeout=600,
            )
        except requests.RequestException as exc:
            raise ApiError(
                f"cannot reach the API at {api_url} ({type(exc).__name__}); is `inferq up` running?"
            ) from exc
        finally:
            body.close()
    return _check(resp)


def wait_with_progress(api_url: str, job: dict[str, Any], *, timeout: float) -> dict[str, Any]:
    """Poll the job, showing completed + failed items against the total, until it is terminal."""
    deadline = time.monotonic() + timeout
    with tqdm(total=job["request_counts"]["total"], unit="img", desc="scoring") as bar:
        while True:
            job = _call("GET", f"{api_url}/v1/jobs/{job['id']}", timeout=10)
            counts = job["request_counts"]
            bar.update(counts["completed"] + counts["failed"] - bar.n)
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise ApiError(f"job {job['id']} is still {job['status']} after {timeout:.0f}s")
            time.sleep(0.5)  # polling interval (a wait with a deadline, not synchronisation)


def download(api_url: str, job_id: str, dest: Path, *, errors: bool = False) -> int:
    """Stream the job's output (or error) file to `dest` in the format of its suffix; returns bytes written."""
    fmt = dest.suffix.lstrip(".").lower() or "csv"
    if fmt not in {"csv", "jsonl", "parquet"}:
        raise ApiError(f"cannot write {dest.name}: use a .csv, .jsonl or .parquet file name")
    url = f"{api_url}/v1/jobs/{job_id}/{'errors' if errors else 'output'}"
    with requests.get(url, params={"format": fmt}, headers=auth_headers(), stream=True, timeout=60) as resp:
        if resp.status_code >= 400:
            _check(resp)
        written = 0
        with open(dest, "wb") as fh:
            for block in resp.iter_content(UPLOAD_BLOCK):
                fh.write(block)
                written += len(block)
    return written


def score_dataset(
    api_url: str, path: Path, *, model: str | None, top_k: int | None, dest: Path, timeout: float
) -> bool:
    """Upload, score, download, summarize; True when the job succeeded."""
    ds = upload_dataset(api_url, path)
    out.print(f"dataset [bold]{ds['id']}[/]: {ds['item_count']} items, labels: {ds['label_counts'] or 'none'}")
    body = {"kind": "score", "dataset": ds["id"], **{k: v for k, v in {"model": model, "top_k": top_k}.items() if v}}
    job = _call("POST", f"{api_url}/v1/jobs", json=body)
    job = wait_with_progress(api_url, job, timeout=timeout)
    download(api_url, job["id"], dest)
    counts = job["request_counts"]
    out.print(
        f"job [bold]{job['id']}[/] {job['status']}: {counts['completed']} scored, {counts['failed']} failed "
        f"of {counts['total']} -> {dest}"
    )
    if counts["failed"]:
        err = dest.with_name(dest.stem + ".errors" + dest.suffix)
        download(api_url, job["id"], err, errors=True)
        out.print(f"errors -> {err}")
    summary = job.get("result") or {}
    if summary.get("accuracy") is not None:
        out.print(f"accuracy {summary['accuracy']:.4f} on {summary['labelled_items']} labelled items")
    return bool(job["status"] == "succeeded")
