"""Bring your own model (import an uploaded .keras / .tflite / zipped SavedModel) and export (TF Serving, ONNX).

Imports are loaded in Keras safe mode (a Lambda layer is refused with `unsafe-model`), must take the 28x28x1
inputs inferq's preprocessing produces and give one output per label, are smoke-tested on one input, benchmarked,
then registered.  A zipped SavedModel is converted to a float32 .tflite (served by LiteRT).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import zipfile
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from shared.config.errors import ExportFailed, InvalidModel, ModelNotReady, UnsafeModel
from shared.config.status import JobStatus
from shared.db.engine import session_scope
from shared.db.models import Job, ModelVersion
from shared.jobs import lifecycle as jobstore
from shared.registry.model_jobs import ExportCreate
from shared.registry.versions import MNIST_INPUT_SPEC
from worker.context import WorkerContext
from worker.runtime import LoadedModel, load_model
from worker.versions import artifact_location, benchmark_file, register_and_succeed, source_version

MODEL_INPUT_VALUES = 28 * 28  # what shared.inputs.imaging.preprocess produces per image
UNSAFE_HINTS = ("Lambda", "safe_mode", "unsafe")
ONNX_OPSET = 17
ONNX_MAX_ABS_DIFF = 1e-4  # an ONNX export whose outputs differ more from Keras fails the job
ONNX_CHECK_INPUTS = 4  # deterministic inputs the reference evaluator runs beside Keras


def _extract_saved_model(archive: Path, into: Path, max_bytes: int) -> Path:
    """Unzip a SavedModel safely (no absolute or '..' paths, bounded size); return the folder with saved_model.pb."""
    with zipfile.ZipFile(archive) as zf:
        total = 0
        for info in zf.infolist():
            parts = PurePosixPath(info.filename).parts
            if info.filename.startswith("/") or ".." in parts:
                raise InvalidModel(f"the archive entry {info.filename!r} points outside the archive")
            total += info.file_size
            if total > max_bytes:
                raise InvalidModel(f"the archive expands past {max_bytes} bytes (INFERQ_MODEL_UPLOAD_MAX_BYTES x 4)")
        zf.extractall(into)
    found = sorted(into.rglob("saved_model.pb"), key=lambda p: len(p.parts))
    if not found:
        raise InvalidModel("the .zip holds no saved_model.pb; zip a TensorFlow SavedModel directory")
    return found[0].parent


def _saved_model_to_tflite(folder: Path) -> bytes:
    import tensorflow as tf

    try:
        data: bytes = tf.lite.TFLiteConverter.from_saved_model(str(folder)).convert()
    except Exception as exc:
        raise InvalidModel(f"the SavedModel cannot be converted: {type(exc).__name__}: {exc}"[:500]) from exc
    return data


def _load_checked(path: Path, fmt: str, labels: list[str]) -> LoadedModel:
    """Load in safe mode (already probed on zeros) and check the input size and the number of classes."""
    try:
        model = load_model(path, fmt)
    except ModelNotReady as exc:
        if fmt == "keras" and any(h in exc.detail for h in UNSAFE_HINTS):
            raise UnsafeModel(
                "the Keras file contains a Lambda layer (arbitrary Python code), which inferq refuses to load; "
                "rebuild the model from standard layers or register-able custom layers"
            ) from exc
        raise InvalidModel(exc.detail) from exc
    shape = tuple(getattr(model, "input_shape", ()))
    if int(np.prod(shape)) != MODEL_INPUT_VALUES:
        raise InvalidModel(f"the model takes {shape} inputs; inferq feeds 28x28x1 images (784 values)")
    if model.num_classes != len(labels):
        raise InvalidModel(f"the model has {model.num_classes} outputs but {len(labels)} labels were given")
    probe = model.predict(np.full((1, 28, 28), 0.5, dtype=np.float32))
    if probe.shape != (1, len(labels)) or not np.all(np.isfinite(probe)):
        raise InvalidModel("the smoke test on one input did not give finite outputs of the right shape")
    return model


def run_import(ctx: WorkerContext, job: Job) -> str:
    """Smoke-test an uploaded model and register it (nothing is registered if any check fails)."""
    params: dict[str, Any] = job.params
    data = ctx.store.get(params["blob_key"])
    suffix, labels = params["suffix"], list(params["labels"])
    fmt = "keras" if suffix == ".keras" else "tflite"
    relative, path = artifact_location(ctx, job.model_ref, job.id, "model.keras" if fmt == "keras" else "model.tflite")
    try:
        if suffix == ".zip":
            with tempfile.TemporaryDirectory() as tmp:
                archive = Path(tmp) / "upload.zip"
                archive.write_bytes(data)
                limit = 4 * ctx.settings.model_upload_max_bytes
                path.write_bytes(_saved_model_to_tflite(_extract_saved_model(archive, Path(tmp) / "x", limit)))
        else:
            path.write_bytes(data)
        _load_checked(path, fmt, labels)
    except BaseException:
        shutil.rmtree(path.parent, ignore_errors=True)
        raise
    result = {"operation": "import", "filename": params["filename"], "format": fmt}
    status, _ = register_and_succeed(
        ctx,
        job,
        result,
        name=job.model_ref,
        format=fmt,
        artifact_uri=relative,
        size_bytes=path.stat().st_size,
        labels=labels,
        input_spec=params.get("input_spec") or MNIST_INPUT_SPEC,
        metrics={"benchmark": benchmark_file(ctx, path, fmt), "smoke_test": "passed"},
        params={
            "source": "upload",
            "filename": params["filename"],
            "sha256": hashlib.sha256(data).hexdigest(),
            "converted_from": "savedmodel" if suffix == ".zip" else None,
            "job_id": str(job.id),
        },
    )
    ctx.store.delete(params["blob_key"])
    return status


def _write_saved_model(ctx: WorkerContext, job: Job, mv: ModelVersion) -> dict[str, Any]:
    """Write the SavedModel at exports/tf-serving/<name>/<version>/ unless it is there already."""
    import keras

    relative = f"exports/tf-serving/{mv.name}/{mv.version}"
    target = ctx.settings.data_dir / relative
    if not (target / "saved_model.pb").is_file():
        model = keras.models.load_model(ctx.artifact_path(mv), compile=False, safe_mode=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".{mv.version}.{job.id}.tmp"
        model.export(str(staging), format="tf_saved_model", verbose=False)
        os.replace(staging, target)
    return {"path": relative}


def _write_onnx(ctx: WorkerContext, job: Job, mv: ModelVersion) -> dict[str, Any]:
    """Convert to exports/onnx/<name>/<version>/model.onnx via tf2onnx, then check it and compare it with Keras."""
    import keras
    import onnx
    import tensorflow as tf
    import tf2onnx
    from onnx.reference import ReferenceEvaluator

    model = keras.models.load_model(ctx.artifact_path(mv), compile=False, safe_mode=True)
    shape = tuple(model.input_shape)
    if any(dim is None for dim in shape[1:]):
        raise ExportFailed(f"the model's input shape {shape} has unknown dimensions besides the batch")
    relative = f"exports/onnx/{mv.name}/{mv.version}/model.onnx"
    target = ctx.settings.data_dir / relative
    if not target.is_file():
        spec = (tf.TensorSpec((None, *shape[1:]), tf.float32, name="input"),)
        fn = tf.function(lambda x: model(x, training=False), input_signature=spec)
        proto, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=ONNX_OPSET)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = target.parent / f".model.onnx.{job.id}.tmp"
        staging.write_bytes(proto.SerializeToString())
        os.replace(staging, target)
    try:
        written = onnx.load(str(target))
        onnx.checker.check_model(written)
        x = np.random.default_rng(0).random((ONNX_CHECK_INPUTS, *shape[1:]), dtype=np.float32)
        outputs: Any = ReferenceEvaluator(written).run(None, {written.graph.input[0].name: x})
        diff = float(np.max(np.abs(np.asarray(outputs[0]) - np.asarray(model(x, training=False)))))
        if not diff <= ONNX_MAX_ABS_DIFF:  # also catches NaN
            raise ExportFailed(
                f"the ONNX outputs differ from Keras by up to {diff:.3g} (more than {ONNX_MAX_ABS_DIFF:g}) on "
                f"{ONNX_CHECK_INPUTS} inputs; the file was removed"
            )
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return {"path": relative, "max_abs_diff": diff, "size_bytes": target.stat().st_size}


def run_export(ctx: WorkerContext, job: Job) -> str:
    """Write a Keras version as a SavedModel at exports/tf-serving/<name>/<version>/ (TF Serving's layout) or as
    exports/onnx/<name>/<version>/model.onnx (checked and compared with Keras)."""
    fmt = ExportCreate.model_validate({"format": job.params.get("format", "tf-serving")}).format
    mv = source_version(ctx, job)
    written = _write_onnx(ctx, job, mv) if fmt == "onnx" else _write_saved_model(ctx, job, mv)
    result = {"operation": "export", "format": fmt, **written, "model_version": mv.ref}
    with session_scope(ctx.sessions) as session:
        if not jobstore.set_status(session, job.id, JobStatus.SUCCEEDED, model_version_id=mv.id, result=result):
            return JobStatus.CANCELED.value
    return JobStatus.SUCCEEDED.value
