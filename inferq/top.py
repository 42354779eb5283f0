"""`inferq top`: a live terminal view of the stack from its Prometheus endpoints (the API's and the workers').

The pure parts (parse a scrape, summarize two snapshots, render a rich table) are separate from the loop so they
can be tested on canned scrape text."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import requests
from prometheus_client.parser import text_string_to_metric_families
from rich.console import Group
from rich.table import Table

Labels = tuple[tuple[str, str], ...]
Samples = dict[tuple[str, Labels], float]


def parse(text: str) -> Samples:
    """Every sample of a Prometheus text exposition, keyed by (name, sorted labels)."""
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            out[key] = out.get(key, 0.0) + float(s.value)
    return out


def total(samples: Mapping[tuple[str, Labels], float], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels`."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def label_values(samples: Mapping[tuple[str, Labels], float], name: str, label: str) -> list[str]:
    """The values `label` takes on `name`'s samples, sorted."""
    return sorted({dict(ls)[label] for (n, ls) in samples if n == name and label in dict(ls)})


def buckets(samples: Mapping[tuple[str, Labels], float], name: str, **labels: str) -> list[tuple[float, float]]:
    """(upper bound, cumulative count) of a histogram, summed over other labels, by bound."""
    want, sums = set(labels.items()), dict[float, float]()
    for (n, ls), v in samples.items():
        d = dict(ls)
        if n == f"{name}_bucket" and want <= set(ls) and "le" in d:
            le = float(d["le"])
            sums[le] = sums.get(le, 0.0) + v
    return sorted(sums.items())


def quantile(q: float, cumulative: list[tuple[float, float]]) -> float | None:
    """histogram_quantile's estimate (linear within a bucket); None with no observations."""
    if not cumulative or cumulative[-1][1] <= 0:
        return None
    rank, lower, below = q * cumulative[-1][1], 0.0, 0.0
    for upper, count in cumulative:
        if count >= rank:
            if math.isinf(upper):
                return lower
            inside = count - below
            return lower + (upper - lower) * ((rank - below) / inside if inside else 0.0)
        lower, below = upper, count
    return lower


def _minus(cur: Samples, prev: Samples | None) -> Samples:
    """What counters and histograms gained since `prev` (all of it without one)."""
    if prev is None:
        return cur
    return {k: max(0.0, v - prev.get(k, 0.0)) for k, v in cur.items()}


@dataclass
class Snapshot:
    """One scrape of every endpoint: the merged samples, when, and how many worker endpoints answered."""

    samples: Samples
    at: float
    workers: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class Summary:
    """What the view shows: per lane, per kind, and the batcher's numbers over the last interval."""

    lanes: dict[str, dict[str, float | None]]
    kinds: dict[str, dict[str, float | None]]
    jobs: dict[str, float]
    batch_mean: float | None
    batch_wait_p99: float | None
    images_per_s: float | None
    workers: int
    window_s: float | None
    errors: list[str]


def summarize(cur: Snapshot, prev: Snapshot | None = None) -> Summary:
    """Rates and quantiles over the interval since `prev` (since each process started without one)."""
    s, gained = cur.samples, _minus(cur.samples, prev.samples if prev else None)
    window = cur.at - prev.at if prev is not None and cur.at > prev.at else None

    def rate(value: float) -> float | None:
        return value / window if window else None

    lanes = {
        lane: {
            "depth": total(s, "inferq_queue_depth", lane=lane),
            "started_per_s": rate(total(gained, "inferq_job_queue_seconds_count", lane=lane)),
            "queue_p50": quantile(0.5, buckets(gained, "inferq_job_queue_seconds", lane=lane)),
            "queue_p99": quantile(0.99, buckets(gained, "inferq_job_queue_seconds", lane=lane)),
        }
        for lane in label_values(s, "inferq_queue_depth", "lane")
    }
    kinds = {
        kind: {
            "finished_per_s": rate(total(gained, "inferq_job_duration_seconds_count", kind=kind)),
            "p50": quantile(0.5, buckets(gained, "inferq_job_duration_seconds", kind=kind)),
            "p99": quantile(0.99, buckets(gained, "inferq_job_duration_seconds", kind=kind)),
        }
        for kind in label_values(s, "inferq_job_duration_seconds_count", "kind")
    }
    passes = total(gained, "inferq_batch_size_count")
    return Summary(
        lanes=lanes,
        kinds=kinds,
        jobs={st: total(s, "inferq_jobs", status=st) for st in label_values(s, "inferq_jobs", "status")},
        batch_mean=total(gained, "inferq_batch_size_sum") / passes if passes else None,
        batch_wait_p99=quantile(0.99, buckets(gained, "inferq_batch_wait_seconds")),
        images_per_s=rate(total(gained, "inferq_images_total")),
        workers=cur.workers,
        window_s=window,
        errors=cur.errors,
    )


def _fmt(value: float | None, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"
    return f"{value:.{digits}f}{unit}"


def render(summary: Summary) -> Group:
    """The view: a table per lane, a table per job kind, and one line of batcher and worker numbers."""
    lanes = Table(title="lanes", title_justify="left")
    for col in ("lane", "depth", "started/s", "queue p50", "queue p99"):
        lanes.add_column(col, justify="left" if col == "lane" else "right")
    for lane, v in summary.lanes.items():
        lanes.add_row(
            lane, _fmt(v["depth"], digits=0), _fmt(v["started_per_s"]), _fmt(v["queue_p50"], "s"),
            _fmt(v["queue_p99"], "s"),
        )  # fmt: skip
    kinds = Table(title="jobs finished", title_justify="left")
    for col in ("kind", "jobs/s", "p50", "p99"):
        kinds.add_column(col, justify="left" if col == "kind" else "right")
    for kind, v in summary.kinds.items():
        kinds.add_row(kind, _fmt(v["finished_per_s"]), _fmt(v["p50"], "s"), _fmt(v["p99"], "s"))
    statuses = "  ".join(f"{st} {n:.0f}" for st, n in summary.jobs.items() if n) or "-"
    line = (
        f"workers {summary.workers}   mean batch {_fmt(summary.batch_mean)}   batch wait p99 "
        f"{_fmt(summary.batch_wait_p99, 's')}   images/s {_fmt(summary.images_per_s, digits=0)}\n"
        f"jobs in the database: {statuses}"
    )
    if summary.window_s is None:
        line += "\n(rates appear from the second scrape)"
    parts: list[Table | str] = [lanes, kinds, line]
    parts += [f"[red]{e}[/]" for e in summary.errors]
    return Group(*parts)


def take(api_url: str, worker_urls: Iterable[str], timeout: float = 2.0) -> Snapshot:
    """Scrape the API's /metrics and each worker's, merged (the workers that answer are counted)."""
    samples: Samples = {}
    errors: list[str] = []
    workers = 0
    for url, is_worker in [(api_url, False), *((u, True) for u in worker_urls)]:
        try:
            resp = requests.get(url, timeout=timeout)
            resp.raise_for_status()
        except requests.RequestException as exc:
            errors.append(f"{url}: {type(exc).__name__}")
            continue
        workers += is_worker
        for key, value in parse(resp.text).items():
            samples[key] = samples.get(key, 0.0) + value
    return Snapshot(samples=samples, at=time.monotonic(), workers=workers, errors=errors)


def run(api_url: str, worker_urls: list[str], interval: float, once: bool = False) -> None:
    """Redraw the view every `interval` seconds until Ctrl-C (or print it once)."""
    from rich.console import Console
    from rich.live import Live

    console = Console()
    prev = take(api_url, worker_urls)
    if once:
        console.print(render(summarize(prev)))
        return
    with Live(render(summarize(prev)), console=console, refresh_per_second=4) as live:
        try:
            while True:
                time.sleep(interval)  # the refresh period of a live view, not synchronisation
                cur = take(api_url, worker_urls)
                live.update(render(summarize(cur, prev)))
                prev = cur
        except KeyboardInterrupt:
            pass
