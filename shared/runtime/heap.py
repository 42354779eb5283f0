"""Keep the garbage collector off the start-up heap of long-running processes.

TensorFlow, Keras, SQLAlchemy and Celery leave about a million long-lived objects in a worker process. CPython's
full collections walk all of them: 0.3-0.4 s of held GIL, measured in the middle of scoring (bench/bulk.py). After
start-up, `freeze_startup_heap` collects once and moves every object then alive into the permanent generation
(`gc.freeze`), so later collections only look at what was made since. `thaw` undoes it, for when part of that heap
is let go (a model evicted from the cache): frozen objects in reference cycles would otherwise never be freed."""

from __future__ import annotations

import gc
import logging

log = logging.getLogger(__name__)


def freeze_startup_heap() -> int:
    """Collect, then freeze every surviving object; return how many are frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("froze %d start-up objects out of the garbage collector's reach", frozen)
    return frozen


def thaw() -> None:
    """Return frozen objects to the collector (their next full collection frees whatever became garbage)."""
    if gc.get_freeze_count():
        gc.unfreeze()
        log.info("unfroze the start-up heap")
