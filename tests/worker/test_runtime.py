"""Serving: loading .keras and .tflite artifacts (float and int8), batched predict, and the model cache."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from shared.config.errors import ModelNotReady
from worker.runtime import LoadedModel, ModelCache, as_batch, load_model


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """An untrained seeded CNN, saved as .keras and converted to a float .tflite."""
    import keras
    import tensorflow as tf

    from worker.cnn import build_cnn

    keras.utils.set_random_seed(0)
    model = build_cnn()
    out = tmp_path_factory.mktemp("artifacts")
    model.save(out / "model.keras")
    (out / "model.tflite").write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return {"keras": out / "model.keras", "tflite": out / "model.tflite", "model": model}


@pytest.fixture(scope="module")
def int8_artifact(artifacts: dict[str, Any]) -> Path:
    """The same CNN converted to a full-integer .tflite (int8 input and output), calibrated on 20 images."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    converter = tf.lite.TFLiteConverter.from_keras_model(artifacts["model"])
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([rng.random((1, 28, 28, 1), dtype=np.float32)] for _ in range(20))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    path: Path = artifacts["keras"].with_name("int8.tflite")
    path.write_bytes(converter.convert())
    return path


def images(n: int, seed: int = 0) -> np.ndarray:
    """n random float32 (28, 28) images in [0, 1]."""
    return np.random.default_rng(seed).random((n, 28, 28), dtype=np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("n", [1, 5])
def test_keras_predicts_probabilities(artifacts: dict[str, Any], n: int) -> None:
    """A .keras artifact predicts float32 (N, 10) rows that sum to 1."""
    model = load_model(artifacts["keras"], "keras")
    probs = model.predict(images(n))
    assert model.num_classes == 10 and probs.shape == (n, 10) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_keras_accepts_channel_axis_and_empty_batches(artifacts: dict[str, Any]) -> None:
    """(N, 28, 28, 1) inputs give the same result as (N, 28, 28); an empty batch gives (0, 10)."""
    model = load_model(artifacts["keras"], "keras")
    x = images(3)
    np.testing.assert_array_equal(model.predict(x[..., None]), model.predict(x))
    assert model.predict(np.zeros((0, 28, 28), np.float32)).shape == (0, 10)


@pytest.mark.slow
def test_tflite_matches_keras_across_batch_sizes(artifacts: dict[str, Any]) -> None:
    """The float .tflite agrees with keras within 1e-4 for a batch of 7, then 2 (resize), then 7 again."""
    keras_model = load_model(artifacts["keras"], "keras")
    lite = load_model(artifacts["tflite"], "tflite")
    for n in (7, 2, 7):
        x = images(n, seed=n)
        out = lite.predict(x)
        assert out.shape == (n, 10) and out.dtype == np.float32
        np.testing.assert_allclose(out, keras_model.predict(x), atol=1e-4)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Statistics for quantized inputs were expected:UserWarning")
def test_int8_tflite_is_dequantized(artifacts: dict[str, Any], int8_artifact: Path) -> None:
    """A full-integer model takes float inputs and returns float probabilities close to keras."""
    keras_model = load_model(artifacts["keras"], "keras")
    lite = load_model(int8_artifact, "tflite")
    assert lite.input["dtype"] == np.int8  # type: ignore[attr-defined]
    for n in (4, 9):
        x = images(n, seed=10 + n)
        out = lite.predict(x)
        assert out.shape == (n, 10) and out.dtype == np.float32
        np.testing.assert_allclose(out, keras_model.predict(x), atol=0.02)
        np.testing.assert_allclose(out.sum(axis=1), 1.0, atol=0.05)


def test_wrong_input_shape_is_rejected() -> None:
    """as_batch refuses arrays whose images do not have the model's size."""
    assert as_batch(np.zeros((2, 784)), (28, 28, 1)).shape == (2, 28, 28, 1)
    with pytest.raises(ValueError, match="expected a batch"):
        as_batch(np.zeros((2, 27, 28)), (28, 28, 1))


@pytest.mark.parametrize("fmt", ["keras", "tflite"])
def test_corrupt_file_is_model_not_ready(tmp_path: Path, fmt: str) -> None:
    """Garbage bytes in an artifact raise ModelNotReady naming the file."""
    path = tmp_path / f"model.{fmt}"
    path.write_bytes(b"\x00garbage, not a model" * 10)
    with pytest.raises(ModelNotReady, match=f"cannot load {fmt} model model.{fmt}"):
        load_model(path, fmt)


def test_missing_file_and_unknown_format_are_model_not_ready(tmp_path: Path) -> None:
    """A missing artifact, an unknown format or a keras file without the .keras suffix is ModelNotReady."""
    with pytest.raises(ModelNotReady, match="missing"):
        load_model(tmp_path / "absent.keras", "keras")
    (tmp_path / "model.onnx").write_bytes(b"x")
    with pytest.raises(ModelNotReady, match="unknown model format 'onnx'"):
        load_model(tmp_path / "model.onnx", "onnx")
    with pytest.raises(ModelNotReady, match=r"must be a \.keras file"):
        load_model(tmp_path / "model.onnx", "keras")


class Fake:
    """A stand-in LoadedModel."""

    num_classes = 10

    def __init__(self, name: str) -> None:
        self.name = name

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.full((len(x), 10), 0.1, np.float32)


def counting_loader(calls: list[Any], name: str) -> Any:
    """A loader that records each call and returns a fresh Fake."""

    def load() -> LoadedModel:
        calls.append(name)
        return Fake(name)

    return load


def test_cache_loads_each_key_once() -> None:
    """Repeated gets of a key return the same object and call its loader once."""
    cache, calls = ModelCache(2), list[str]()
    first = cache.get(("m", 1), counting_loader(calls, "a"))
    assert cache.get(("m", 1), counting_loader(calls, "a")) is first
    cache.get(("m", 2), counting_loader(calls, "b"))
    assert calls == ["a", "b"] and len(cache) == 2 and ("m", 1) in cache


def test_cache_evicts_least_recently_used() -> None:
    """Beyond max_size the least recently used key goes; a get refreshes recency."""
    cache, calls = ModelCache(2), list[str]()
    for key in ("a", "b"):
        cache.get((key,), counting_loader(calls, key))
    cache.get(("a",), counting_loader(calls, "a"))  # "b" is now the oldest
    cache.get(("c",), counting_loader(calls, "c"))
    assert cache.keys() == [("a",), ("c",)]
    cache.get(("b",), counting_loader(calls, "b"))
    assert calls == ["a", "b", "c", "b"] and cache.keys() == [("c",), ("b",)]
    cache.discard(("c",))
    assert cache.keys() == [("b",)]


def test_cache_loader_errors_are_not_cached() -> None:
    """A failing loader's error reaches the caller and the next get tries again."""
    cache = ModelCache(1)

    def broken() -> LoadedModel:
        raise ModelNotReady("boom")

    with pytest.raises(ModelNotReady, match="boom"):
        cache.get(("m",), broken)
    assert len(cache) == 0
    assert cache.get(("m",), lambda: Fake("ok")).name == "ok"  # type: ignore[attr-defined]


def test_cache_loads_once_under_concurrency() -> None:
    """Eight threads asking for one key at the same moment share a single load and one object."""
    cache, calls, threads = ModelCache(4), [], 8
    start = threading.Barrier(threads)
    arrived, all_arrived = [0], threading.Event()
    lock = threading.Lock()

    def loader() -> LoadedModel:
        calls.append(1)
        assert all_arrived.wait(timeout=10)  # hold the load until every thread is at get()
        return Fake("shared")

    def ask() -> LoadedModel:
        start.wait(timeout=10)
        with lock:
            arrived[0] += 1
            if arrived[0] == threads:
                all_arrived.set()
        return cache.get(("m", 1), loader)

    with ThreadPoolExecutor(threads) as pool:
        results = [f.result(timeout=20) for f in [pool.submit(ask) for _ in range(threads)]]
    assert len(calls) == 1 and all(r is results[0] for r in results)


def test_cache_size_must_be_positive() -> None:
    """A cache of size 0 is refused."""
    with pytest.raises(ValueError, match="max_size"):
        ModelCache(0)
