"""Broker faults: redis-server killed -9 and restarted from its append-only file, and restarted empty."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.faults.conftest import FaultStack

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


@pytest.mark.parametrize("empty", [False, True], ids=["with-aof", "empty"])
def test_redis_killed_and_restarted(fault_stack: FaultStack, report: Any, empty: bool) -> None:
    """Workers reconnect and keep consuming; jobs whose messages Redis lost are re-dispatched by the reconciler."""
    s = fault_stack
    s.start_worker()
    s.submit(300)
    s.wait_progress(50)
    s.checker.snapshot()
    mark = s.fault_mark()
    s.redis.kill()
    time.sleep(1.0)  # the broker stays away for a moment (not synchronisation: the outage itself)
    s.redis.restart(empty=empty)
    recovery = s.recovery_after(mark)
    s.quiesce()
    assert s.worker.alive(), s.worker.output()[-3000:]
    name = "redis kill -9, restart " + ("EMPTY" if empty else "with AOF")
    v = s.checker.verdict(name, s.accepted, recovery)
    report(v.line())
    assert (v.lost, v.duplicates, v.failed) == (0, 0, 0)
