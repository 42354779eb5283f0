"""The one Celery configuration: at-least-once delivery, bounded prefetch, queues and JSON only."""

from __future__ import annotations

from pathlib import Path

import pytest
from kombu import Queue

from shared.runtime.celery_app import (
    CLASSIFY_TASK,
    INFERENCE_QUEUE,
    INTERACTIVE_QUEUE,
    RECONCILE_TASK,
    SCORE_CHUNK_TASK,
    TRAIN_TASK,
    TRAINING_QUEUE,
    WEBHOOK_DISPATCH_TASK,
    celery_config,
    classify_queue,
    lanes_of_queues,
    make_celery,
    queues_for,
)
from tests.factories import make_settings


def test_late_acks_and_reject_on_worker_lost_are_set(tmp_path: Path) -> None:
    """The two Celery options at-least-once delivery relies on are set (a config read, not a behaviour test).

    That no job is lost when a worker dies is shown by real worker processes killed -9 mid-batch:
    tests/faults/test_fault_worker_kill.py (test_kill9_mid_batch_then_restart and the five-kill run).
    """
    conf = celery_config(make_settings(tmp_path))
    assert conf["task_acks_late"] is True
    assert conf["task_reject_on_worker_lost"] is True


def test_visibility_timeout_and_time_limits_follow_settings(tmp_path: Path) -> None:
    """The broker's visibility timeout and the task limits are the settings' values, in the right order."""
    s = make_settings(tmp_path, visibility_timeout=900, task_time_limit=600, task_soft_time_limit=500)
    conf = celery_config(s)
    assert conf["broker_transport_options"]["visibility_timeout"] == 900
    assert (conf["task_time_limit"], conf["task_soft_time_limit"]) == (600, 500)


@pytest.mark.parametrize(("max_batch", "concurrency"), [(64, 32), (64, 1), (1, 32), (256, 4)])
def test_prefetch_is_bounded(tmp_path: Path, max_batch: int, concurrency: int) -> None:
    """Each worker prefetches at least one and no more than a batch's worth of messages."""
    conf = celery_config(make_settings(tmp_path, max_batch=max_batch, worker_concurrency=concurrency))
    prefetch = conf["worker_prefetch_multiplier"]
    assert isinstance(prefetch, int)
    assert prefetch >= 1 and prefetch * concurrency <= max(max_batch, concurrency)


def test_routes(tmp_path: Path) -> None:
    """Each kind of work has its lane's queue: classify interactive, chunks bulk, training, webhooks/maintenance ops."""
    conf = celery_config(make_settings(tmp_path))
    routes = conf["task_routes"]
    assert routes[CLASSIFY_TASK] == {"queue": INTERACTIVE_QUEUE} == {"queue": "interactive"}  # type: ignore[index]
    assert routes[SCORE_CHUNK_TASK] == {"queue": "bulk"}  # type: ignore[index]
    assert routes[TRAIN_TASK] == {"queue": TRAINING_QUEUE} == {"queue": "training"}  # type: ignore[index]
    assert routes[RECONCILE_TASK] == routes[WEBHOOK_DISPATCH_TASK] == {"queue": "ops"}  # type: ignore[index]
    assert (CLASSIFY_TASK, TRAIN_TASK) == ("inferq.classify", "inferq.train")
    queues = conf["task_queues"]
    names = {q.name for q in queues}  # type: ignore[attr-defined]
    assert names == {"interactive-high", "interactive", "interactive-low", "bulk", "training", "ops", "inference"}
    assert all(isinstance(q, Queue) for q in queues)  # type: ignore[attr-defined]


def test_queue_names_are_settings(tmp_path: Path) -> None:
    """An operator may rename a lane's queue; routes follow."""
    conf = celery_config(make_settings(tmp_path, queue_interactive="fast", queue_bulk="slow"))
    assert conf["task_routes"][CLASSIFY_TASK] == {"queue": "fast"}  # type: ignore[index]
    assert conf["task_routes"][SCORE_CHUNK_TASK] == {"queue": "slow"}  # type: ignore[index]


def test_a_worker_consumes_its_lanes_interactive_first_and_drains_the_old_queue(tmp_path: Path) -> None:
    """--lanes picks queues in lane order (polled in that order), the interactive lane's highest priority first; the
    interactive lane also drains `inference`."""
    s = make_settings(tmp_path)
    interactive = ["interactive-high", "interactive", INFERENCE_QUEUE, "interactive-low"]  # priority 2, 1, 0
    assert queues_for(s, "ops,bulk,interactive") == [*interactive, "bulk", "ops"]
    assert queues_for(s, "bulk") == ["bulk"]
    assert queues_for(s, "interactive,bulk,training,ops")[:4] == interactive
    with pytest.raises(ValueError, match="unknown lane"):
        queues_for(s, "bulk,gpu")
    with pytest.raises(ValueError):
        queues_for(s, " , ")


def test_json_only(tmp_path: Path) -> None:
    """Messages are JSON, and nothing else is accepted (no pickle)."""
    conf = celery_config(make_settings(tmp_path))
    assert conf["task_serializer"] == "json"
    assert conf["accept_content"] == ["json"]


def test_broker_url_follows_settings(tmp_path: Path) -> None:
    """The broker is the configured Redis URL, or loopback at the embedded port."""
    assert celery_config(make_settings(tmp_path))["broker_url"] == "redis://127.0.0.1:1/0"
    embedded = make_settings(tmp_path, redis_url="embedded", embedded_redis_port=6400)
    assert celery_config(embedded)["broker_url"] == "redis://127.0.0.1:6400/0"


def test_make_celery_applies_config_without_connecting(tmp_path: Path) -> None:
    """make_celery returns an app carrying the configuration and routes a classify task to inference."""
    app = make_celery(make_settings(tmp_path, visibility_timeout=900))
    assert app.conf.task_acks_late is True
    assert app.conf.broker_transport_options["visibility_timeout"] == 900
    assert app.amqp.router.route({}, CLASSIFY_TASK)["queue"].name == INTERACTIVE_QUEUE
    assert app.amqp.router.route({}, TRAIN_TASK)["queue"].name == TRAINING_QUEUE


def test_reconcile_is_scheduled(tmp_path: Path) -> None:
    """Beat runs the reconciler every reconcile_interval_s."""
    conf = celery_config(make_settings(tmp_path, reconcile_interval_s=12.5))
    assert conf["beat_schedule"]["reconcile"] == {"task": RECONCILE_TASK, "schedule": 12.5}


@pytest.mark.parametrize(("visibility", "sweep"), [(10, 1), (35, 3), (120, 10), (3600, 10)])
def test_dead_workers_messages_are_swept_within_a_tenth_of_the_visibility_timeout(
    tmp_path: Path, visibility: int, sweep: int
) -> None:
    """kombu sweeps for a dead worker's unacked messages every visibility/10 s (1-10 s), unthrottled, instead of its
    default ~100 s, so they come back soon after the visibility timeout."""
    limits = {"task_time_limit": 8, "task_soft_time_limit": 6, "train_time_limit": 9}
    opts = celery_config(make_settings(tmp_path, visibility_timeout=visibility, **limits))["broker_transport_options"]
    assert opts == {
        "visibility_timeout": visibility,
        "unacked_restore_interval": sweep,
        "unacked_restore_throttle": 1,
        "unacked_mutex_expire": max(5, 2 * sweep),
        "queue_order_strategy": "priority",
    }


def test_the_pre_lanes_queues_option_maps_to_lanes() -> None:
    """`--queues inference` (old manifests and scripts) serves the lanes `inference` used to carry."""
    assert lanes_of_queues("inference") == "interactive,bulk,ops"
    assert lanes_of_queues("inference,training") == "interactive,bulk,ops,training"
    with pytest.raises(ValueError, match="--lanes"):
        lanes_of_queues("interactive")


def test_a_classify_jobs_priority_picks_its_queue(tmp_path: Path) -> None:
    """Each priority has its own queue in the interactive lane, named after the lane's queue setting."""
    s = make_settings(tmp_path, queue_interactive="fast")
    assert [classify_queue(s, p) for p in (2, 1, 0)] == ["fast-high", "fast", "fast-low"]
    assert {"fast-high", "fast-low"} <= {q.name for q in celery_config(s)["task_queues"]}  # type: ignore[attr-defined]
    with pytest.raises(ValueError):
        classify_queue(s, 3)
