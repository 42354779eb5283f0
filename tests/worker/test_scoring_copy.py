"""The COPY fast path of a chunk's rows, on real PostgreSQL: what it stores equals what the ORM would store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from shared.datasets import StoredItem
from shared.db import make_engine, make_sessionmaker, session_scope, upgrade_database
from shared.models import Job, JobItem, utcnow
from shared.settings import Settings
from shared.status import JobKind
from worker.scoring import _row, copy_payload, insert_rows

AWKWARD = ["tab\there", "new\nline", "back\\slash", 'quote"d', "ünïcødé 七", "nul\x00byte", "\\N", "", "\r"]


@pytest.fixture
def sessions(pg_url: str, tmp_path: Path) -> Iterator[object]:
    settings = Settings(data_dir=tmp_path, database_url=pg_url)
    upgrade_database(settings)
    engine = make_engine(settings)
    yield make_sessionmaker(engine)
    engine.dispose()


def rows_for(job_id: uuid.UUID) -> list[dict[str, object]]:
    now = utcnow()
    rows = []
    for i, name in enumerate(AWKWARD):
        top = [{"label": name, "confidence": 0.1 + i / 100}, {"label": AWKWARD[i - 1], "confidence": 1e-9}]
        rows.append(
            _row(job_id, StoredItem(i, name, None), now, label=name, confidence=0.75, top_k=top, batch_size=i + 1)
        )
    rows.append(_row(job_id, StoredItem(len(rows), "bad\tfile", None), now, error_type="not-an-image", error="x\ny"))
    for r in rows:
        r["model_version_id"] = None
    return rows


def test_copy_rows_read_back_exactly(sessions) -> None:  # type: ignore[no-untyped-def]
    """Every text column, the top-k JSON, NULLs and timestamps survive COPY's escaping (NUL in text: U+FFFD)."""
    with session_scope(sessions) as session:
        job = Job(kind=JobKind.SCORE.value, model_ref="m", params={}, total_items=len(AWKWARD) + 1)
        session.add(job)
        session.flush()
        job_id = job.id
    rows = rows_for(job_id)
    assert copy_payload(rows).count("\n") == len(rows)  # one line per row: every newline inside a field is escaped
    with session_scope(sessions) as session:
        insert_rows(session, rows)
    with session_scope(sessions) as session:
        stored = session.scalars(select(JobItem).where(JobItem.job_id == job_id).order_by(JobItem.idx)).all()
        assert len(stored) == len(rows)
        for want, got in zip(rows, stored, strict=True):
            # text columns cannot hold NUL (U+FFFD instead); inside the JSON it is escaped as \u0000 and kept
            clean = {k: (v.replace("\x00", "\ufffd") if isinstance(v, str) else v) for k, v in want.items()}
            for column in ("idx", "filename", "status", "label", "confidence", "top_k", "error_type", "error"):
                assert getattr(got, column) == clean[column], column
            assert got.batch_size == want["batch_size"] and got.completed_at == want["completed_at"]
