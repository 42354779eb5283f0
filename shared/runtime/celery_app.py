"""The one Celery configuration used by the API (to send tasks by name), the workers and Flower."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from kombu import Queue

from shared.config.settings import Settings
from shared.config.status import Priority

# Lanes: one Celery queue each, so interactive work never queues behind bulk chunks and webhook deliveries and
# maintenance never queue behind inference. The names are settings (INFERQ_QUEUE_*); these are their defaults.
INTERACTIVE_QUEUE = "interactive"  # classify jobs
BULK_QUEUE = "bulk"  # bulk scoring chunks
TRAINING_QUEUE = "training"  # train / optimize / benchmark
OPS_QUEUE = "ops"  # webhook delivery, reconciler, retention, idempotency purge
# Before lanes everything but training travelled on this queue: workers serving the interactive lane still drain
# it, so messages published by an older API or reconciler are never stranded by an upgrade.
INFERENCE_QUEUE = "inference"
LANES = ("interactive", "bulk", "training", "ops")

CLASSIFY_TASK = "inferq.classify"
TRAIN_TASK = "inferq.train"
RECONCILE_TASK = "inferq.reconcile"
WEBHOOK_DISPATCH_TASK = "inferq.webhooks.dispatch"
SCORE_CHUNK_TASK = "inferq.score_chunk"
RETENTION_TASK = "inferq.retention.purge"
IDEMPOTENCY_PURGE_TASK = "inferq.idempotency.purge"

TASK_LANES = {
    CLASSIFY_TASK: "interactive",
    SCORE_CHUNK_TASK: "bulk",
    TRAIN_TASK: "training",
    RECONCILE_TASK: "ops",
    WEBHOOK_DISPATCH_TASK: "ops",
    RETENTION_TASK: "ops",
    IDEMPOTENCY_PURGE_TASK: "ops",
}


def lane_queues(settings: Settings) -> dict[str, str]:
    """Lane name -> its Celery queue name (INFERQ_QUEUE_INTERACTIVE ... INFERQ_QUEUE_OPS)."""
    return {
        "interactive": settings.queue_interactive,
        "bulk": settings.queue_bulk,
        "training": settings.queue_training,
        "ops": settings.queue_ops,
    }


def interactive_queues(settings: Settings) -> list[str]:
    """The interactive lane's queues, one per priority, highest first: `<queue>-high`, `<queue>`, `<queue>-low`
    (normal jobs travel on the lane's plain queue)."""
    q = settings.queue_interactive
    return [f"{q}-high", q, f"{q}-low"]


def classify_queue(settings: Settings, priority: int) -> str:
    """The queue a classify job of `priority` (shared.config.status.Priority) is published to."""
    return interactive_queues(settings)[Priority.HIGH - Priority(priority)]


def routes(settings: Settings) -> dict[str, dict[str, str]]:
    """Each task's queue: the queue of its lane."""
    queues = lane_queues(settings)
    return {task: {"queue": queues[lane]} for task, lane in TASK_LANES.items()}


def queues_for(settings: Settings, lanes: str) -> list[str]:
    """The queues a worker serving `lanes` ("interactive,bulk" ...) consumes, in the order it polls them: the
    interactive lane's high, normal and low priority queues first (a worker of the interactive lane also drains
    the pre-lanes `inference` queue, after its normal one), then bulk, training, ops. An unknown lane name raises
    ValueError."""
    wanted = [name.strip() for name in lanes.split(",") if name.strip()]
    unknown = sorted(set(wanted) - set(LANES))
    if unknown or not wanted:
        raise ValueError(f"unknown lane(s) {unknown or lanes!r}; lanes are {', '.join(LANES)}")
    by_lane = lane_queues(settings)
    queues: list[str] = []
    for lane in (lane for lane in LANES if lane in wanted):  # the LANES order: interactive before bulk
        if lane == "interactive":
            high, normal, low = interactive_queues(settings)
            queues += [high, normal, INFERENCE_QUEUE, low]
        else:
            queues.append(by_lane[lane])
    return list(dict.fromkeys(queues))


def all_queues(settings: Settings) -> list[str]:
    """Every queue of every lane (the interactive lane's priority queues included) and the pre-lanes one."""
    return queues_for(settings, ",".join(LANES))


@dataclass(frozen=True)
class WorkerQueues:
    """Where a worker serving some lanes takes each of their queues."""

    celery: list[str]  # through Celery's consumer, in polling order
    own_threads: list[str]  # on consumer threads of their own (worker/lanes.py)
    bulk_child: bool  # the bulk lane runs as a child worker process (INFERQ_BULK_PROCESS)


def worker_queues(settings: Settings, lanes: str) -> WorkerQueues:
    """How a worker serves `lanes`. When the bulk lane shares the worker with another lane it is taken apart from
    Celery's consumer: by a child process with INFERQ_BULK_PROCESS, else on threads of its own unless
    INFERQ_BULK_OWN_CONSUMER is off. A bulk-only worker lets Celery take it (nothing else waits there)."""
    served = queues_for(settings, lanes)
    shared = settings.queue_bulk in served and len(served) > 1
    child = shared and settings.bulk_process
    threads = [settings.queue_bulk] if shared and not child and settings.bulk_own_consumer else []
    apart = {settings.queue_bulk} if child or threads else set()
    return WorkerQueues([q for q in served if q not in apart], threads, child)


DEFAULT_QUEUES = {"interactive": INTERACTIVE_QUEUE, "bulk": BULK_QUEUE, "training": TRAINING_QUEUE, "ops": OPS_QUEUE}
# What the pre-lanes `inferq worker --queues ...` served, as lanes (old scripts and manifests keep working).
LEGACY_QUEUE_LANES = {INFERENCE_QUEUE: ("interactive", "bulk", "ops"), TRAINING_QUEUE: ("training",)}


def lanes_of_queues(queues: str) -> str:
    """The lanes equivalent to a pre-lanes `--queues` list ("inference,training"); ValueError for another name."""
    names = [q.strip() for q in queues.split(",") if q.strip()]
    if not names or set(names) - set(LEGACY_QUEUE_LANES):
        raise ValueError(f"--queues takes {', '.join(LEGACY_QUEUE_LANES)}; use --lanes for the lanes")
    return ",".join(lane for name in names for lane in LEGACY_QUEUE_LANES[name])


ROUTES = {task: {"queue": DEFAULT_QUEUES[lane]} for task, lane in TASK_LANES.items()}  # with the default names


def train_time_limit(settings: Settings) -> int:
    """The time limit a training-queue task is published with (by the API and the reconciler): INFERQ_TRAIN_TIME_LIMIT,
    kept below the visibility timeout so Redis does not redeliver a running task."""
    return max(1, min(settings.train_time_limit, settings.visibility_timeout - 1))


def transport_options(settings: Settings) -> dict[str, object]:
    """Redis transport options: the visibility timeout, and how often kombu sweeps for messages a dead worker held.
    kombu's default sweeps every 10 s x throttle 10 = ~100 s; sweeping every visibility_timeout/10 (1-10 s) with
    no throttle hands a killed worker's messages on within about 1.1 x the visibility timeout.

    Each sweep holds a Redis lock (`unacked_mutex`) for the few milliseconds it takes. A worker killed while holding
    it leaves the lock to expire: after kombu's default 300 s, which stalled every sweep (and a killed worker's
    chunks) for five minutes. The lock now lapses after 2 sweep intervals, at least 5 s; two sweeps overlapping
    cannot restore a message twice (kombu restores each one in a transaction watching the unacked hash)."""
    interval = max(1, min(10, settings.visibility_timeout // 10))
    return {
        "visibility_timeout": settings.visibility_timeout,
        "unacked_restore_interval": interval,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": max(5, 2 * interval),
        # Poll a worker's queues in the order it lists them (interactive first, see queues_for) instead of
        # round robin: whenever a consumer has room for a message, a waiting interactive job is taken first.
        "queue_order_strategy": "priority",
    }


def celery_config(settings: Settings) -> dict[str, object]:
    """Delivery semantics shared by every process: late acks, redelivery on lost workers, one visibility timeout."""
    prefetch = max(1, settings.max_batch // settings.worker_concurrency)
    return {
        "broker_url": settings.broker_url(),
        "broker_connection_retry_on_startup": True,
        "broker_transport_options": transport_options(settings),
        "broker_pool_limit": 10,
        "task_default_queue": settings.queue_interactive,
        "task_queues": [Queue(q) for q in all_queues(settings)],
        "task_routes": routes(settings),
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
