"""The worker's Celery app: the shared configuration plus the task modules (for `celery -A worker.celery_app`)."""

from __future__ import annotations

import threading
from typing import Any

from celery import Celery
from celery.signals import worker_ready

from shared.config.settings import Settings
from shared.inputs.imaging import configure_pillow
from shared.runtime import metrics
from shared.runtime.celery_app import make_celery
from shared.tenancy.redaction import install_log_redaction
from worker import context, gpu, inference


def create_worker_app(settings: Settings) -> Celery:
    """A Celery app with inferq's tasks registered; the per-process context is built lazily from `settings`."""
    install_log_redaction()
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
    metrics.configure(metrics_enabled=settings.metrics_enabled)
    if settings.metrics_enabled and settings.worker_metrics_port:
        worker_ready.connect(lambda **_: _serve_metrics(settings), weak=False)
    return app


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
