"""Kubernetes scale-in on this machine: SIGTERM to a real worker mid-bulk-scoring job, as the kubelet sends it."""

from __future__ import annotations

import json
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import yaml

from shared.runtime.celery_app import SCORE_CHUNK_TASK
from tests.access import use_key
from tests.faults.conftest import FaultStack
from tests.faults.test_fault_score import upload
from tests.integration.conftest import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]

# read by tests/faults/worker_main.py (not imported from there: importing it patches the importing process)
CHUNK_DELAY_ENV = "FAULT_CHUNK_DELAY_S"
ITEMS = 30_000  # 300 chunks of INFERQ_CHUNK_SIZE=100: the worker is stopped with most of the job still queued
BASE = Path(__file__).resolve().parents[2] / "deploy" / "k8s" / "base"


def grace_margin() -> int:
    """Seconds the inference worker's terminationGracePeriodSeconds adds to INFERQ_TASK_TIME_LIMIT in deploy/k8s."""
    config = yaml.safe_load((BASE / "configmap.yaml").read_text())["data"]
    worker = yaml.safe_load((BASE / "worker-inference.yaml").read_text().split("\n---\n")[0])
    grace = worker["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    return int(grace) - int(config["INFERQ_TASK_TIME_LIMIT"])


def scored(s: FaultStack, job_id: uuid.UUID) -> int:
    """Items of the job with a prediction row."""
    with s.engine.connect() as conn:
        sql = "SELECT count(*) FROM job_items WHERE job_id = :j AND status <> 'pending'"
        return int(conn.execute(sa.text(sql), {"j": job_id}).scalar_one())


def broker_state(s: FaultStack) -> tuple[int, int]:
    """(distinct score chunks with a message waiting in the `bulk` list, messages kombu holds delivered but
    unacknowledged -- those go back to a list only after the visibility timeout). Beat's periodic messages are not
    counted; a chunk the reconciler published again while its first message waited counts once (a message's body
    is its arguments: the job and the chunk)."""
    import redis

    client = redis.Redis.from_url(s.redis.url)
    try:
        waiting = client.lrange("bulk", 0, -1)
        messages = [json.loads(m) for m in waiting]  # type: ignore[union-attr]
        chunks = {m["body"] for m in messages if m["headers"]["task"] == SCORE_CHUNK_TASK}
        return len(chunks), int(client.hlen("unacked"))  # type: ignore[arg-type]
    finally:
        client.close()


def test_sigterm_mid_bulk_job_drains_within_the_grace_period(
    fault_stack: FaultStack, report: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM mid-way through a 30,000-item score job: the worker finishes its running chunks, hands the reserved
    ones back and exits 0 within the pod's grace period; a replacement finishes the job with exactly one
    prediction row per item (lost 0, duplicates 0)."""
    from api.app import create_app

    s = fault_stack
    grace = s.settings.task_time_limit + grace_margin()  # the manifest's rule, on this stack's time limit
    app = create_app(s.settings)
    use_key(app)
    client = app.test_client()
    dataset = upload(client, ITEMS)
    monkeypatch.setenv(CHUNK_DELAY_ENV, "0.5")  # 300 chunks on 8 threads: the job lasts ~20 s, not ~1 s
    first = s.start_worker()
    monkeypatch.delenv(CHUNK_DELAY_ENV)  # the replacement runs at full speed
    for _ in range(3):  # SIGTERM must land mid-job: if this process was starved until the job ended, run another
        resp = client.post("/v1/jobs", json={"kind": "score", "dataset": dataset})
        assert resp.status_code == 202, resp.json
        job = uuid.UUID(resp.json["id"])
        s.accepted.append(job)
        wait_until(lambda j=job: scored(s, j) >= 1_000, 120, "the first chunks of the job", interval=0.02)
        s.checker.snapshot()  # a row rewritten after this counts as a duplicate
        at_sigterm = scored(s, job)
        if at_sigterm <= ITEMS // 2:
            break
        wait_until(lambda j=job: s.checker.is_terminal(j), 120, "the job that ran to its end", interval=0.1)
    else:
        pytest.fail("three score jobs of 30,000 items ran past half-way before the test could send SIGTERM")
    t0 = time.monotonic()
    first.signal(signal.SIGTERM)
    code = first.proc.wait(grace)  # raises TimeoutExpired past the grace period (the kubelet's SIGKILL)
    drained_s = time.monotonic() - t0
    at_exit = scored(s, job)
    assert code == 0, first.output()[-3000:]
    assert "warm shutdown" in first.output().lower(), first.output()[-3000:]
    assert at_sigterm < at_exit < ITEMS, (at_sigterm, at_exit)  # running chunks finished, the rest not started
    chunks_left = (ITEMS - at_exit) // s.settings.chunk_size
    assert (ITEMS - at_exit) % s.settings.chunk_size == 0  # a chunk's rows commit together: none half-written
    # handed back at once, not left to the visibility timeout: every unscored chunk is in the list KEDA watches
    assert broker_state(s) == (chunks_left, 0)
    s.start_worker(wait=False)  # the replacement pod
    wait_until(lambda: s.checker.is_terminal(job), 240, "the replacement worker to finish the job", interval=0.1)
    v = s.checker.verdict("worker SIGTERM mid-bulk (k8s scale-in)", s.accepted, drained_s)
    report(v.line() + f" drained_in_s={drained_s:.1f} grace_s={grace} scored_at_sigterm={at_sigterm}/{ITEMS}")
    app.extensions["inferq"].engine.dispose()
    with s.engine.connect() as conn:
        status, completed, failed = conn.execute(
            sa.text("SELECT status, completed_items, failed_items FROM jobs WHERE id = :j"), {"j": job}
        ).one()
        rows, distinct, low, high, labelled = conn.execute(
            sa.text(
                "SELECT count(*), count(DISTINCT idx), min(idx), max(idx), count(label) "
                "FROM job_items WHERE job_id = :j"
            ),
            {"j": job},
        ).one()
    assert (status, completed, failed) == ("succeeded", ITEMS, 0)
    assert (rows, distinct, low, high, labelled) == (ITEMS, ITEMS, 0, ITEMS - 1, ITEMS)
    assert (v.lost, v.duplicates, v.failed) == (0, 0, 0)
