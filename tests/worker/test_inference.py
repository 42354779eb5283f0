"""The classify job as plain functions, on SQLite with a tiny fake model (no broker, no TensorFlow)."""

from __future__ import annotations

import io
import uuid
from datetime import timedelta

import numpy as np
import pytest
from PIL import Image, ImageDraw
from sqlalchemy import select, update

from shared.db.engine import session_scope
from shared.db.models import Job, JobItem, ModelVersion, utcnow
from shared.jobs import lifecycle as jobstore
from shared.registry.versions import register_version
from tests.worker.conftest import ContextFactory
from worker.context import WorkerContext
from worker.inference import run_classify, top_k


class FakeModel:
    """Ten classes; the predicted class is the number of bright rows modulo 10 (deterministic)."""

    num_classes = 10

    def __init__(self) -> None:
        self.calls: list[int] = []

    def predict(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(len(x))
        out = np.full((len(x), 10), 0.01, dtype=np.float32)
        for i, img in enumerate(x):
            out[i, int((img.max(axis=1) > 0.5).sum()) % 10] = 0.91
        return out


def png(stroke: int = 10) -> bytes:
    img = Image.new("L", (60, 60), 255)
    ImageDraw.Draw(img).rectangle((20, 5, 20 + stroke, 55), fill=0)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def ctx(make_ctx: ContextFactory) -> WorkerContext:
    """A SQLite worker context."""
    return make_ctx(max_batch_wait_ms=1)


@pytest.fixture
def model(ctx: WorkerContext) -> tuple[ModelVersion, FakeModel]:
    fake = FakeModel()
    with session_scope(ctx.sessions) as session:
        mv = register_version(
            session,
            name="mnist-cnn",
            format="keras",
            artifact_uri="unused",
            size_bytes=1,
            aliases=("production",),
        )
    ctx.models.get((mv.name, mv.version, mv.variant), lambda: fake)
    return mv, fake


def new_job(ctx: WorkerContext, images: list[bytes], model_ref: str = "mnist-cnn", top: int = 3) -> uuid.UUID:
    with session_scope(ctx.sessions) as session:
        job = jobstore.create_classify_job(
            session=session,
            store=ctx.store,
            model_ref=model_ref,
            top_k=top,
            uploads=[jobstore.Upload(f"{i}.png", b) for i, b in enumerate(images)],
        )
        return job.id


def load(ctx: WorkerContext, job_id: uuid.UUID) -> tuple[Job, list[JobItem]]:
    with session_scope(ctx.sessions) as session:
        job = session.get(Job, job_id)
        items = list(session.scalars(select(JobItem).where(JobItem.job_id == job_id).order_by(JobItem.idx)))
        assert job is not None
        return job, items


def test_a_job_is_classified_and_recorded(ctx: WorkerContext, model: tuple[ModelVersion, FakeModel]) -> None:
    """Every image gets a label, a confidence and top-k, the job succeeds and names the version that ran."""
    mv, _ = model
    job_id = new_job(ctx, [png(), png(20)])
    outcome = run_classify(ctx, job_id)
    job, items = load(ctx, job_id)
    assert outcome.status == "succeeded" == job.status
    assert job.model_version_id == mv.id and job.attempts == 1
    assert (job.completed_items, job.failed_items) == (2, 0)
    assert all(i.status == "succeeded" and i.label is not None and len(i.top_k or []) == 3 for i in items)
    assert all(i.confidence == pytest.approx(0.91, abs=1e-6) and i.batch_size == 2 for i in items)


def test_running_a_job_again_changes_nothing(ctx: WorkerContext, model: tuple[ModelVersion, FakeModel]) -> None:
    """A redelivered job is terminal already: no forward pass, no write, same results."""
    _, fake = model
    job_id = new_job(ctx, [png()])
    run_classify(ctx, job_id)
    before = [(i.label, i.completed_at) for i in load(ctx, job_id)[1]]
    again = run_classify(ctx, job_id)
    assert again.status == "succeeded"
    assert fake.calls == [1]
    assert [(i.label, i.completed_at) for i in load(ctx, job_id)[1]] == before


def test_an_undecodable_stored_input_fails_only_its_item(
    ctx: WorkerContext, model: tuple[ModelVersion, FakeModel]
) -> None:
    """A stored input that no longer decodes becomes an item error; the other images are classified."""
    job_id = new_job(ctx, [png(), png()])
    ctx.store.put(jobstore.input_key(job_id, 1), b"garbage")
    run_classify(ctx, job_id)
    job, items = load(ctx, job_id)
    assert job.status == "succeeded" and (job.completed_items, job.failed_items) == (1, 1)
    assert items[1].status == "failed" and items[1].error_type == "invalid-image"


def test_a_missing_model_fails_the_job(ctx: WorkerContext) -> None:
    """A job naming a model that does not exist fails with a reason instead of crashing the worker."""
    job_id = new_job(ctx, [png()], model_ref="nope")
    assert run_classify(ctx, job_id).status == "failed"
    job, items = load(ctx, job_id)
    assert job.error_type == "model-not-found" and items[0].status == "failed"


def test_a_canceled_job_is_skipped(ctx: WorkerContext, model: tuple[ModelVersion, FakeModel]) -> None:
    """A canceled job is not run and keeps its status."""
    _, fake = model
    job_id = new_job(ctx, [png()])
    with session_scope(ctx.sessions) as session:
        jobstore.cancel_job(session, job_id)
    assert run_classify(ctx, job_id).status == "canceled"
    assert fake.calls == []


def test_an_overdue_job_expires_without_a_forward_pass(
    ctx: WorkerContext, model: tuple[ModelVersion, FakeModel]
) -> None:
    """A job whose deadline passed while it was queued is not claimed; the careful path expires it, nothing runs."""
    _, fake = model
    job_id = new_job(ctx, [png(), png(20)])
    with session_scope(ctx.sessions) as session:
        session.execute(update(Job).where(Job.id == job_id).values(deadline_at=utcnow() - timedelta(seconds=1)))
    assert run_classify(ctx, job_id).status == "expired"
    job, items = load(ctx, job_id)
    assert (job.status, job.attempts, fake.calls) == ("expired", 0, [])
    assert all(i.status == "pending" for i in items)


def test_too_many_attempts_fail_the_job(ctx: WorkerContext, model: tuple[ModelVersion, FakeModel]) -> None:
    """A job already delivered max_attempts times is failed, with every item, instead of run again."""
    job_id = new_job(ctx, [png()])
    with session_scope(ctx.sessions) as session:
        session.get(Job, job_id).attempts = ctx.settings.max_attempts  # type: ignore[union-attr]
    assert run_classify(ctx, job_id).status == "failed"
    job, items = load(ctx, job_id)
    assert job.error_type == "too-many-attempts" and items[0].status == "failed"


def test_top_k_is_ranked_and_labelled() -> None:
    """top_k returns the k most likely labels, best first."""
    probs = np.array([0.1, 0.6, 0.3])
    assert top_k(probs, ["a", "b", "c"], 2) == [
        {"label": "b", "confidence": 0.6},
        {"label": "c", "confidence": 0.3},
    ]


def blank_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (60, 60), 255).save(buf, format="PNG")
    return buf.getvalue()


def test_a_blank_image_gets_a_null_label_and_its_batch_mates_are_classified(
    ctx: WorkerContext, model: tuple[ModelVersion, FakeModel]
) -> None:
    """A blank page succeeds with label, confidence and top_k null and `no-ink`, without reaching the model; the
    other images of its job get labels and the job succeeds."""
    _, fake = model
    job_id = new_job(ctx, [png(), blank_png(), png(20)])
    assert run_classify(ctx, job_id).status == "succeeded"
    job, items = load(ctx, job_id)
    assert (job.status, job.completed_items, job.failed_items) == ("succeeded", 3, 0)
    blank = items[1]
    assert (blank.status, blank.label, blank.confidence, blank.top_k) == ("succeeded", None, None, None)
    assert blank.warnings == ["no-ink"] and blank.error_type is None and blank.batch_size is None
    assert all(i.label is not None and i.warnings == [] and i.batch_size == 2 for i in (items[0], items[2]))
    assert fake.calls == [2]  # only the readable images were in the forward pass


def test_a_job_of_blank_images_succeeds_without_a_forward_pass(
    ctx: WorkerContext, model: tuple[ModelVersion, FakeModel]
) -> None:
    """A job whose every image has nothing to read succeeds (not `all-items-failed`) and never calls the model."""
    _, fake = model
    job_id = new_job(ctx, [blank_png(), blank_png()])
    assert run_classify(ctx, job_id).status == "succeeded"
    job, items = load(ctx, job_id)
    assert (job.status, job.completed_items, job.failed_items, job.error_type) == ("succeeded", 2, 0, None)
    assert [(i.label, i.warnings) for i in items] == [(None, ["no-ink"])] * 2
    assert fake.calls == []


@pytest.mark.parametrize(("threshold", "expected"), [(0.95, ["low-confidence"]), (0.91, []), (0.6, [])])
def test_a_prediction_under_the_threshold_is_low_confidence(
    make_ctx: ContextFactory, threshold: float, expected: list[str]
) -> None:
    """A top confidence (here 0.91) under INFERQ_LOW_CONFIDENCE_THRESHOLD adds `low-confidence`; at or above it,
    the label comes with no warning."""
    ctx = make_ctx(max_batch_wait_ms=1, low_confidence_threshold=threshold)
    with session_scope(ctx.sessions) as session:
        mv = register_version(session, name="mnist-cnn", format="keras", artifact_uri="unused", size_bytes=1)
    ctx.models.get((mv.name, mv.version, mv.variant), FakeModel)
    job_id = new_job(ctx, [png()])
    assert run_classify(ctx, job_id).status == "succeeded"
    _, items = load(ctx, job_id)
    assert items[0].label is not None and items[0].confidence == pytest.approx(0.91, abs=1e-6)
    assert items[0].warnings == expected
