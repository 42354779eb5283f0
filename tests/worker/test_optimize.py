"""Compression and quantization: TFLite conversion, evaluation beside the parent, registration, serving, benchmark."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from sqlalchemy import select

from shared.config.settings import Settings
from shared.db.engine import session_scope, upgrade_database
from shared.db.models import Job, JobItem, ModelVersion
from shared.jobs import lifecycle as jobstore
from shared.registry.model_jobs import Operation, create_model_job
from shared.registry.versions import register_version
from tests.factories import png_bytes
from worker.context import WorkerContext
from worker.datasets import Digits, load_mnist
from worker.inference import run_classify
from worker.optimize import benchmark, convert, evaluate
from worker.runtime import load_model
from worker.tasks import training as training_tasks
from worker.tasks.training import run_model_job
from worker.training import save_keras, to_model_input, train_cnn

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    """400 training and 200 test digits from the offline sample."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("no-keras")))
        full = load_mnist(seed=0, allow_download=False)
    return Digits(full.x_train[:400], full.y_train[:400], full.x_test[:200], full.y_test[:200], source=full.source)


@pytest.fixture(scope="module")
def parent_file(small: Digits, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CNN trained for 2 epochs on the small set, saved as .keras."""
    result = train_cnn(small, epochs=2, augment=False)
    path = tmp_path_factory.mktemp("parent") / "model.keras"
    save_keras(result.model, path)
    return path


@pytest.fixture
def ctx(tmp_path: Path, small: Digits, parent_file: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerContext]:
    """A SQLite worker context with the parent registered as digits:1 (the dataset is the small sample)."""
    settings = Settings(data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0", benchmark_repeats=3, max_batch_wait_ms=1)
    upgrade_database(settings)
    monkeypatch.setattr(training_tasks, "load_mnist", lambda **_: small)
    context = WorkerContext(settings)
    with session_scope(context.sessions) as session:
        register_version(
            session,
            name="digits",
            format="keras",
            artifact_uri=str(parent_file),
            size_bytes=parent_file.stat().st_size,
            aliases=("production",),
            params={"seed": 0},
        )
    yield context
    context.close()


def optimize(ctx: WorkerContext, method: str) -> tuple[Job, ModelVersion]:
    """Run an optimize job of digits:1 and return the job and the version it registered."""
    with session_scope(ctx.sessions) as session:
        job_id = create_model_job(
            session=session, operation=Operation.OPTIMIZE, model_ref="digits:1", params={"method": method}
        ).id
    assert run_model_job(ctx, job_id)["status"] == "succeeded"
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.model_version_id is not None
        mv = session.get(ModelVersion, job.model_version_id)
        assert mv is not None
        session.expunge_all()
        return job, mv


def test_int8_is_registered_as_a_smaller_servable_child(ctx: WorkerContext) -> None:
    """int8 becomes digits:2 (tflite, variant int8, parent digits:1): >= 3.5x smaller, within 1 point of the
    parent's accuracy on the same test split, benchmarked, and serving classify jobs through LiteRT."""
    job, mv = optimize(ctx, "int8")
    assert (mv.ref, mv.format, mv.variant, mv.aliases) == ("digits:2", "tflite", "int8", [])
    with ctx.sessions() as session:
        parent = session.scalar(select(ModelVersion).filter_by(name="digits", version=1))
        assert parent is not None and mv.parent_id == parent.id
    m = mv.metrics
    print(
        f"\nint8: {mv.size_bytes} B: {m['size_ratio_vs_parent']}x smaller than the .keras parent, "
        f"{m['size_ratio_vs_float32_tflite']}x than float32 tflite; "
        f"acc {m['test_accuracy']:.4f} vs parent {m['parent_test_accuracy']:.4f} "
        f"(drop {m['accuracy_drop_points']} points); bench {m['benchmark']}"
    )
    assert m["size_ratio_vs_parent"] >= 3.5 and m["size_ratio_vs_float32_tflite"] >= 3.5
    assert m["accuracy_drop_points"] <= 1.0 and m["test_images"] == 200
    assert m["benchmark"]["throughput_batch64"] > 0
    assert mv.params["calibration_images"] == 400 and mv.params["source"] == "digits:1"
    assert job.result is not None and job.result["model_version"] == "digits:2" and job.result["method"] == "int8"
    with session_scope(ctx.sessions) as session:
        uploads = [jobstore.Upload(f"{i}.png", png_bytes()) for i in range(3)]
        cjob = jobstore.create_classify_job(
            session=session, store=ctx.store, uploads=uploads, model_ref="digits:2", top_k=3
        )
    assert run_classify(ctx, cjob.id).status == "succeeded"
    with ctx.sessions() as session:
        items = list(session.scalars(select(JobItem).where(JobItem.job_id == cjob.id)))
    assert {i.model_version_id for i in items} == {mv.id} and all(i.label for i in items)


@pytest.mark.parametrize("method", ["dynamic-range", "float16"])
def test_weight_only_methods_keep_float_io(parent_file: Path, small: Digits, tmp_path: Path, method: str) -> None:
    """dynamic-range and float16 shrink the file, keep float32 input/output and match the parent's predictions."""
    import keras

    model = keras.models.load_model(parent_file, compile=False)
    path = tmp_path / f"{method}.tflite"
    path.write_bytes(convert(model, method))
    served = load_model(path, "tflite")
    x = to_model_input(small.x_test[:64])
    agree = np.mean(np.argmax(served.predict(x), axis=1) == np.argmax(model.predict_on_batch(x), axis=1))
    assert agree >= 0.98 and path.stat().st_size < parent_file.stat().st_size / 2
    assert evaluate(served, small.x_test, small.y_test)["test_images"] == 200


def test_convert_refuses_unknown_methods_and_uncalibrated_int8(parent_file: Path) -> None:
    """An unknown method or int8 without calibration images is a ValueError."""
    import keras

    model = keras.models.load_model(parent_file, compile=False)
    with pytest.raises(ValueError, match="unknown method"):
        convert(model, "int4")
    with pytest.raises(ValueError, match="calibration"):
        convert(model, "int8")


def test_benchmark_job_stores_metrics_on_the_version(ctx: WorkerContext, parent_file: Path) -> None:
    """A benchmark job adds latency at batch 1 and throughput at batch 64 to the version's metrics."""
    with session_scope(ctx.sessions) as session:
        job_id: uuid.UUID = create_model_job(
            session=session, operation=Operation.BENCHMARK, model_ref="digits@production", params={}
        ).id
    assert run_model_job(ctx, job_id)["status"] == "succeeded"
    with ctx.sessions() as session:
        mv = session.scalar(select(ModelVersion).filter_by(name="digits", version=1))
        assert mv is not None
        bench = mv.metrics["benchmark"]
    assert bench["latency_ms_batch1"] > 0 and bench["throughput_batch64"] > 0 and bench["cpus"]
    assert set(benchmark(load_model(parent_file, "keras"), repeats=2)) >= {"latency_ms_batch1", "throughput_batch64"}
