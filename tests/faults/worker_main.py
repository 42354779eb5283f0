"""`inferq worker` for the fault suite: the real CLI, where a score chunk can be slowed down.

With FAULT_CHUNK_DELAY_S set, every score chunk waits that long before it runs, so a score job of the fast TFLite model
lasts long enough for a test to signal the worker mid-job. Run as `python -m tests.faults.worker_main worker
--lanes ... --beat`.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import worker.scoring

CHUNK_DELAY_ENV = "FAULT_CHUNK_DELAY_S"  # seconds each score chunk waits before it runs (0: none)


def _slowed(run_chunk: Any, delay: float) -> Any:
    """run_chunk after `delay` seconds: a score job of the fast TFLite model then lasts long enough for a test to
    signal the worker mid-job on a loaded machine (the delay is before any row is written)."""

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(delay)
        return run_chunk(*args, **kwargs)

    return slow


if (chunk_delay := float(os.environ.get(CHUNK_DELAY_ENV, "0"))) > 0:  # before worker.tasks.scoring imports it
    worker.scoring.run_chunk = _slowed(worker.scoring.run_chunk, chunk_delay)

if __name__ == "__main__":
    from inferq.cli import main

    main(sys.argv[1:], prog_name="inferq")
