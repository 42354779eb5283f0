"""Migration 0007_item_warnings adds job_items.warnings, keeps existing predictions, and goes back down cleanly."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command

from shared.config.settings import Settings
from shared.db.engine import alembic_config, upgrade_database
from tests.factories import make_settings

NOW = "2026-01-01 00:00:00"
JOB = (
    "INSERT INTO jobs (id, tenant_id, kind, status, model_ref, params, total_items, completed_items, failed_items, "
    "attempts, created_at, updated_at) VALUES (:id, 'default', 'classify', 'succeeded', 'm', '{}', 1, 1, 0, 1, :now, "
    ":now)"
)
ITEM = "INSERT INTO job_items (job_id, idx, status, label, confidence) VALUES (:id, 0, 'succeeded', '7', 0.9)"


def _columns(engine: sa.Engine) -> set[str]:
    return {c["name"] for c in sa.inspect(engine).get_columns("job_items")}


def _roundtrip(settings: Settings) -> None:
    """Upgrade to 0006 with one prediction, upgrade to the head, check, downgrade, check, upgrade again."""
    cfg = alembic_config(settings)
    command.upgrade(cfg, "0006_idempotency")
    engine = sa.create_engine(settings.resolved_database_url)
    job_id = uuid.uuid4().hex  # the form SQLite's Uuid column stores; PostgreSQL's uuid type reads it too
    with engine.begin() as conn:
        conn.execute(sa.text(JOB), {"id": job_id, "now": NOW})
        conn.execute(sa.text(ITEM), {"id": job_id})
    upgrade_database(settings)
    assert "warnings" in _columns(engine)
    with engine.connect() as conn:  # an older prediction has no warnings recorded (the API shows [])
        assert conn.execute(sa.text("SELECT label, warnings FROM job_items")).all() == [("7", None)]
    command.downgrade(cfg, "0006_idempotency")
    assert "warnings" not in _columns(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT label, confidence FROM job_items")).all() == [("7", 0.9)]
    engine.dispose()
    upgrade_database(settings)


def test_sqlite_upgrade_adds_warnings_and_downgrades(tmp_path: Path) -> None:
    """On SQLite (a batch table rebuild) the column comes and goes and the prediction row survives both ways."""
    _roundtrip(make_settings(tmp_path))


@pytest.mark.integration
def test_postgres_upgrade_adds_warnings_and_downgrades(tmp_path: Path, pg_url: str) -> None:
    """On PostgreSQL (ALTER TABLE in place) the column comes and goes and the prediction row survives both ways."""
    _roundtrip(make_settings(tmp_path, database_url=pg_url))
