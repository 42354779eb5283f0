"""The WSGI entry point for servers (`gunicorn api.wsgi:app`): the app, built once per server process, with its
start-up heap frozen out of the garbage collector's full passes (see shared.heap)."""

from __future__ import annotations

from api.app import create_app
from shared.heap import freeze_startup_heap

app = create_app()
freeze_startup_heap()
