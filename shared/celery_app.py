"""The one Celery configuration used by the API (to send tasks by name), the workers and Flower."""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from shared.settings import Settings

INFERENCE_QUEUE = "inference"
TRAINING_QUEUE = "training"

CLASSIFY_TASK = "inferq.classify"
TRAIN_TASK = "inferq.train"
RECONCILE_TASK = "inferq.reconcile"
WEBHOOK_DISPATCH_TASK = "inferq.webhooks.dispatch"
SCORE_CHUNK_TASK = "inferq.score_chunk"
RETENTION_TASK = "inferq.retention.purge"
IDEMPOTENCY_PURGE_TASK = "inferq.idempotency.purge"

ROUTES = {
    CLASSIFY_TASK: {"queue": INFERENCE_QUEUE},
    RECONCILE_TASK: {"queue": INFERENCE_QUEUE},
    WEBHOOK_DISPATCH_TASK: {"queue": INFERENCE_QUEUE},
    SCORE_CHUNK_TASK: {"queue": INFERENCE_QUEUE},
    RETENTION_TASK: {"queue": INFERENCE_QUEUE},
    IDEMPOTENCY_PURGE_TASK: {"queue": INFERENCE_QUEUE},
    TRAIN_TASK: {"queue": TRAINING_QUEUE},
}


def train_time_limit(settings: Settings) -> int:
    """The time limit a training-queue task is published with (by the API and the reconciler): INFERQ_TRAIN_TIME_LIMIT,
    kept below the visibility timeout so Redis does not redeliver a running task."""
    return max(1, min(settings.train_time_limit, settings.visibility_timeout - 1))


def transport_options(settings: Settings) -> dict[str, int]:
    """Redis transport options: the visibility timeout, and how often kombu sweeps for messages a dead worker held.
    kombu's default sweeps every 10 s x throttle 10 = ~100 s; sweeping every visibility_timeout/10 (1-10 s) with
    no throttle hands a killed worker's messages on within about 1.1 x the visibility timeout."""
    interval = max(1, min(10, settings.visibility_timeout // 10))
    return {
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": interval,
        "unacked_restore_throttle": 1,
    }


def celery_config(settings: Settings) -> dict[str, object]:
    """Delivery semantics shared by every process: late acks, redelivery on lost workers, one visibility timeout."""
    prefetch = max(1, settings.max_batch // settings.worker_concurrency)
    return {
        "broker_url": settings.broker_url(),
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport_options(settings),
        "broker_pool_limit": 10,
        "task_default_queue": INFERENCE_QUEUE,
        "task_queues": [Queue(INFERENCE_QUEUE), Queue(TRAINING_QUEUE)],
        "task_routes": ROUTES,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "task_soft_time_limit": settings.task_soft_time_limit,
        "task_time_limit": settings.task_time_limit,
        "task_track_started": True,
        "task_send_sent_event": True,
        "worker_send_task_events": True,
        "worker_prefetch_multiplier": prefetch,
        "worker_hijack_root_logger": False,
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "beat_schedule": {
            "reconcile": {"task": RECONCILE_TASK, "schedule": settings.reconcile_interval_s},
            "webhooks": {"task": WEBHOOK_DISPATCH_TASK, "schedule": settings.webhook_dispatch_interval_s},
            "retention": {"task": RETENTION_TASK, "schedule": settings.retention_interval_s},
            "idempotency": {"task": IDEMPOTENCY_PURGE_TASK, "schedule": settings.idempotency_purge_interval_s},
        },
        "timezone": "UTC",
    }


def make_celery(settings: Settings, name: str = "inferq") -> Celery:
    """A Celery app configured from `settings` (no tasks registered: the API sends tasks by name)."""
    app = Celery(name, set_as_current=False)
    app.conf.update(celery_config(settings))
    return app
