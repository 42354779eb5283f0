"""Migration 0005_api_keys keeps existing models and aliases (now public) and goes back down cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from shared.config.settings import Settings
from shared.db.engine import alembic_config, make_engine, make_sessionmaker, upgrade_database
from shared.registry.versions import parse_ref, resolve
from tests.factories import make_settings

VERSION = (
    "INSERT INTO model_versions (name, version, format, variant, artifact_uri, size_bytes, input_spec, labels, "
    "metrics, params, created_at) VALUES ('m', 1, 'keras', 'float32', 'x', 1, '{}', '[]', '{}', '{}', :now)"
)
ALIAS = (
    "INSERT INTO model_aliases (name, alias, version_id, updated_at) "
    "SELECT 'm', 'production', id, :now FROM model_versions"
)


def _roundtrip(settings: Settings) -> None:
    """Upgrade to 0004 with one model and alias, upgrade to the head, check, downgrade, check, upgrade again."""
    cfg = alembic_config(settings)
    command.upgrade(cfg, "0004_datasets")
    engine = sa.create_engine(settings.resolved_database_url)
    with engine.begin() as conn:
        conn.execute(sa.text(VERSION), {"now": "2026-01-01 00:00:00"})
        conn.execute(sa.text(ALIAS), {"now": "2026-01-01 00:00:00"})
    upgrade_database(settings)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT name, alias, tenant_id FROM model_aliases")).all() == [
            ("m", "production", "")
        ]
        assert conn.execute(sa.text("SELECT tenant_id FROM model_versions")).all() == [(None,)]
    app_engine = make_engine(settings)
    with make_sessionmaker(app_engine)() as session:  # an old alias resolves for every tenant
        assert resolve(session, parse_ref("m"), default_alias="production", tenant_id="acme").version == 1
    app_engine.dispose()
    command.downgrade(cfg, "0004_datasets")
    inspector = sa.inspect(engine)
    assert inspector.get_pk_constraint("model_aliases")["constrained_columns"] == ["name", "alias"]
    assert "api_keys" not in inspector.get_table_names()
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT name, alias FROM model_aliases")).all() == [("m", "production")]
    engine.dispose()
    upgrade_database(settings)


def test_sqlite_upgrade_keeps_aliases_public_and_downgrades(tmp_path: Path) -> None:
    """On SQLite (which rebuilds the alias table for its new key) rows survive both ways."""
    _roundtrip(make_settings(tmp_path))


@pytest.mark.integration
def test_postgres_upgrade_keeps_aliases_public_and_downgrades(tmp_path: Path, pg_url: str) -> None:
    """On PostgreSQL (which alters the primary key in place) rows survive both ways."""
    _roundtrip(make_settings(tmp_path, database_url=pg_url))
