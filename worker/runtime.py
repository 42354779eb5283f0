"""Serving a model version: load a .keras or .tflite artifact once per process and predict on batches.

Inputs are float32 (N, 28, 28) images in [0, 1] (an (N, 28, 28, 1) array is accepted too); outputs are
float32 (N, C) probabilities.  Keras models run through `predict_on_batch` (about 1 ms at batch 1 and 7 ms at
batch 64 on 2 CPU cores, against 5 ms / 15 ms for `model(x)` and ~90 ms for `model.predict`).  TFLite models
run on the LiteRT interpreter, resized whenever the batch size changes, with int8/uint8 tensors (de)quantized
from their scale and zero point.  Every model is run once on a blank batch at load time, so a broken
artifact fails with ModelNotReady when loaded rather than on the first request.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shared.config.errors import ModelNotReady
from shared.runtime.heap import thaw
from worker.gpu import ensure_tensorflow

log = logging.getLogger(__name__)
FORMATS = ("keras", "tflite")


class LoadedModel(Protocol):
    """A model ready to serve: float32 (N, 28, 28) in [0, 1] -> float32 (N, num_classes) probabilities."""

    num_classes: int

    def predict(self, x: np.ndarray) -> np.ndarray: ...


def as_batch(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Return `x` as a contiguous float32 (N, *shape) array, or raise ValueError if the sizes disagree."""
    batch = np.asarray(x, dtype=np.float32)
    if batch.ndim == 0 or int(np.prod(batch.shape[1:])) != int(np.prod(shape)):
        raise ValueError(f"expected a batch of {shape} inputs, got an array of shape {batch.shape}")
    return np.ascontiguousarray(batch.reshape(len(batch), *shape))


class KerasModel:
    """A Keras model served through `predict_on_batch` (no per-call `predict` overhead)."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
        self.num_classes = int(model.outputs[0].shape[-1])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Return the (N, num_classes) float32 probabilities of a batch."""
        batch = as_batch(x, self.input_shape)
        if len(batch) == 0:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        return np.asarray(self.model.predict_on_batch(batch), dtype=np.float32)


class TFLiteModel:
    """A .tflite model on the LiteRT interpreter, resized to each batch size, (de)quantizing int tensors."""

    def __init__(self, path: Path, num_threads: int | None = None) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.input_shape = tuple(int(d) for d in self.input["shape"][1:])
        self.num_classes = int(self.output["shape"][-1])
        self._batch = int(self.input["shape"][0])
        self._lock = threading.Lock()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Return the (N, num_classes) float32 probabilities of a batch (one interpreter call at a time)."""
        batch = as_batch(x, self.input_shape)
        if len(batch) == 0:
            return np.zeros((0, self.num_classes), dtype=np.float32)
        with self._lock:
            if len(batch) != self._batch:
                self.interpreter.resize_tensor_input(self.input["index"], [len(batch), *self.input_shape])
                self.interpreter.allocate_tensors()
                self._batch = len(batch)
            self.interpreter.set_tensor(self.input["index"], quantize(batch, self.input))
            self.interpreter.invoke()
            return dequantize(self.interpreter.get_tensor(self.output["index"]), self.output)


def _scale(detail: dict[str, Any]) -> tuple[float, int]:
    scale, zero_point = detail["quantization"]
    if not scale:
        raise ValueError(f"tensor {detail['name']!r} is {np.dtype(detail['dtype'])} without quantization")
    return float(scale), int(zero_point)


def quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Return float `x` in the input tensor's dtype: unchanged for float32, else round(x/scale + zero)."""
    dtype = np.dtype(detail["dtype"])
    if dtype.kind == "f":
        return x.astype(dtype, copy=False)
    scale, zero_point = _scale(detail)
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero_point), info.min, info.max).astype(dtype)


def dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Return an output tensor as float32: a copy for float outputs, else (y - zero) * scale."""
    if y.dtype.kind == "f":
        return y.astype(np.float32, copy=True)
    scale, zero_point = _scale(detail)
    return ((y.astype(np.float32) - zero_point) * scale).astype(np.float32)


def _open(path: Path, fmt: str) -> KerasModel | TFLiteModel:
    if fmt == "tflite":
        return TFLiteModel(path)
    if path.suffix != ".keras":
        raise ValueError("a keras artifact must be a .keras file")
    ensure_tensorflow()  # the process's first Keras model imports TensorFlow and sets its GPUs' memory growth
    import keras

    return KerasModel(keras.models.load_model(path, compile=False, safe_mode=True))


def load_model(path: Path, fmt: str) -> LoadedModel:
    """Load a 'keras' (safe mode) or 'tflite' artifact and run it once; any failure is ModelNotReady."""
    path = Path(path)
    if fmt not in FORMATS:
        raise ModelNotReady(f"unknown model format {fmt!r}; expected one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise ModelNotReady(f"model artifact {path} is missing")
    try:
        model = _open(path, fmt)
        # two probes: Keras traces the forward pass again for a second batch size, then keeps one trace for any
        # size; without the second, the first real batch pays ~0.3 s for that tracing
        for n in (1, 2):
            probe = model.predict(np.zeros((n, *model.input_shape), dtype=np.float32))
            if probe.shape != (n, model.num_classes):
                raise ValueError(f"output shape {probe.shape} is not ({n}, {model.num_classes})")
    except Exception as exc:
        raise ModelNotReady(f"cannot load {fmt} model {path.name}: {type(exc).__name__}: {exc}"[:500]) from exc
    log.info("loaded %s model %s (%d classes)", fmt, path, model.num_classes)
    return model


class ModelCache:
    """A thread-safe LRU of loaded models; each key is loaded once even when many threads ask at once."""

    def __init__(self, max_size: int) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        self.max_size = max_size
        self._models: OrderedDict[Hashable, LoadedModel] = OrderedDict()
        self._loading: dict[Hashable, Future[LoadedModel]] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, loader: Callable[[], LoadedModel]) -> LoadedModel:
        """Return the model of `key`, calling `loader` once on a miss; concurrent callers share that load."""
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            pending = self._loading.get(key)
            owner = pending is None
            if pending is None:
                pending = self._loading[key] = Future()
        if not owner:
            return pending.result()  # re-raises the loader's error in every waiting thread
        try:
            model = loader()
        except BaseException as exc:
            with self._lock:
                del self._loading[key]
            pending.set_exception(exc)
            raise
        with self._lock:
            self._models[key] = model
            del self._loading[key]
            self._evict()
        pending.set_result(model)
        return model

    def _evict(self) -> None:
        while len(self._models) > self.max_size:
            evicted, _ = self._models.popitem(last=False)
            log.info("evicted model %s from the cache (max %d)", evicted, self.max_size)
            thaw()  # the evicted model may be in the frozen start-up heap: let the collector free it

    def discard(self, key: Hashable) -> None:
        """Drop `key` from the cache if present (the next get loads it again)."""
        with self._lock:
            self._models.pop(key, None)

    def keys(self) -> list[Hashable]:
        """Return the cached keys, least recently used first."""
        with self._lock:
            return list(self._models)

    def __len__(self) -> int:
        with self._lock:
            return len(self._models)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._models
