"""Fixtures for the API tests: the real app on a migrated SQLite database, with a recording Celery client."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from shared.db.engine import session_scope
from tests.access import use_key
from tests.factories import SentTasks, add_model_version, make_settings, migrate, services_of


@pytest.fixture(autouse=True)
def _no_inferq_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's INFERQ_* variables out of these tests."""
    for key in list(os.environ):
        if key.startswith("INFERQ_"):
            monkeypatch.delenv(key)


AppFactory = Callable[..., Flask]


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[AppFactory]:
    """Build the app for settings overrides: migrated SQLite, mnist-cnn:1 @production, recording Celery
    (or the real Celery client with real_celery=True), and test clients that send an API key of the tenant
    "default" with every scope."""
    built: list[Flask] = []

    def build(*, celery: Any | None = None, real_celery: bool = False, seed: bool = True, **overrides: Any) -> Flask:
        settings = make_settings(tmp_path, **overrides)
        migrate(settings)
        app = create_app(settings)
        svc = services_of(app)
        if seed:
            with session_scope(svc.sessions) as session:
                add_model_version(session, metrics={"accuracy": 0.991, "loss": 0.03})
        if not real_celery:
            svc.celery = celery if celery is not None else SentTasks()
        use_key(app)  # every app.test_client() sends a key of tenant "default" with every scope
        built.append(app)
        return app

    yield build
    for app in built:
        services_of(app).engine.dispose()


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return make_app()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def sent(app: Flask) -> SentTasks:
    celery = services_of(app).celery
    assert isinstance(celery, SentTasks)
    return celery
