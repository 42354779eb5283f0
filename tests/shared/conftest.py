"""Fixtures for the shared-core unit tests: a migrated SQLite database and a blob store under tmp_path."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.config.settings import Settings
from shared.db.engine import make_engine, make_sessionmaker
from shared.inputs.storage import LocalBlobStore
from tests.factories import make_settings, migrate


@pytest.fixture(autouse=True)
def _no_inferq_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep the developer's INFERQ_* variables out of these tests."""
    for key in list(os.environ):
        if key.startswith("INFERQ_"):
            monkeypatch.delenv(key)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    migrate(settings)
    eng = make_engine(settings)
    yield eng
    eng.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture
def session(sessions: sessionmaker[Session]) -> Iterator[Session]:
    s = sessions()
    yield s
    s.rollback()
    s.close()


@pytest.fixture
def store(settings: Settings) -> LocalBlobStore:
    return LocalBlobStore(settings.blob_dir)
