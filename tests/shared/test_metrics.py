"""shared.runtime.metrics: the queue/jobs collector on real Redis and SQLite, multiprocess sums, and job timings."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from inferq.top import parse, total
from shared.inputs.storage import LocalBlobStore
from shared.runtime import metrics
from shared.runtime.celery_app import INFERENCE_QUEUE, TRAINING_QUEUE
from tests.factories import make_job

REPO = Path(__file__).resolve().parents[2]


def test_queue_depth_counts_priority_sub_queues(redis_url: str, sessions: sessionmaker[Session]) -> None:
    """inferq_queue_depth{lane} is the LLEN of the lane's list plus its kombu priority sub-queues."""
    client = redis.Redis.from_url(redis_url)
    client.rpush(INFERENCE_QUEUE, "a", "b")
    client.rpush(f"{INFERENCE_QUEUE}{metrics.PRIORITY_SEP}3", "c")
    client.rpush(TRAINING_QUEUE, "d")
    collector = metrics.StackCollector(redis_url=redis_url, lanes=[INFERENCE_QUEUE, TRAINING_QUEUE], sessions=sessions)
    scraped = parse(metrics.scrape(collector).decode())
    assert total(scraped, "inferq_queue_depth", lane=INFERENCE_QUEUE) == 3
    assert total(scraped, "inferq_queue_depth", lane=TRAINING_QUEUE) == 1
    client.close()


def test_job_counts_by_status(engine: Engine, sessions: sessionmaker[Session], store: LocalBlobStore) -> None:
    """inferq_jobs{status} counts the database's jobs per status, 0 for statuses with none."""
    with sessions() as session:
        make_job(session, store)
        make_job(session, store)
        session.commit()
    collector = metrics.StackCollector(redis_url="redis://127.0.0.1:1/0", lanes=[], sessions=sessions)
    assert collector.job_counts()["queued"] == 2
    assert collector.job_counts()["succeeded"] == 0


def test_multiprocess_scrape_adds_every_process_up(tmp_path: Path) -> None:
    """With PROMETHEUS_MULTIPROC_DIR, two processes' counters are summed by a third process's scrape."""
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(tmp_path))
    bump = "from shared.runtime import metrics; metrics.JOBS_SUBMITTED.labels('classify').inc()"
    for _ in range(2):
        subprocess.run([sys.executable, "-c", bump], env=env, cwd=REPO, check=True, timeout=60)
    read = "from shared.runtime import metrics; import sys; sys.stdout.write(metrics.scrape().decode())"
    out = subprocess.run([sys.executable, "-c", read], env=env, cwd=REPO, check=True, timeout=60, capture_output=True)
    assert total(parse(out.stdout.decode()), "inferq_jobs_submitted_total", kind="classify") == 2


def test_job_timings_accept_naive_and_aware_times() -> None:
    """A finished job's duration is observed whether the database returned naive (SQLite) or aware times."""
    before = total(parse(metrics.scrape().decode()), "inferq_job_duration_seconds_count", kind="score")
    created = datetime(2026, 1, 1, 12, 0, 0)
    metrics.observe_finished([("score", "succeeded", created, created.replace(tzinfo=UTC) + timedelta(seconds=3))])
    metrics.observe_finished([("score", "failed", None, created)])  # no start time: nothing observed
    scraped = parse(metrics.scrape().decode())
    assert total(scraped, "inferq_job_duration_seconds_count", kind="score") == before + 1
    assert (metrics.lane_of("train"), metrics.lane_of("score"), metrics.lane_of("classify")) == (
        "training",
        "bulk",
        "interactive",
    )
