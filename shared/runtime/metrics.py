"""Prometheus metrics of every inferq process: the metric objects, the queue/jobs collector and the scrape.

Labels are low-cardinality by construction: route templates, kinds, lanes, outcomes and problem-type slugs,
never a job id or a tenant's string. Recording is on unless INFERQ_METRICS_ENABLED=false (`configure`).
When PROMETHEUS_MULTIPROC_DIR is set before this module is imported, prometheus-client keeps the values of
every process in that folder and `scrape` adds them up (used by `inferq api`'s gunicorn workers).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector

log = logging.getLogger(__name__)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport: priority sub-queues are "<queue>\x06\x16<step>"
PRIORITY_STEPS = (3, 6, 9)  # step 0 is the plain list
SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
SIZES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

enabled = True  # set by configure(); instrumented code checks it before recording

HTTP_REQUESTS = Counter(
    "inferq_http_requests_total", "HTTP requests answered by the API.", ["route", "method", "status"]
)
HTTP_DURATION = Histogram(
    "inferq_http_request_duration_seconds", "Time the API took to answer a request.", ["route", "method"],
    buckets=SECONDS,
)  # fmt: skip
JOBS_SUBMITTED = Counter("inferq_jobs_submitted_total", "Jobs accepted by the API.", ["kind"])
JOBS_REJECTED = Counter(
    "inferq_jobs_rejected_total", "Job submissions refused, by problem type (queue-full, validation...).", ["reason"]
)
BATCH_SIZE = Histogram(
    "inferq_batch_size", "Images in one forward pass (micro-batched classify or a scoring batch).", ["kind"],
    buckets=SIZES,
)  # fmt: skip
BATCH_WAIT = Histogram(
    "inferq_batch_wait_seconds", "Time the first image of a micro-batch waited for its forward pass.", buckets=SECONDS
)
FORWARD = Histogram(
    "inferq_forward_seconds", "Time of one forward pass.", ["model", "version", "format"], buckets=SECONDS
)
JOB_DURATION = Histogram(
    "inferq_job_duration_seconds", "Time from a job's creation to its end.", ["kind", "outcome"], buckets=SECONDS
)
JOB_QUEUE = Histogram(
    "inferq_job_queue_seconds", "Time from a job's creation to its start on a worker.", ["lane"], buckets=SECONDS
)
IMAGES = Counter("inferq_images_total", "Images (items) given a result, by outcome.", ["outcome"])
MODEL_LOADS = Counter("inferq_model_loads_total", "Model versions loaded into a worker process.")
WEBHOOK_DELIVERIES = Counter("inferq_webhook_deliveries_total", "Webhook delivery attempts, by outcome.", ["outcome"])
RECONCILER_ACTIONS = Counter(
    "inferq_reconciler_actions_total", "What the reconciler did (jobs re-dispatched...).", ["action"]
)


def configure(*, metrics_enabled: bool) -> None:
    """Turn recording on or off for this process (INFERQ_METRICS_ENABLED)."""
    global enabled
    enabled = metrics_enabled


def lane_of(kind: str) -> str:
    """The lane a job kind travels on: classify on interactive, score on bulk, train on training."""
    return {"classify": "interactive", "score": "bulk", "train": "training"}.get(kind, "interactive")


def observe_finished(rows: Iterable[tuple[str, str, Any, Any]]) -> None:
    """Record (kind, status, created_at, finished_at) of jobs that just reached a terminal status."""
    if not enabled:
        return
    for kind, status, created, finished in rows:
        if (spent := _between(created, finished)) is not None:
            JOB_DURATION.labels(kind, status).observe(spent)


def observe_started(kind: str, created: Any, started: Any) -> None:
    """Record the queue time of a job that just started on a worker."""
    if enabled and (spent := _between(created, started)) is not None:
        JOB_QUEUE.labels(lane_of(kind)).observe(spent)


def _between(earlier: Any, later: Any) -> float | None:
    """Seconds between two timestamps (naive ones, as SQLite returns them, are UTC); None if either is missing."""
    if not isinstance(earlier, datetime) or not isinstance(later, datetime):
        return None
    earlier, later = (t if t.tzinfo else t.replace(tzinfo=UTC) for t in (earlier, later))
    return max(0.0, (later - earlier).total_seconds())


def queue_keys(queue: str) -> list[str]:
    """The Redis lists holding a Celery queue's ready messages (the queue and its priority sub-queues)."""
    return [queue] + [f"{queue}{PRIORITY_SEP}{step}" for step in PRIORITY_STEPS]


class StackCollector(Collector):
    """`inferq_queue_depth{lane}` (LLEN of each lane's Redis lists) and `inferq_jobs{status}` (from the
    database), read at scrape time: one source of truth, right however many workers run."""

    def __init__(self, *, redis_url: str, lanes: Iterable[str], sessions: Any) -> None:
        self.redis_url, self.lanes, self.sessions = redis_url, list(lanes), sessions
        self._redis: Any = None

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily("inferq_queue_depth", "Ready messages per Celery queue (lane).", labels=["lane"])
        try:
            for lane, count in self.depths().items():
                depth.add_metric([lane], count)
        except Exception as exc:  # a scrape must not fail because Redis blips
            log.warning("queue depth unavailable: %s", exc)
        yield depth
        jobs = GaugeMetricFamily("inferq_jobs", "Jobs in the database, by status.", labels=["status"])
        try:
            for status, count in self.job_counts().items():
                jobs.add_metric([status], count)
        except Exception as exc:
            log.warning("job counts unavailable: %s", exc)
        yield jobs

    def depths(self) -> dict[str, int]:
        """Ready messages per lane, priority sub-queues included."""
        import redis

        if self._redis is None:
            self._redis = redis.Redis.from_url(self.redis_url, socket_timeout=2)
        pipe = self._redis.pipeline(transaction=False)
        for lane in self.lanes:
            for key in queue_keys(lane):
                pipe.llen(key)
        counts = iter(pipe.execute())
        return {lane: sum(next(counts) for _ in queue_keys(lane)) for lane in self.lanes}

    def job_counts(self) -> dict[str, int]:
        """Jobs per status, every status present (0 when none)."""
        from sqlalchemy import func, select

        from shared.config.status import JobStatus
        from shared.db.models import Job

        counts = {s.value: 0 for s in JobStatus}
        with self.sessions() as session:
            for status, n in session.execute(select(Job.status, func.count()).group_by(Job.status)):
                counts[status] = int(n)
        return counts


MemoryInfo = Callable[[], dict[str, dict[str, int]]]


class GpuMemoryCollector(Collector):
    """`inferq_gpu_memory_bytes{device,kind}` ("current" and "peak" bytes in use, per visible GPU), read at scrape
    time from `read()` (TensorFlow's get_memory_info in a worker: see worker.gpu.memory_info). No GPU, no samples:
    on the CPU the family is absent altogether."""

    def __init__(self, read: MemoryInfo) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        try:
            devices = self.read()
        except Exception as exc:  # a scrape must not fail because the runtime does
            log.warning("GPU memory unavailable: %s", exc)
            return
        if not devices:
            return
        family = GaugeMetricFamily(
            "inferq_gpu_memory_bytes", "GPU memory held by this worker process's TensorFlow.", labels=["device", "kind"]
        )
        for device, info in sorted(devices.items()):
            for kind in ("current", "peak"):
                if kind in info:
                    family.add_metric([device, kind], float(info[kind]))
        yield family


def process_registry() -> CollectorRegistry:
    """This process's metrics, or every process's of PROMETHEUS_MULTIPROC_DIR when that is set."""
    if not os.environ.get(MULTIPROC_ENV):
        return REGISTRY
    registry = CollectorRegistry(auto_describe=False)
    MultiProcessCollector(registry)
    return registry


def serve(*, host: str, port: int, extra: Iterable[Collector] = ()) -> bool:
    """Serve this process's metrics (plus `extra` collectors, read at scrape time) at http://host:port/metrics in a
    daemon thread; False if the port is taken."""
    registry = process_registry()
    for collector in extra:
        registry.register(collector)
    try:
        start_http_server(port, addr=host, registry=registry)
    except OSError as exc:
        log.warning("metrics endpoint %s:%d not started: %s (set INFERQ_WORKER_METRICS_PORT)", host, port, exc)
        return False
    log.info("metrics at http://%s:%d/metrics", host, port)
    return True


def scrape(*extra: Collector) -> bytes:
    """The text exposition of this process (or of every process of PROMETHEUS_MULTIPROC_DIR), plus `extra`."""
    body = generate_latest(process_registry())
    if extra:
        more = CollectorRegistry(auto_describe=False)
        for collector in extra:
            more.register(collector)
        body += generate_latest(more)
    return body
