"""Alembic migrations are the schema: they apply cleanly and leave nothing for autogenerate to add."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory

from shared.config.settings import Settings
from shared.db.engine import MIGRATIONS_DIR, alembic_config, upgrade_database
from shared.db.models import Base


def _diffs(url: str) -> list[object]:
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diffs = compare_metadata(ctx, Base.metadata)
    engine.dispose()
    return list(diffs)


def test_sqlite_schema_matches_the_models(tmp_path: Path) -> None:
    """After upgrade on SQLite, autogenerate finds nothing to add (alembic check)."""
    settings = Settings(data_dir=tmp_path)
    upgrade_database(settings)
    assert _diffs(settings.resolved_database_url) == []


@pytest.mark.integration
def test_postgres_schema_matches_the_models(tmp_path: Path, pg_url: str) -> None:
    """After upgrade on PostgreSQL, autogenerate finds nothing to add (alembic check)."""
    settings = Settings(data_dir=tmp_path, database_url=pg_url)
    upgrade_database(settings)
    assert _diffs(pg_url) == []


def test_migrations_form_one_line() -> None:
    """There is exactly one head: every migration builds on the one before."""
    script = ScriptDirectory.from_config(alembic_config(Settings()))
    assert len(script.get_heads()) == 1
    assert Path(script.dir) == MIGRATIONS_DIR
