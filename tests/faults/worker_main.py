"""`inferq worker` for the fault suite, minus TensorFlow's device setup.

The fault model is TFLite (served by LiteRT), so nothing in these workers needs TensorFlow; the CLI's
`configure_tensorflow()` alone would import it (~10 s of every worker start, and there are ~20 starts in the suite).
Everything else is the real CLI. Run as `python -m tests.faults.worker_main worker --lanes ... --beat`.
"""

from __future__ import annotations

import sys

import worker.gpu


def _no_tensorflow() -> list[str]:
    """No GPU list to report: TensorFlow is not loaded in this worker."""
    return []


worker.gpu.configure_tensorflow = _no_tensorflow

if __name__ == "__main__":
    from inferq.cli import main

    main(sys.argv[1:], prog_name="inferq")
