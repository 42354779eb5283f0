"""Database fault: PostgreSQL crash-stopped (`pg_ctl -m immediate`) mid-run and started again."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.faults.conftest import FaultStack

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


def test_postgres_immediate_restart_mid_run(fault_stack: FaultStack, report: Any) -> None:
    """Workers ride out a PostgreSQL crash-restart: retried transactions, re-dispatch of interrupted jobs."""
    s = fault_stack
    s.start_worker()
    s.submit(300)
    s.wait_progress(50)
    s.checker.snapshot()
    mark = s.fault_mark()
    s.pg.stop("immediate")
    time.sleep(1.0)  # the database stays away for a moment (the outage itself, not synchronisation)
    s.pg.start()
    s.engine.dispose()  # the test's own pooled connections died with the server
    recovery = s.recovery_after(mark)
    s.quiesce()
    assert s.worker.alive(), s.worker.output()[-3000:]
    v = s.checker.verdict("postgres restart -m immediate", s.accepted, recovery)
    report(v.line())
    assert (v.lost, v.duplicates, v.failed) == (0, 0, 0)
