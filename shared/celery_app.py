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

ROUTES = {
    CLASSIFY_TASK: {"queue": INFERENCE_QUEUE},
    RECONCILE_TASK: {"queue": INFERENCE_QUEUE},
    WEBHOOK_DISPATCH_TASK: {"queue": INFERENCE_QUEUE},
    SCORE_CHUNK_TASK: {"queue": INFERENCE_QUEUE},
    TRAIN_TASK: {"queue": TRAINING_QUEUE},
}


def celery_config(settings: Settings) -> dict[str, object]:
    """Delivery semantics shared by every process: late acks, redelivery on lost workers, one visibility timeout."""
    prefetch = max(1, settings.max_batch // settings.worker_concurrency)
    return {
        "broker_url": settings.broker_url(),
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": {"visibility_timeout": settings.visibility_timeout},
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
        },
        "timezone": "UTC",
    }


def make_celery(settings: Settings, name: str = "inferq") -> Celery:
    """A Celery app configured from `settings` (no tasks registered: the API sends tasks by name)."""
    app = Celery(name, set_as_current=False)
    app.conf.update(celery_config(settings))
    return app
