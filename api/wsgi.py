"""The WSGI entry point for servers (`gunicorn api.wsgi:app`): the app, built once per server process, with its
start-up heap frozen out of the garbage collector's full passes (see shared.runtime.heap)."""

from __future__ import annotations

import os
from pathlib import Path

if folder := os.environ.get(
    "PROMETHEUS_MULTIPROC_DIR"
):  # before prometheus-client is imported (shared.runtime.metrics)
    Path(folder).mkdir(parents=True, exist_ok=True)

from api.app import create_app  # noqa: E402
from shared.runtime.heap import freeze_startup_heap  # noqa: E402

app = create_app()
freeze_startup_heap()
