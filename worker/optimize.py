"""Compression and quantization to TFLite, evaluation on a test split, and latency/throughput benchmarks.

`convert` runs the TFLite converter on a Keras model: `dynamic-range` (int8 weights, float activations),
`float16` (fp16 weights) or `int8` (full integer: weights and activations int8, calibrated on training images,
int8 input and output).  `evaluate` runs any served model (worker.runtime) on a test set; `benchmark` times the
served path at batch 1 and batch 64 on this machine.  TensorFlow is imported inside the functions.
"""

from __future__ import annotations

import statistics
import time
import warnings
from typing import Any, get_args

import numpy as np

from shared.registry.model_jobs import OptimizeMethod
from worker.runtime import LoadedModel
from worker.training import to_model_input

METHODS: tuple[str, ...] = get_args(OptimizeMethod)
LATENCY_BATCH = 1
THROUGHPUT_BATCH = 64


def convert(model: Any, method: str, calibration: np.ndarray | None = None) -> bytes:
    """The .tflite bytes of a Keras model under `method`; int8 needs float32 (N, 28, 28, 1) calibration images."""
    import tensorflow as tf

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {', '.join(METHODS)}")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if method == "float16":
        converter.target_spec.supported_types = [tf.float16]
    elif method == "int8":
        if calibration is None or len(calibration) == 0:
            raise ValueError("int8 quantization needs calibration images")
        images = np.asarray(calibration, dtype=np.float32)
        converter.representative_dataset = lambda: ([images[i : i + 1]] for i in range(len(images)))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    with warnings.catch_warnings():  # int8 I/O: the converter takes the input statistics from the calibration
        warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
        data: bytes = converter.convert()
    return data


def float32_tflite(model: Any) -> bytes:
    """The unoptimized float32 .tflite of a Keras model: the fair size baseline for the quantized variants."""
    import tensorflow as tf

    data: bytes = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    return data


def evaluate(model: LoadedModel, images: np.ndarray, labels: np.ndarray, batch: int = 256) -> dict[str, Any]:
    """Test accuracy and per-class accuracy of a served model on uint8 (N, 28, 28) images."""
    x = to_model_input(images)
    predicted = np.concatenate([np.argmax(model.predict(x[i : i + batch]), axis=1) for i in range(0, len(x), batch)])
    return {
        "test_accuracy": float(np.mean(predicted == labels)),
        "per_class_accuracy": {str(int(c)): float(np.mean(predicted[labels == c] == c)) for c in np.unique(labels)},
        "test_images": int(len(labels)),
    }


def _median_seconds(model: LoadedModel, x: np.ndarray, repeats: int) -> float:
    model.predict(x)  # warm-up (and, for TFLite, the resize to this batch size)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        model.predict(x)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def benchmark(model: LoadedModel, input_shape: tuple[int, ...] = (28, 28, 1), repeats: int = 30) -> dict[str, Any]:
    """Median latency (ms) of one image and throughput (images/s) at batch 64, through the served path."""
    rng = np.random.default_rng(0)
    one = rng.random((LATENCY_BATCH, *input_shape), dtype=np.float32)
    many = rng.random((THROUGHPUT_BATCH, *input_shape), dtype=np.float32)
    latency = _median_seconds(model, one, repeats)
    per_batch = _median_seconds(model, many, repeats)
    return {
        "latency_ms_batch1": round(latency * 1000, 3),
        "throughput_batch64": round(THROUGHPUT_BATCH / per_batch, 1),
        "repeats": repeats,
        "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
