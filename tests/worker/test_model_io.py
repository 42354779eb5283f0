"""Bring your own model (.keras, .tflite, zipped SavedModel; Lambda refused) and the TF Serving export."""

from __future__ import annotations

import io
import uuid
import zipfile
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from shared.db import session_scope
from shared.model_jobs import Operation, create_model_job
from shared.models import Job, ModelVersion
from tests.worker.conftest import ContextFactory
from worker.context import WorkerContext
from worker.training_tasks import run_model_job

pytestmark = pytest.mark.slow
LABELS = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """An untrained CNN as .keras, .tflite and a zipped SavedModel, plus a .keras holding a Lambda layer."""
    import keras
    import tensorflow as tf

    from worker.cnn import build_cnn

    keras.utils.set_random_seed(0)
    out = tmp_path_factory.mktemp("byom")
    model = build_cnn()
    model.save(out / "ok.keras")
    model.export(str(out / "saved"), format="tf_saved_model", verbose=False)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for p in (out / "saved").rglob("*"):
            if p.is_file():
                zf.write(p, f"saved/{p.relative_to(out / 'saved')}")
    lam = keras.Sequential(
        [
            keras.Input((28, 28, 1)),
            keras.layers.Lambda(lambda x: x * 2.0),
            keras.layers.Flatten(),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    lam.save(out / "lambda.keras")
    return {
        ".keras": (out / "ok.keras").read_bytes(),
        ".tflite": tf.lite.TFLiteConverter.from_keras_model(model).convert(),
        ".zip": buf.getvalue(),
        "lambda": (out / "lambda.keras").read_bytes(),
    }


@pytest.fixture
def ctx(make_ctx: ContextFactory) -> WorkerContext:
    """A SQLite worker context."""
    return make_ctx(benchmark_repeats=2)


def import_job(ctx: WorkerContext, data: bytes, suffix: str, labels: list[str] = LABELS) -> Job:
    """Store an upload as the API does, run its import job, and return the finished job."""
    with session_scope(ctx.sessions) as session:
        params: dict[str, Any] = {"filename": f"model{suffix}", "suffix": suffix, "labels": labels}
        job = create_model_job(session=session, operation=Operation.IMPORT, model_ref="byom", params=params)
        key = f"model-uploads/{job.id}/model{suffix}"
        ctx.store.put(key, data)
        job.params = {**job.params, "blob_key": key}
        job_id: uuid.UUID = job.id
    run_model_job(ctx, job_id)
    with ctx.sessions() as session:
        row = session.get(Job, job_id)
        assert row is not None
        session.expunge(row)
        return row


def registered(ctx: WorkerContext) -> list[ModelVersion]:
    """Every registered version."""
    with ctx.sessions() as session:
        return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)))


@pytest.mark.parametrize(("suffix", "fmt"), [(".keras", "keras"), (".tflite", "tflite"), (".zip", "tflite")])
def test_uploads_are_smoke_tested_and_registered(
    ctx: WorkerContext, files: dict[str, bytes], suffix: str, fmt: str
) -> None:
    """A .keras, a .tflite and a zipped SavedModel (converted to .tflite) each become a servable version."""
    job = import_job(ctx, files[suffix], suffix)
    assert job.status == "succeeded", job.error
    [mv] = registered(ctx)
    assert (mv.ref, mv.format, mv.labels) == ("byom:1", fmt, LABELS)
    assert mv.metrics["smoke_test"] == "passed" and mv.metrics["benchmark"]["throughput_batch64"] > 0
    assert mv.params["source"] == "upload" and len(mv.params["sha256"]) == 64
    assert ctx.model(mv).predict(np.zeros((2, 28, 28), dtype=np.float32)).shape == (2, 10)
    assert job.result is not None and job.result["model_version"] == "byom:1"


def test_a_lambda_layer_is_refused_clearly(ctx: WorkerContext, files: dict[str, bytes]) -> None:
    """A .keras file with a Lambda layer fails the job with unsafe-model, registers nothing and keeps no file."""
    job = import_job(ctx, files["lambda"], ".keras")
    assert (job.status, job.error_type) == ("failed", "unsafe-model")
    assert job.error is not None and "Lambda" in job.error
    assert registered(ctx) == [] and not any((ctx.settings.data_dir / "models").rglob("*.keras"))


def test_label_count_must_match_the_outputs(ctx: WorkerContext, files: dict[str, bytes]) -> None:
    """Three labels for a ten-class model fail the job with invalid-model."""
    job = import_job(ctx, files[".keras"], ".keras", labels=["a", "b", "c"])
    assert (job.status, job.error_type) == ("failed", "invalid-model") and registered(ctx) == []


def test_a_zip_escaping_its_folder_is_refused(ctx: WorkerContext) -> None:
    """An archive entry with '..' fails the job with invalid-model before anything is extracted."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../evil/saved_model.pb", b"x")
    job = import_job(ctx, buf.getvalue(), ".zip")
    assert (job.status, job.error_type) == ("failed", "invalid-model") and "outside" in (job.error or "")


def test_export_writes_tf_serving_layout(ctx: WorkerContext, files: dict[str, bytes]) -> None:
    """Exporting byom:1 writes exports/tf-serving/byom/1/saved_model.pb with a serving_default signature."""
    import tensorflow as tf

    import_job(ctx, files[".keras"], ".keras")
    with session_scope(ctx.sessions) as session:
        job_id = create_model_job(
            session=session, operation=Operation.EXPORT, model_ref="byom:1", params={"format": "tf-serving"}
        ).id
    assert run_model_job(ctx, job_id)["status"] == "succeeded"
    target = ctx.settings.data_dir / "exports" / "tf-serving" / "byom" / "1"
    assert (target / "saved_model.pb").is_file()
    assert "serving_default" in tf.saved_model.load(str(target)).signatures
