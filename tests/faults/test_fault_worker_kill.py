"""Worker crashes: kill -9 mid-batch, kill -9 five times during 2,000 jobs, and a warm shutdown (SIGTERM)."""

from __future__ import annotations

import signal
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from tests.faults.conftest import FaultStack

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


def test_kill9_mid_batch_then_restart(fault_stack: FaultStack, report: Any) -> None:
    """A worker killed -9 while it holds reserved and running jobs loses none and duplicates no result."""
    s = fault_stack
    s.start_worker()
    s.submit(300)
    s.wait_progress(20)
    s.checker.snapshot()
    mark = s.fault_mark()
    s.worker.kill9()
    s.start_worker(wait=False)
    recovery = s.recovery_after(mark)
    s.quiesce()
    v = s.checker.verdict("worker kill -9 mid-batch", s.accepted, recovery)
    report(v.line())
    assert (v.lost, v.duplicates, v.failed) == (0, 0, 0)


def test_kill9_five_times_during_2000_jobs(fault_stack: FaultStack, report: Any) -> None:
    """Five kill -9s of the worker while 2,000 single-image jobs are submitted and run: every job ends, every item
    once."""
    s = fault_stack
    s.start_worker()
    with ThreadPoolExecutor(1, thread_name_prefix="feeder") as pool:  # submission goes on through the kills
        feeding = pool.submit(s.submit, 2000)
        worst = 0.0
        for k in range(5):
            s.wait_progress(150 + 350 * k, timeout=240)
            s.checker.snapshot()
            mark = s.fault_mark()
            s.worker.kill9()
            s.start_worker(wait=False)
            worst = max(worst, s.recovery_after(mark))
        assert len(feeding.result()) == 2000
    s.quiesce()
    v = s.checker.verdict("worker kill -9 x5 during 2000 jobs", s.accepted, worst)
    report(v.line())
    assert (v.lost, v.duplicates, v.failed) == (0, 0, 0)


def test_sigterm_warm_shutdown_mid_run(fault_stack: FaultStack, report: Any) -> None:
    """SIGTERM lets the worker finish its running tasks, return reserved ones, and exit; a new worker does the rest."""
    s = fault_stack
    s.start_worker()
    s.submit(300)
    s.wait_progress(30)
    s.checker.snapshot()
    w = s.worker
    mark = s.fault_mark()
    w.signal(signal.SIGTERM)
    assert w.proc.wait(60) == 0, w.output()[-2000:]
    s.start_worker(wait=False)
    recovery = s.recovery_after(mark)
    s.quiesce()
    v = s.checker.verdict("worker SIGTERM (warm shutdown)", s.accepted, recovery)
    report(v.line())
    assert (v.lost, v.duplicates, v.failed) == (0, 0, 0)
