"""Bring your own model (.keras, .tflite, zipped SavedModel; Lambda refused) and the TF Serving / ONNX exports."""

from __future__ import annotations

import io
import uuid
import zipfile
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

from shared.db.engine import session_scope
from shared.db.models import Job, ModelVersion
from shared.registry.model_jobs import Operation, create_model_job
from tests.worker.conftest import ContextFactory
from worker.context import WorkerContext
from worker.tasks.training import run_model_job

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


def _export_byom(ctx: WorkerContext, files: dict[str, bytes], fmt: str) -> uuid.UUID:
    """Upload the small Keras model as byom:1, export it in `fmt` and check the job succeeded; returns its id."""
    import_job(ctx, files[".keras"], ".keras")
    with session_scope(ctx.sessions) as session:
        job_id = create_model_job(
            session=session, operation=Operation.EXPORT, model_ref="byom:1", params={"format": fmt}
        ).id
    assert run_model_job(ctx, job_id)["status"] == "succeeded"
    return job_id


def test_export_writes_tf_serving_layout(ctx: WorkerContext, files: dict[str, bytes]) -> None:
    """Exporting byom:1 writes exports/tf-serving/byom/1/saved_model.pb with a serving_default signature."""
    import tensorflow as tf

    _export_byom(ctx, files, "tf-serving")
    target = ctx.settings.data_dir / "exports" / "tf-serving" / "byom" / "1"
    assert (target / "saved_model.pb").is_file()
    assert "serving_default" in tf.saved_model.load(str(target)).signatures


def test_export_writes_a_verified_onnx_file(ctx: WorkerContext, files: dict[str, bytes]) -> None:
    """Exporting byom:1 as onnx writes a checked model.onnx whose reference-evaluator argmax matches Keras."""
    import keras
    import onnx
    from onnx.reference import ReferenceEvaluator

    job_id = _export_byom(ctx, files, "onnx")
    target = ctx.settings.data_dir / "exports" / "onnx" / "byom" / "1" / "model.onnx"
    assert target.is_file() and not list(target.parent.glob(".*.tmp"))
    with session_scope(ctx.sessions) as session:
        result = session.get(Job, job_id).result  # type: ignore[union-attr]
    assert result["format"] == "onnx" and result["path"] == "exports/onnx/byom/1/model.onnx"
    assert 0 <= result["max_abs_diff"] < 1e-5 and result["size_bytes"] == target.stat().st_size
    proto = onnx.load(str(target))
    onnx.checker.check_model(proto)
    x = np.random.default_rng(7).random((3, 28, 28, 1), dtype=np.float32)
    got = ReferenceEvaluator(proto).run(None, {proto.graph.input[0].name: x})[0]
    with ctx.sessions() as session:
        mv = session.scalars(select(ModelVersion).where(ModelVersion.name == "byom")).one()
        keras_model = keras.models.load_model(ctx.artifact_path(mv), compile=False, safe_mode=True)
    assert np.array_equal(np.argmax(got, axis=1), np.argmax(keras_model.predict(x, verbose=0), axis=1))


def test_an_onnx_export_that_differs_from_keras_fails(
    ctx: WorkerContext, files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ONNX output further from Keras than the tolerance fails the job with export-failed and keeps no file."""
    import worker.model_io

    monkeypatch.setattr(worker.model_io, "ONNX_MAX_ABS_DIFF", -1.0)
    import_job(ctx, files[".keras"], ".keras")
    with session_scope(ctx.sessions) as session:
        job_id = create_model_job(
            session=session, operation=Operation.EXPORT, model_ref="byom:1", params={"format": "onnx"}
        ).id
    assert run_model_job(ctx, job_id)["status"] == "failed"
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.error_type == "export-failed" and "differ from Keras" in (job.error or "")
    assert not (ctx.settings.data_dir / "exports" / "onnx" / "byom" / "1" / "model.onnx").exists()
