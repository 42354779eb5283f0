"""The COPY fast path of a chunk's rows, on real PostgreSQL: what it stores equals what the ORM would store."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select, text

from shared.config.settings import Settings
from shared.config.status import JobKind, JobStatus
from shared.db.engine import make_engine, make_sessionmaker, session_scope, upgrade_database
from shared.db.models import Job, JobItem, utcnow
from shared.inputs.datasets import ArrayItems, StoredItem, ingest
from shared.registry.versions import register_version
from tests.dataset_factories import digits, npy_bytes
from worker.context import WorkerContext
from worker.scoring import ROW_COLUMNS, ChunkRows, _row, copy_payload, insert_rows, run_chunk, to_inputs, write_chunk

WARNED = [[], ["no-ink"], ["low-contrast", "low-confidence"], ["several-digits"]]
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
        warned = WARNED[i % len(WARNED)]
        rows.append(
            _row(
                job_id,
                StoredItem(i, name, None),
                now,
                label=name,
                confidence=0.75,
                top_k=top,
                warnings=warned,
                batch_size=i + 1,
            )
        )
    rows.append(_row(job_id, StoredItem(len(rows), "bad\tfile", None), now, error_type="not-an-image", error="x\ny"))
    for r in rows:
        r["model_version_id"] = None
    return rows


def test_copy_rows_read_back_exactly(sessions) -> None:  # type: ignore[no-untyped-def]
    """Every text column, the top-k and warnings JSON, NULLs and timestamps survive COPY's escaping (NUL in text:
    U+FFFD)."""
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
            for column in ROW_COLUMNS:  # every column COPY writes, read back
                assert getattr(got, column) == clean[column], column


class BlankAwareModel:
    """Ten classes, always '3' at 0.5: it must never be shown an all-zero input."""

    num_classes = 10

    def __init__(self) -> None:
        self.seen = 0

    def predict(self, x: np.ndarray) -> np.ndarray:
        assert x.reshape(len(x), -1).any(axis=1).all(), "a blank item reached the model"
        self.seen += len(x)
        out = np.full((len(x), 10), 0.05, dtype=np.float32)
        out[:, 3] = 0.55
        return out


def test_a_scored_chunk_writes_warnings_through_copy(pg_url: str, tmp_path: Path) -> None:
    """A chunk scored and written on PostgreSQL (the COPY path) stores `no-ink` with a null label for blank
    items and `low-confidence` for predictions under the threshold, read back as JSON lists."""
    settings = Settings(data_dir=tmp_path, database_url=pg_url, redis_url="redis://127.0.0.1:1/0", chunk_size=10)
    upgrade_database(settings)
    ctx = WorkerContext(settings)
    try:
        fake = BlankAwareModel()
        with session_scope(ctx.sessions) as session:
            mv = register_version(session, name="mnist-cnn", format="keras", artifact_uri="unused", size_bytes=1)
        ctx.models.get((mv.name, mv.version, mv.variant), lambda: fake)
        x = digits(8)[0]
        x[[0, 5]] = 0
        src = tmp_path / "up.npy"
        src.write_bytes(npy_bytes(x))
        with session_scope(ctx.sessions) as session:
            ds = ingest(session=session, settings=settings, src=src, filename="d.npy")
            job = Job(
                kind=JobKind.SCORE.value,
                model_ref="mnist-cnn",
                params={"dataset_id": str(ds.id), "chunk_size": 10, "top_k": 2},
                total_items=8,
            )
            session.add(job)
            session.flush()
            job_id = job.id
        assert run_chunk(ctx, job_id, 0).status == JobStatus.SUCCEEDED.value
        with session_scope(ctx.sessions) as session:
            stored = session.execute(
                select(JobItem.idx, JobItem.label, JobItem.top_k, JobItem.warnings)
                .where(JobItem.job_id == job_id)
                .order_by(JobItem.idx)
            ).all()
        assert fake.seen == 6
        for idx, label, top, warned in stored:
            if idx in (0, 5):
                assert (label, top, warned) == (None, None, ["no-ink"])
            else:
                assert (label, len(top), warned) == ("3", 2, ["low-confidence"])
    finally:
        ctx.close()


def test_only_the_chunk_that_finishes_a_job_waits_for_the_wal_flush(sessions) -> None:  # type: ignore[no-untyped-def]
    """A chunk that leaves its job running commits with synchronous_commit off (bulk rows do not hold up the fsyncs
    of interactive commits); the one that finishes the job commits with it on, so no crash un-finishes a job."""
    settings = Settings(data_dir=Path("/nonexistent"), database_url="sqlite://")
    with session_scope(sessions) as session:
        job = Job(kind=JobKind.SCORE.value, model_ref="m", params={}, total_items=2 * len(AWKWARD) + 2)
        session.add(job)
        session.flush()
        job_id = job.id
    seen = []
    for part in range(2):
        rows = rows_for(job_id)
        for r in rows:
            r["idx"] += part * len(rows)
            r["error_type"] = "not-an-image"  # every item failed: the job ends without a summary to compute
        with session_scope(sessions) as session:
            status = write_chunk(session, settings, job_id, rows)
            seen.append((status, session.execute(text("SHOW synchronous_commit")).scalar()))
    assert seen == [(JobStatus.QUEUED.value, "off"), (JobStatus.FAILED.value, "on")]
    with session_scope(sessions) as session:
        assert session.execute(text("SHOW synchronous_commit")).scalar() == "on"  # SET LOCAL: one transaction only
    with session_scope(sessions) as session:
        off = Settings(data_dir=Path("/nonexistent"), database_url="sqlite://", bulk_async_commit=False)
        other = Job(kind=JobKind.SCORE.value, model_ref="m", params={}, total_items=100)
        session.add(other)
        session.flush()
        write_chunk(session, off, other.id, rows_for(other.id))
        assert session.execute(text("SHOW synchronous_commit")).scalar() == "on"


def awkward_chunk(job_id: uuid.UUID, version_id: int = 7) -> ChunkRows:
    """Two forward passes whose labels and file names need every COPY escape, items with and without
    preprocessing warnings, confidences on both sides of the threshold, labels fewer than outputs, and dict rows
    (an undecodable and an unreadable item) beside them."""
    now = utcnow()
    other = [
        _row(job_id, StoredItem(0, "bad\tfile", None), now, error_type="not-an-image", error="x\ny"),
        _row(job_id, StoredItem(1, "blank", None), now, warnings=["no-ink"]),
    ]
    for r in other:
        r["model_version_id"] = version_id
    chunk = ChunkRows(job_id, now, version_id=version_id, labels=AWKWARD[:-2], threshold=0.5, other=other)
    rng = np.random.default_rng(3)
    idx = 2
    for size in (5, 4):
        items = [StoredItem(idx + i, AWKWARD[(idx + i) % len(AWKWARD)], None) for i in range(size)]
        noticed = [tuple(WARNED[(idx + i) % len(WARNED)]) for i in range(size)]
        probs = rng.random((size, len(AWKWARD))).astype(np.float32)
        probs[0] = 0.0
        probs[0, -1] = 0.9  # a label past the version's list: named by its index
        chunk.add_pass(items, noticed, probs / probs.sum(axis=1, keepdims=True), 3)
        idx += size
    return chunk


def test_chunk_rows_as_copy_text_equal_their_dicts_through_copy_payload() -> None:
    """The columnar COPY text of a chunk is byte for byte what copy_payload writes for the same rows as dicts."""
    chunk = awkward_chunk(uuid.uuid4())
    rows = chunk.dicts()
    assert len(rows) == len(chunk) == 11
    assert chunk.idxs == [r["idx"] for r in rows] == list(range(11))
    assert chunk.failed == 1
    assert chunk.copy_text() == copy_payload(rows)
    first = rows[2]  # the first prediction: the label past the version's list, named "8"
    assert (first["label"], first["batch_size"], first["model_version_id"]) == ("8", 5, 7)
    assert [t["label"] for t in first["top_k"]][0] == "8" and len(first["top_k"]) == 3
    for r in rows[2:]:
        top = r["top_k"]
        assert r["confidence"] == top[0]["confidence"] >= top[1]["confidence"] >= top[2]["confidence"]
        noticed = WARNED[r["idx"] % len(WARNED)]
        assert r["warnings"][: len(noticed)] == noticed
        assert ("low-confidence" in r["warnings"]) == (r["confidence"] < 0.5 or "low-confidence" in noticed)


def test_chunk_rows_read_back_from_postgresql_as_their_dicts(sessions) -> None:  # type: ignore[no-untyped-def]
    """What a chunk's columnar COPY stores, read back, is every column of its rows as dicts."""
    with session_scope(sessions) as session:
        mv = register_version(session, name=f"m-{uuid.uuid4().hex[:8]}", format="keras", artifact_uri="-", size_bytes=1)
        job = Job(kind=JobKind.SCORE.value, model_ref=mv.name, params={}, total_items=11)
        session.add(job)
        session.flush()
        job_id, version_id = job.id, mv.id
    chunk = awkward_chunk(job_id, version_id)
    with session_scope(sessions) as session:
        insert_rows(session, chunk)
    with session_scope(sessions) as session:
        stored = session.scalars(select(JobItem).where(JobItem.job_id == job_id).order_by(JobItem.idx)).all()
        want = chunk.dicts()
        assert len(stored) == len(want)
        for row, got in zip(want, stored, strict=True):
            clean = {k: (v.replace("\x00", "\ufffd") if isinstance(v, str) else v) for k, v in row.items()}
            for column in ROW_COLUMNS:
                assert getattr(got, column) == clean[column], column


def test_an_array_chunk_is_scaled_from_its_block_as_its_items_would_be() -> None:
    """A chunk read from an array dataset carries its pixel block; the inputs made from it (blank items sorted out
    as `no-ink`) equal those made by stacking the same items one by one."""
    block = digits(12)[0]
    block[[2, 7]] = 0
    items = [StoredItem(i, str(i), None, pixels=block[i]) for i in range(len(block))]
    settings = Settings(data_dir=Path("/nonexistent"))
    fast, slow = to_inputs(ArrayItems(items, block), settings), to_inputs(list(items), settings)
    assert np.array_equal(fast.x, slow.x) and fast.x.dtype == np.float32
    assert [it.idx for it in fast.items] == [it.idx for it in slow.items] == [0, 1, 3, 4, 5, 6, 8, 9, 10, 11]
    assert [(it.idx, w) for it, w in fast.unreadable] == [(2, ("no-ink",)), (7, ("no-ink",))]
