"""A poison batch that kills its worker every time is tried INFERQ_MAX_ATTEMPTS times, then fails; the rest flows."""

from __future__ import annotations

import time
from typing import Any

import pytest
import sqlalchemy as sa

from tests.faults.conftest import FaultStack
from tests.integration.conftest import wait_until
from worker.inference import FAULT_POISON_MODEL

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


def test_poison_job_fails_after_max_attempts(fault_stack: FaultStack, report: Any) -> None:
    """The poison job ends failed (too-many-attempts) after 3 deliveries; 200 ordinary jobs all succeed."""
    s = fault_stack
    s.start_worker()
    s.submit(100)
    poison = s.submit(1, model=FAULT_POISON_MODEL)[0]
    s.submit(100)
    crashes, worst, deadline = 0, 0.0, time.monotonic() + 300
    while not s.checker.is_terminal(poison) and time.monotonic() < deadline:  # a supervisor: restart the dead
        if not s.worker.alive():
            crashes += 1
            t_fault = time.monotonic()  # the crash happened just now (polled every 0.2 s)
            s.worker.kill9()
            s.start_worker()
            worst = max(worst, time.monotonic() - t_fault)
        time.sleep(0.2)
    s.quiesce()
    with s.engine.connect() as conn:
        job = conn.execute(sa.text("SELECT status, attempts, error_type FROM jobs WHERE id = :j"), {"j": poison}).one()
        items = conn.execute(sa.text("SELECT status, error FROM job_items WHERE job_id = :j"), {"j": poison}).all()
    v = s.checker.verdict(f"poison job (crashed worker {crashes}x)", s.accepted, worst)
    report(v.line())
    assert (job.status, job.attempts, job.error_type) == ("failed", 3, "too-many-attempts")
    assert crashes == 3 and [i.status for i in items] == ["failed"] and items[0].error
    assert (v.lost, v.duplicates, v.failed) == (0, 0, 1)
    wait_until(lambda: s.worker.alive(), 1, "the worker to stay up after the poison job failed")
