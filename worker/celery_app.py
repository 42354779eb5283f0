"""The worker's Celery app: the shared configuration plus the task modules (for `celery -A worker.celery_app`)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from celery import Celery
from celery.signals import worker_ready, worker_shutdown, worker_shutting_down

from shared.config.settings import Settings
from shared.inputs.imaging import configure_pillow
from shared.runtime import metrics
from shared.runtime.celery_app import make_celery
from shared.tenancy.redaction import install_log_redaction
from worker import context, gpu, inference, scoring
from worker.lanes import DedicatedLane


def create_worker_app(settings: Settings, *, own_consumer_queues: Sequence[str] = ()) -> Celery:
    """A Celery app with inferq's tasks registered; the per-process context is built lazily from `settings`.

    `own_consumer_queues` (the bulk queue, see shared.runtime.celery_app.worker_queues) are consumed on threads
    of their own once the worker is ready, not by Celery's consumer (worker/lanes.py)."""
    install_log_redaction()
    quiet_task_lines(settings)
    context.configure(settings)
    configure_pillow(max_pixels=settings.max_image_pixels)
    app = make_celery(settings, name="inferq")
    import worker.tasks.classify  # noqa: F401  (registers the shared tasks)
    import worker.tasks.idempotency  # noqa: F401  (purges expired Idempotency-Keys)
    import worker.tasks.retention  # noqa: F401  (the retention purge)
    import worker.tasks.scoring  # noqa: F401  (bulk scoring chunks)
    import worker.tasks.training  # noqa: F401  (train / optimize / benchmark on the training queue)
    import worker.tasks.webhooks  # noqa: F401  (the webhook dispatcher)

    app.finalize()
    worker_ready.connect(_warm_up, weak=False)
    # the bulk lane on threads of its own shares this process's model compute with classify jobs
    scoring.share_compute_with_interactive(settings.bulk_shared_passes if own_consumer_queues else 0)
    for queue in own_consumer_queues:
        _serve_on_own_threads(app, settings, queue)
    metrics.configure(metrics_enabled=settings.metrics_enabled)
    if settings.metrics_enabled and settings.worker_metrics_port:
        worker_ready.connect(lambda **_: _serve_metrics(settings), weak=False)
    return app


def quiet_task_lines(settings: Settings) -> None:
    """Celery's per-task INFO lines ('received', 'succeeded in', 'retry') unless INFERQ_LOG_EACH_TASK: their loggers
    go to WARNING, so failures (ERROR) are still logged. Celery reads the level when it builds a task's tracer."""
    level = logging.NOTSET if settings.log_each_task else logging.WARNING
    for name in ("celery.worker.strategy", "celery.app.trace"):
        logging.getLogger(name).setLevel(level)


def _serve_on_own_threads(app: Celery, settings: Settings, queue: str) -> None:
    """Start the queue's own consumer threads with the worker; stop them taking messages at the warm shutdown's
    start and wait for the chunks in progress after Celery's pool has drained."""
    lanes: list[DedicatedLane] = []

    def start(sender: Any = None, **_: Any) -> None:
        hostname = getattr(sender, "hostname", None) or app.conf.get("worker_hostname") or "inferq"
        lane = DedicatedLane(
            app, queue, threads=settings.score_parallel_chunks, hostname=hostname, nice=settings.bulk_nice
        )
        lanes.append(lane)
        lane.start()

    def stop(**_: Any) -> None:
        for lane in lanes:
            lane.stop()

    def join(**_: Any) -> None:
        for lane in lanes:
            lane.stop()
            lane.join(timeout=float(settings.task_time_limit))

    worker_ready.connect(start, weak=False)
    worker_shutting_down.connect(stop, weak=False)
    worker_shutdown.connect(join, weak=False)


def _serve_metrics(settings: Settings) -> None:
    """This worker process's /metrics on INFERQ_METRICS_HOST:INFERQ_WORKER_METRICS_PORT (one port per process)."""
    gpu_memory = metrics.GpuMemoryCollector(gpu.memory_info)  # absent on the CPU
    metrics.serve(host=settings.metrics_host, port=settings.worker_metrics_port, extra=[gpu_memory])


def _warm_up(**_: Any) -> None:
    """Load the default model in the background when the worker starts, so the first job does not wait."""
    threading.Thread(target=inference.warm_up, name="warm-up", daemon=True).start()


app: Celery  # built on first access, below


def __getattr__(name: str) -> Any:
    """`celery -A worker.celery_app` finds `app`, built from INFERQ_* variables on first access."""
    if name == "app":
        global app
        app = create_worker_app(Settings())
        return app
    raise AttributeError(name)
