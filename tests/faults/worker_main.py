"""`inferq worker` for the fault suite, minus TensorFlow's device setup.

The fault model is TFLite (served by LiteRT), so nothing in these workers needs TensorFlow; the CLI's
`configure_tensorflow()` alone would import it (~10 s of every worker start, and there are ~20 starts in the suite).
Everything else is the real CLI. Run as `python -m tests.faults.worker_main worker --lanes ... --beat`.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import worker.gpu
import worker.scoring

CHUNK_DELAY_ENV = "FAULT_CHUNK_DELAY_S"  # seconds each score chunk waits before it runs (0: none)


def _no_tensorflow() -> list[str]:
    """No GPU list to report: TensorFlow is not loaded in this worker."""
    return []


def _slowed(run_chunk: Any, delay: float) -> Any:
    """run_chunk after `delay` seconds: a score job of the fast TFLite model then lasts long enough for a test to
    signal the worker mid-job on a loaded machine (the delay is before any row is written)."""

    def slow(*args: Any, **kwargs: Any) -> Any:
        time.sleep(delay)
        return run_chunk(*args, **kwargs)

    return slow


worker.gpu.configure_tensorflow = _no_tensorflow
if (chunk_delay := float(os.environ.get(CHUNK_DELAY_ENV, "0"))) > 0:  # before worker.tasks.scoring imports it
    worker.scoring.run_chunk = _slowed(worker.scoring.run_chunk, chunk_delay)

if __name__ == "__main__":
    from inferq.cli import main

    main(sys.argv[1:], prog_name="inferq")
