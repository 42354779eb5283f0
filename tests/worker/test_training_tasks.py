"""The training queue's jobs as plain functions on SQLite: train (live history, cancel), benchmark, failures."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from shared.config.settings import Settings
from shared.config.status import JobStatus
from shared.db.engine import session_scope, upgrade_database
from shared.db.models import Job, ModelVersion
from shared.jobs import lifecycle as jobstore
from shared.registry.model_jobs import Operation, create_model_job, update_result
from tests.training_factories import class_folder_zip, ingest_bytes
from worker import versions as version_jobs
from worker.context import WorkerContext
from worker.datasets import Digits, load_mnist
from worker.tasks import training as training_tasks
from worker.tasks.training import CancelCheck, run_model_job

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    """300 training and 200 test digits from the offline sample."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("no-keras")))
        full = load_mnist(seed=0, allow_download=False)
    return Digits(full.x_train[:300], full.y_train[:300], full.x_test[:200], full.y_test[:200], source=full.source)


@pytest.fixture
def ctx(tmp_path: Path, small: Digits, monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerContext]:
    """A worker context on SQLite whose built-in dataset is the small sample."""
    settings = Settings(
        data_dir=tmp_path, redis_url="redis://127.0.0.1:1/0", train_cancel_check_batches=1, benchmark_repeats=3
    )
    upgrade_database(settings)
    monkeypatch.setattr(training_tasks, "load_mnist", lambda **_: small)
    context = WorkerContext(settings)
    yield context
    context.close()


def queue_job(ctx: WorkerContext, operation: Operation, ref: str, **params: Any) -> uuid.UUID:
    """A queued training-queue job, committed."""
    with session_scope(ctx.sessions) as session:
        return create_model_job(session=session, operation=operation, model_ref=ref, params=params).id


def job_row(ctx: WorkerContext, job_id: uuid.UUID) -> Job:
    """The job as stored now."""
    with ctx.sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None
        session.expunge(job)
        return job


def versions(ctx: WorkerContext) -> list[ModelVersion]:
    """Every registered version."""
    with ctx.sessions() as session:
        return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id)))


TRAIN = {"epochs": 2, "batch_size": 32, "optimizer": "sgd", "learning_rate": 0.05, "class_weight": "balanced"}


def test_training_registers_a_version_with_history_metrics_and_params(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A train job writes each epoch live, registers the new version (artifact, size, accuracies, exact
    hyperparameters, dataset, benchmark), links the job to it, and leaves TensorBoard event files."""
    live: list[int] = []
    real_update = training_tasks.update_result

    def spy(session: Any, job_id: uuid.UUID, result: dict[str, Any]) -> bool:
        live.append(len(result["history"]))
        return real_update(session, job_id, result)

    monkeypatch.setattr(training_tasks, "update_result", spy)
    job_id = queue_job(ctx, Operation.TRAIN, "digits", **TRAIN)
    assert run_model_job(ctx, job_id) == {"job_id": str(job_id), "status": "succeeded"}
    assert live == [1, 2]
    job = job_row(ctx, job_id)
    [mv] = versions(ctx)
    assert job.status == "succeeded" and job.model_version_id == mv.id and job.result is not None
    assert job.result["model_version"] == "digits:1" and len(job.result["history"]) == 2
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(job.result["history"][0])
    assert (mv.format, mv.variant, mv.aliases) == ("keras", "float32", [])
    assert (ctx.settings.data_dir / mv.artifact_uri).stat().st_size == mv.size_bytes > 0
    assert 0 <= mv.metrics["test_accuracy"] <= 1 and len(mv.metrics["per_class_accuracy"]) == 10
    assert mv.metrics["benchmark"]["latency_ms_batch1"] > 0 and mv.metrics["benchmark"]["throughput_batch64"] > 0
    assert (mv.params["optimizer"], mv.params["class_weight"], mv.params["learning_rate"]) == ("sgd", "balanced", 0.05)
    assert mv.params["dataset"]["train_size"] == 300 and mv.params["job_id"] == str(job_id)
    events = list((ctx.settings.data_dir / "tensorboard" / str(job_id)).rglob("events.out.tfevents.*"))
    assert {p.parent.name for p in events} == {"train", "validation"}


def test_canceling_stops_training_at_a_batch_boundary_and_registers_nothing(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Canceling a running train job stops it at the next cancel check; no version, no artifact, status canceled."""
    job_id = queue_job(ctx, Operation.TRAIN, "digits", **TRAIN)
    real_call = CancelCheck.__call__

    def cancel_at_third_batch(self: CancelCheck) -> bool:
        if self.batches == 2:
            with session_scope(ctx.sessions) as session:
                jobstore.cancel_job(session, job_id)
        return real_call(self)

    monkeypatch.setattr(CancelCheck, "__call__", cancel_at_third_batch)
    assert run_model_job(ctx, job_id)["status"] == "canceled"
    job = job_row(ctx, job_id)
    assert job.status == "canceled" and versions(ctx) == []
    assert not (ctx.settings.data_dir / "models").exists()
    assert job.result == {"operation": "train"}  # canceled within the first epoch: no epoch was recorded


def test_live_result_updates_stop_once_the_job_is_not_running(ctx: WorkerContext) -> None:
    """update_result writes only while the job is running (a canceled job's result is final)."""
    job_id = queue_job(ctx, Operation.TRAIN, "digits")
    with session_scope(ctx.sessions) as session:
        assert not update_result(session, job_id, {"history": []})  # queued, not running
        jobstore.start_attempt(session, job_id, None)
        assert update_result(session, job_id, {"history": [{"epoch": 1.0}]})
        jobstore.cancel_job(session, job_id)
        assert not update_result(session, job_id, {"history": []})
    assert job_row(ctx, job_id).result == {"history": [{"epoch": 1.0}]}


def test_a_failing_job_is_failed_with_the_reason(ctx: WorkerContext) -> None:
    """An optimize job whose source version does not exist fails with model-not-found; a terminal job is skipped."""
    job_id = queue_job(ctx, Operation.OPTIMIZE, "digits:9", method="int8")
    assert run_model_job(ctx, job_id)["status"] == "failed"
    job = job_row(ctx, job_id)
    assert (job.status, job.error_type) == ("failed", "model-not-found")
    assert run_model_job(ctx, job_id)["status"] == "not-runnable"
    assert JobStatus(job.status).is_terminal()


def test_registration_is_retried_when_a_version_number_is_taken(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If another job registers the same version number at the same moment, registration retries and succeeds."""
    from sqlalchemy.exc import IntegrityError

    job_id = queue_job(ctx, Operation.TRAIN, "digits")
    with session_scope(ctx.sessions) as session:
        jobstore.start_attempt(session, job_id, None)
    real, calls = version_jobs.register_version, []

    def flaky(session: Any, **kw: Any) -> ModelVersion:
        calls.append(1)
        if len(calls) == 1:
            raise IntegrityError("INSERT", {}, Exception("duplicate key (name, version)"))
        return real(session, **kw)

    monkeypatch.setattr(version_jobs, "register_version", flaky)
    status, mv = version_jobs.register_and_succeed(
        ctx, job_row(ctx, job_id), {}, name="digits", format="keras", artifact_uri="a", size_bytes=1
    )
    assert (status, len(calls)) == ("succeeded", 2) and mv is not None and mv.ref == "digits:1"


def uploaded(ctx: WorkerContext, data: bytes, tenant_id: str = "default") -> str:
    """Store a class-folder zip as an uploaded dataset of `tenant_id`; its id."""
    with session_scope(ctx.sessions) as session:
        return str(ingest_bytes(session, ctx.settings, data, "shapes.zip", tenant_id=tenant_id).id)


SHAPES = {0: "circle", 1: "stroke", 7: "seven"}


def test_training_on_an_uploaded_dataset_names_the_version_after_its_classes(ctx: WorkerContext) -> None:
    """A train job on an uploaded class-folder zip registers a 3-output version labelled with the folder names,
    with its seeded test split, the dataset id and the exact hyperparameters; optimizing it later evaluates the
    dynamic-range variant on that same test split under the same labels."""
    dataset = uploaded(ctx, class_folder_zip(SHAPES, {0: 60, 1: 25, 7: 15}))
    params = {"dataset": dataset, "epochs": 1, "imbalance": "oversample", "augment": False, "seed": 4}
    job_id = queue_job(ctx, Operation.TRAIN, "shapes", **params)
    assert run_model_job(ctx, job_id)["status"] == "succeeded"
    [mv] = versions(ctx)
    assert mv.labels == ["circle", "seven", "stroke"] and job_row(ctx, job_id).result["labels"] == mv.labels
    assert set(mv.metrics["per_class_accuracy"]) == set(mv.labels)
    split = mv.metrics["test_split"]
    assert (split["dataset_id"], split["seed"], split["test_size"]) == (dataset, 4, 20)
    assert mv.params["dataset_id"] == dataset and mv.params["dataset"]["dataset_name"] == "shapes.zip"
    assert (mv.params["imbalance"], mv.params["seed"], mv.params["epochs"]) == ("oversample", 4, 1)
    assert mv.params["epoch_class_counts"] == dict.fromkeys(mv.labels, max(mv.params["train_class_counts"].values()))
    opt_id = queue_job(ctx, Operation.OPTIMIZE, "shapes:1", method="dynamic-range")
    assert run_model_job(ctx, opt_id)["status"] == "succeeded"
    variant = versions(ctx)[1]
    assert variant.labels == mv.labels and variant.metrics["same_test_split_as_parent"] is True
    assert variant.metrics["test_split"] == split and set(variant.metrics["per_class_accuracy"]) == set(mv.labels)


def test_another_tenants_dataset_fails_the_job_as_not_found(ctx: WorkerContext) -> None:
    """A train job may only read its own tenant's dataset: another tenant's fails dataset-not-found, no version."""
    dataset = uploaded(ctx, class_folder_zip(SHAPES, 10), tenant_id="someone-else")
    job_id = queue_job(ctx, Operation.TRAIN, "shapes", dataset=dataset, epochs=1)
    assert run_model_job(ctx, job_id)["status"] == "failed"
    assert job_row(ctx, job_id).error_type == "dataset-not-found" and versions(ctx) == []


def test_evaluation_stores_the_real_world_table_in_the_version(ctx: WorkerContext) -> None:
    """An evaluate job reads every corruption's pictures through preprocessing and the served model, and stores
    accuracy per corruption, overall and the no-digit count in the version's metrics and the job's result."""
    train = queue_job(ctx, Operation.TRAIN, "digits", **TRAIN)
    assert run_model_job(ctx, train)["status"] == "succeeded"
    job_id = queue_job(
        ctx, Operation.EVALUATE, "digits:1", corruptions=["clean", "edge-crop", "photo"], per_corruption=20
    )
    assert run_model_job(ctx, job_id) == {"job_id": str(job_id), "status": "succeeded"}
    [mv] = versions(ctx)
    table = mv.metrics["realworld"]
    assert list(table["corruptions"]) == ["clean", "edge-crop", "photo"]
    assert all(row["images"] == 20 and 0 <= row["accuracy"] <= 1 for row in table["corruptions"].values())
    assert table["overall"] == pytest.approx(
        (table["corruptions"]["edge-crop"]["accuracy"] + table["corruptions"]["photo"]["accuracy"]) / 2
    )
    assert table["non_digits_labelled"] == 0 and sum(r["images"] for r in table["non_digits"].values()) > 0
    assert table["test_split"]["test_size"] == 200
    result = job_row(ctx, job_id).result
    assert result is not None and result["overall"] == table["overall"] and result["model_version"] == "digits:1"


def test_realistic_augmentation_adds_rendered_copies(ctx: WorkerContext) -> None:
    """augment='realistic' trains on each image plus copies rendered as users send pictures (recorded in params)."""
    job_id = queue_job(ctx, Operation.TRAIN, "digits", **{**TRAIN, "epochs": 1, "augment": "realistic"})
    assert run_model_job(ctx, job_id)["status"] == "succeeded"
    [mv] = versions(ctx)
    assert mv.params["augmentation"]["mode"] == "realistic"
    assert 0.9 * 2 * mv.params["train_images"] <= mv.params["realistic_copies"] <= 2 * mv.params["train_images"]
    assert mv.params["epoch_images"] == mv.params["train_images"] + mv.params["realistic_copies"]
