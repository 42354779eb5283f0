"""Bulk scoring as plain functions, on SQLite with a fake model: chunks, idempotence, errors, cancel, summary."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import func, select, update

from shared.config.settings import Settings
from shared.config.status import JobKind, JobStatus
from shared.db.engine import session_scope, upgrade_database
from shared.db.models import Dataset, Job, JobItem, ModelVersion, utcnow
from shared.inputs.datasets import ingest
from shared.jobs import lifecycle as jobstore
from shared.registry.versions import register_version
from shared.schemas.public import JobPublic
from tests.dataset_factories import digits, jsonl_bytes, npz_bytes
from tests.factories import encode, png_bytes
from worker.context import WorkerContext
from worker.scoring import chunk_count, fail_chunk, run_chunk


class BarModel:
    """Ten classes; predicts the label encoded by digits(): the row of the bright bar."""

    num_classes = 10

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        out = np.full((len(x), 10), 0.01, dtype=np.float32)
        rows = x.reshape(len(x), 28, 28).max(axis=2).argmax(axis=1)
        out[np.arange(len(x)), np.clip((rows - 2) // 2, 0, 9)] = 0.91
        return out


@pytest.fixture
def ctx(tmp_path: Path) -> Iterator[WorkerContext]:
    settings = Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0", chunk_size=40, score_batch=16)
    upgrade_database(settings)
    context = WorkerContext(settings)
    yield context
    context.close()


@pytest.fixture
def model(ctx: WorkerContext) -> tuple[ModelVersion, BarModel]:
    fake = BarModel()
    with session_scope(ctx.sessions) as session:
        mv = register_version(
            session, name="mnist-cnn", format="keras", artifact_uri="unused", size_bytes=1, aliases=("production",)
        )
    ctx.models.get((mv.name, mv.version, mv.variant), lambda: fake)
    return mv, fake


def new_dataset(ctx: WorkerContext, name: str, data: bytes) -> Dataset:
    src = ctx.settings.data_dir / f"up-{uuid.uuid4()}"
    src.write_bytes(data)
    with session_scope(ctx.sessions) as session:
        ds = ingest(session=session, settings=ctx.settings, src=src, filename=name)
        session.expunge(ds)
    return ds


def new_job(ctx: WorkerContext, ds: Dataset, top: int = 3) -> uuid.UUID:
    with session_scope(ctx.sessions) as session:
        job = Job(
            kind=JobKind.SCORE.value,
            model_ref="mnist-cnn",
            params={"dataset_id": str(ds.id), "chunk_size": ctx.settings.chunk_size, "top_k": top},
            total_items=ds.item_count,
        )
        session.add(job)
        session.flush()
        return job.id


def job_row(ctx: WorkerContext, job_id: uuid.UUID) -> Job:
    with session_scope(ctx.sessions) as session:
        job = jobstore.get_job(session, job_id)
        session.expunge(job)
        return job


def item_count(ctx: WorkerContext, job_id: uuid.UUID) -> int:
    with session_scope(ctx.sessions) as session:
        return session.scalar(select(func.count()).select_from(JobItem).where(JobItem.job_id == job_id)) or 0


def run_all(ctx: WorkerContext, job_id: uuid.UUID, total: int) -> None:
    for index in range(chunk_count(total, ctx.settings.chunk_size)):
        run_chunk(ctx, job_id, index)


def test_chunks_score_every_item_with_accuracy(ctx: WorkerContext, model: tuple[ModelVersion, BarModel]) -> None:
    """Every chunk writes its items in full batches; the last one finishes the job with accuracy and a matrix."""
    x, y = digits(100)
    ds = new_dataset(ctx, "d.npz", npz_bytes(x=x, y=y))
    job_id = new_job(ctx, ds)
    run_chunk(ctx, job_id, 0)
    mid = job_row(ctx, job_id)
    assert (mid.status, mid.completed_items) == (JobStatus.RUNNING.value, 40)
    run_all(ctx, job_id, 100)
    job = job_row(ctx, job_id)
    assert (job.status, job.completed_items, job.failed_items) == (JobStatus.SUCCEEDED.value, 100, 0)
    assert job.result is not None and job.result["accuracy"] == 1.0
    matrix = job.result["confusion_matrix"]["matrix"]
    assert sum(map(sum, matrix)) == 100
    assert max(model[1].calls) == 16  # batches of INFERQ_SCORE_BATCH


def test_redelivered_chunk_changes_nothing(ctx: WorkerContext, model: tuple[ModelVersion, BarModel]) -> None:
    """Running a chunk twice (a redelivery) adds no row and runs no second forward pass."""
    x, y = digits(60)
    ds = new_dataset(ctx, "d.npz", npz_bytes(x=x, y=y))
    job_id = new_job(ctx, ds)
    run_chunk(ctx, job_id, 0)
    calls = len(model[1].calls)
    assert run_chunk(ctx, job_id, 0).status == "already-done"
    assert len(model[1].calls) == calls
    assert item_count(ctx, job_id) == 40


def test_rows_written_twice_are_ignored(ctx: WorkerContext, model: tuple[ModelVersion, BarModel]) -> None:
    """A chunk whose write is repeated (crash after commit, before ack) inserts nothing twice."""
    from worker.scoring import write_chunk

    ds = new_dataset(ctx, "d.npz", npz_bytes(x=digits(10)[0]))
    job_id = new_job(ctx, ds)
    fail_chunk(ctx, job_id, 0, "boom")
    with session_scope(ctx.sessions) as session:
        write_chunk(session, ctx.settings, job_id, [])
    assert item_count(ctx, job_id) == 10
    job = job_row(ctx, job_id)
    assert (job.status, job.failed_items) == (JobStatus.FAILED.value, 10)


def test_undecodable_images_become_error_rows(ctx: WorkerContext, model: tuple[ModelVersion, BarModel]) -> None:
    """An item that cannot be decoded is an error row; the rest of the job succeeds."""
    ds = new_dataset(ctx, "m.jsonl", jsonl_bytes([png_bytes(), b"not an image", png_bytes()]))
    job_id = new_job(ctx, ds)
    run_all(ctx, job_id, 3)
    job = job_row(ctx, job_id)
    assert (job.status, job.completed_items, job.failed_items) == (JobStatus.SUCCEEDED.value, 2, 1)
    with session_scope(ctx.sessions) as session:
        bad = session.scalars(select(JobItem).where(JobItem.status == "failed")).one()
        assert (bad.idx, bad.filename, bad.error_type) == (1, "img-1", "invalid-image")


def test_canceled_job_skips_chunks_not_started(ctx: WorkerContext, model: tuple[ModelVersion, BarModel]) -> None:
    """After cancel, remaining chunks are skipped; counts reflect exactly the items written."""
    ds = new_dataset(ctx, "d.npz", npz_bytes(x=digits(100)[0]))
    job_id = new_job(ctx, ds)
    run_chunk(ctx, job_id, 0)
    with session_scope(ctx.sessions) as session:
        jobstore.cancel_job(session, job_id)
    assert run_chunk(ctx, job_id, 1).status == "skipped-canceled"
    job = job_row(ctx, job_id)
    assert (job.status, job.completed_items, item_count(ctx, job_id)) == (JobStatus.CANCELED.value, 40, 40)


def test_a_deadline_passing_mid_job_expires_it_and_keeps_the_rows_written(
    ctx: WorkerContext, model: tuple[ModelVersion, BarModel]
) -> None:
    """A score job whose deadline passes after its first chunk ends expired at the next chunk: that chunk and the
    rest are skipped, the first chunk's rows stay, and the counts say 60 of 100 items expired."""
    ds = new_dataset(ctx, "d.npz", npz_bytes(x=digits(100)[0]))
    job_id = new_job(ctx, ds)
    run_chunk(ctx, job_id, 0)
    with session_scope(ctx.sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(deadline_at=utcnow() - timedelta(seconds=1)))
    assert run_chunk(ctx, job_id, 1).status == "skipped-expired"
    assert run_chunk(ctx, job_id, 2).status == "skipped-expired"
    job = job_row(ctx, job_id)
    assert (job.status, job.error_type, job.completed_items, item_count(ctx, job_id)) == (
        "expired",
        "deadline-expired",
        40,
        40,
    )
    assert JobPublic.of(job).counts.model_dump() == {"total": 100, "completed": 40, "failed": 0, "expired": 60}


def rows_of(ctx: WorkerContext, job_id: uuid.UUID) -> list[JobItem]:
    with session_scope(ctx.sessions) as session:
        rows = list(session.scalars(select(JobItem).where(JobItem.job_id == job_id).order_by(JobItem.idx)))
        session.expunge_all()
        return rows


def test_blank_array_items_get_no_label_and_no_forward_pass(
    ctx: WorkerContext, model: tuple[ModelVersion, BarModel]
) -> None:
    """All-zero 28x28 array items succeed with a null label and `no-ink`, never reach the model, and are counted
    as unreadable in the summary; the accuracy is over the items that got a label."""
    x, y = digits(30)
    x[[3, 17]] = 0
    ds = new_dataset(ctx, "d.npz", npz_bytes(x=x, y=y))
    job_id = new_job(ctx, ds)
    run_all(ctx, job_id, 30)
    job = job_row(ctx, job_id)
    assert (job.status, job.completed_items, job.failed_items) == (JobStatus.SUCCEEDED.value, 30, 0)
    assert job.result is not None and job.result["unreadable_items"] == 2
    assert job.result["accuracy"] == 1.0 and job.result["labelled_items"] == 28
    assert sum(model[1].calls) == 28
    rows = rows_of(ctx, job_id)
    blank = [(r.idx, r.status, r.label, r.confidence, r.top_k, r.warnings) for r in rows if r.label is None]
    assert blank == [(3, "succeeded", None, None, None, ["no-ink"]), (17, "succeeded", None, None, None, ["no-ink"])]
    assert all(r.warnings == [] for r in rows if r.label is not None)


def test_blank_image_files_get_no_label_and_errors_no_warnings(
    ctx: WorkerContext, model: tuple[ModelVersion, BarModel]
) -> None:
    """In a dataset of image files a white page gets a null label and `no-ink`, a digit a label with an empty
    list, an undecodable file an error row without warnings."""
    white = encode(Image.new("L", (40, 40), 255), "PNG")
    ds = new_dataset(ctx, "m.jsonl", jsonl_bytes([png_bytes(), white, b"not an image"]))
    job_id = new_job(ctx, ds)
    run_all(ctx, job_id, 3)
    assert job_row(ctx, job_id).status == JobStatus.SUCCEEDED.value
    rows = rows_of(ctx, job_id)
    assert [(r.status, r.label is not None, r.warnings) for r in rows] == [
        ("succeeded", True, []),
        ("succeeded", False, ["no-ink"]),
        ("failed", False, None),
    ]
    assert model[1].calls == [1]


def test_scored_rows_under_the_threshold_are_low_confidence(
    tmp_path: Path, model: tuple[ModelVersion, BarModel]
) -> None:
    """Every scored row whose top confidence (0.91 here) is under INFERQ_LOW_CONFIDENCE_THRESHOLD says so."""
    settings = Settings(
        data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0", chunk_size=40, low_confidence_threshold=0.95
    )
    strict = WorkerContext(settings)
    strict.models.get((model[0].name, model[0].version, model[0].variant), lambda: model[1])
    try:
        ds = new_dataset(strict, "d.npz", npz_bytes(x=digits(10)[0]))
        job_id = new_job(strict, ds)
        run_all(strict, job_id, 10)
        assert [r.warnings for r in rows_of(strict, job_id)] == [["low-confidence"]] * 10
    finally:
        strict.close()
