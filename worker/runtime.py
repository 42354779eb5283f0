"""Serving a model version: load a .keras or .tflite artifact once per process and predict on batches."""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from shared.errors import ModelNotReady

log = logging.getLogger(__name__)


class LoadedModel(Protocol):
    num_classes: int

    def predict(self, x: np.ndarray) -> np.ndarray: ...


class KerasModel:
    """A Keras model called directly (no per-call `predict` overhead); inputs (N, 28, 28) float32 in [0, 1]."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.num_classes = int(model.outputs[0].shape[-1])

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C)."""
        batch = np.asarray(x, dtype=np.float32).reshape(len(x), 28, 28, 1)
        return np.asarray(self.model(batch, training=False), dtype=np.float32)


class TFLiteModel:
    """A .tflite model through the LiteRT interpreter, resized to each batch, (de)quantizing int8 tensors."""

    def __init__(self, path: Path) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path))
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.num_classes = int(self.output["shape"][-1])
        self._batch = int(self.input["shape"][0])
        self._lock = threading.Lock()

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Class probabilities (N, C)."""
        batch = np.asarray(x, dtype=np.float32).reshape(len(x), 28, 28, 1)
        with self._lock:
            if len(batch) != self._batch:
                self.interpreter.resize_tensor_input(self.input["index"], [len(batch), 28, 28, 1])
                self.interpreter.allocate_tensors()
                self.input = self.interpreter.get_input_details()[0]
                self.output = self.interpreter.get_output_details()[0]
                self._batch = len(batch)
            self.interpreter.set_tensor(self.input["index"], _quantize(batch, self.input))
            self.interpreter.invoke()
            return _dequantize(self.interpreter.get_tensor(self.output["index"]), self.output)


def _quantize(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    dtype = detail["dtype"]
    if dtype == np.float32:
        return x
    scale, zero = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)


def _dequantize(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    if y.dtype == np.float32:
        return y.copy()
    scale, zero = detail["quantization"]
    return ((y.astype(np.float32) - zero) * scale).astype(np.float32)


def load_model(path: Path, fmt: str) -> LoadedModel:
    """Load an artifact of format 'keras' (safe mode) or 'tflite'; any failure is ModelNotReady."""
    if not path.is_file():
        raise ModelNotReady(f"model artifact {path} is missing")
    try:
        if fmt == "keras":
            import keras

            return KerasModel(keras.models.load_model(path, compile=False, safe_mode=True))
        if fmt == "tflite":
            return TFLiteModel(path)
    except Exception as exc:
        raise ModelNotReady(f"cannot load {fmt} model {path.name}: {type(exc).__name__}: {exc}"[:500]) from exc
    raise ModelNotReady(f"unknown model format {fmt!r}; expected 'keras' or 'tflite'")


class ModelCache:
    """A thread-safe LRU of loaded models; each key is loaded once even when many threads ask at once."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._models: OrderedDict[Hashable, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[Hashable, threading.Lock] = {}

    def get(self, key: Hashable, loader: Callable[[], LoadedModel]) -> LoadedModel:
        """The model for `key`, loading it with `loader` on first use."""
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            key_lock = self._loading.setdefault(key, threading.Lock())
        with key_lock:
            with self._lock:
                if key in self._models:
                    return self._models[key]
            model = loader()
            with self._lock:
                self._models[key] = model
                self._loading.pop(key, None)
                while len(self._models) > self.max_size:
                    evicted, _ = self._models.popitem(last=False)
                    log.info("evicted model %s from the cache", evicted)
            return model

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._models
