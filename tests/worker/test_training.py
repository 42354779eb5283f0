"""Training the CNN: short seeded runs on a few hundred real digits, hooks, cancellation, saving, class names and
oversampling."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.training_factories import digits_of
from worker.datasets import Digits, load_mnist
from worker.training import TrainResult, save_keras, split_training, to_model_input, train_cnn, training_pipeline

pytestmark = pytest.mark.slow
KEYS = {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Digits]:
    """300 training and 100 test digits from the offline sample."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("KERAS_HOME", str(tmp_path_factory.mktemp("no-keras")))
        full = load_mnist(seed=0, allow_download=False)
    yield Digits(
        full.x_train[:300],
        full.y_train[:300],
        full.x_test[:100],
        full.y_test[:100],
        source=full.source,
        seed=full.seed,
        split="first 300/100 of " + full.split,
    )


@pytest.fixture(scope="module")
def one_epoch(small: Digits) -> tuple[TrainResult, list[tuple[int, dict[str, float]]]]:
    """One augmented epoch on the small set, recording every on_epoch call."""
    calls: list[tuple[int, dict[str, float]]] = []
    result = train_cnn(small, epochs=1, on_epoch=lambda epoch, logs: calls.append((epoch, logs)))
    return result, calls


def test_model_predicts_probabilities(one_epoch: tuple[TrainResult, Any], small: Digits) -> None:
    """The trained model maps (N, 28, 28, 1) inputs to (N, 10) rows that sum to 1."""
    probs = np.asarray(one_epoch[0].model.predict_on_batch(to_model_input(small.x_test[:8])))
    assert probs.shape == (8, 10)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)


def test_history_has_one_complete_entry(one_epoch: tuple[TrainResult, Any]) -> None:
    """One epoch gives one history row with epoch, loss, accuracy, val_loss and val_accuracy as floats."""
    result = one_epoch[0]
    assert len(result.history) == 1 and set(result.history[0]) >= KEYS
    assert result.history[0]["epoch"] == 1.0
    assert all(isinstance(v, float) for v in result.history[0].values())
    assert result.stop_reason == "completed" and result.seconds > 0


def test_on_epoch_is_called_once_with_the_logs(one_epoch: tuple[TrainResult, Any]) -> None:
    """on_epoch receives the 1-based epoch number and the same row the history keeps."""
    result, calls = one_epoch
    assert [epoch for epoch, _ in calls] == [1]
    assert calls[0][1] == result.history[0]


def test_result_records_accuracy_params_and_dataset(one_epoch: tuple[TrainResult, Any], small: Digits) -> None:
    """Test and per-class accuracies are fractions, params hold the exact settings, all JSON-ready."""
    result = one_epoch[0]
    assert 0.0 <= result.test_accuracy <= 1.0
    assert set(result.per_class_accuracy) == {str(c) for c in np.unique(small.y_test)}
    assert result.params["epochs"] == 1 and result.params["seed"] == 0 and result.params["augment"] == "basic"
    assert (result.params["train_images"], result.params["validation_images"]) == (270, 30)
    assert result.dataset["train_size"] == 300
    json.dumps({"params": result.params, "dataset": result.dataset, "history": result.history})


def test_should_stop_cancels_training(small: Digits) -> None:
    """should_stop returning True ends training after the current batch: fewer epochs than asked."""
    asked: list[int] = []

    def stop() -> bool:
        asked.append(1)
        return True

    result = train_cnn(small, epochs=3, augment=False, should_stop=stop)
    assert len(result.history) < 3 and asked
    assert result.stop_reason == "cancelled"


def test_bad_validation_split_is_rejected(small: Digits) -> None:
    """validation_split must lie strictly between 0 and 1."""
    with pytest.raises(ValueError, match="validation_split"):
        train_cnn(small, validation_split=0.0)


def test_save_keras_writes_a_loadable_file(one_epoch: tuple[TrainResult, Any], small: Digits, tmp_path: Path) -> None:
    """save_keras returns the file size, leaves no temporary file, and the file reloads to the same outputs."""
    import keras

    path = tmp_path / "models" / "m" / "1" / "model.keras"
    size = save_keras(one_epoch[0].model, path)
    assert size == path.stat().st_size > 0
    assert [p.name for p in path.parent.iterdir()] == ["model.keras"]
    loaded = keras.models.load_model(path, compile=False, safe_mode=True)
    x = to_model_input(small.x_test[:4])
    np.testing.assert_allclose(loaded.predict_on_batch(x), one_epoch[0].model.predict_on_batch(x), atol=1e-6)


def test_save_keras_requires_the_keras_suffix(one_epoch: tuple[TrainResult, Any], tmp_path: Path) -> None:
    """A path not ending in .keras is refused (keras could not load it back)."""
    with pytest.raises(ValueError, match=r"\.keras"):
        save_keras(one_epoch[0].model, tmp_path / "model.bin")
    assert not list(tmp_path.iterdir())


NAMES = ("circle", "stroke", "seven")


@pytest.fixture(scope="module")
def imbalanced() -> Digits:
    """Three classes of real digits named circle/stroke/seven, 90/20/10 training and 10 test images each."""
    return digits_of({0: 90, 1: 20, 7: 10}, NAMES)


@pytest.fixture(scope="module")
def oversampled(imbalanced: Digits) -> TrainResult:
    """One epoch on the imbalanced set with imbalance='oversample'."""
    return train_cnn(imbalanced, epochs=1, augment=False, seed=2, imbalance="oversample")


def test_output_size_and_per_class_accuracy_follow_the_dataset_classes(
    oversampled: TrainResult, imbalanced: Digits
) -> None:
    """A 3-class dataset trains a 3-output model; per-class accuracy and class counts are keyed by class name."""
    probs = np.asarray(oversampled.model.predict_on_batch(to_model_input(imbalanced.x_test[:4])))
    assert probs.shape == (4, 3)
    assert set(oversampled.per_class_accuracy) == set(NAMES) and oversampled.params["num_classes"] == 3
    assert oversampled.dataset["labels"] == list(NAMES) and set(oversampled.params["epoch_class_counts"]) == set(NAMES)


def test_oversampling_balances_every_epoch_and_leaves_validation_and_test_alone(
    oversampled: TrainResult, imbalanced: Digits
) -> None:
    """With imbalance='oversample' each epoch sees every class as often as the largest one, in the fit's own
    pipeline, while the validation and test images are exactly those without oversampling."""
    plain = split_training(imbalanced.y_train, validation_split=0.1, seed=2)
    count = dict(zip(NAMES, np.bincount(imbalanced.y_train[plain.train]).tolist(), strict=True))
    largest = max(count.values())
    assert oversampled.params["epoch_class_counts"] == dict.fromkeys(NAMES, largest)
    assert oversampled.params["train_class_counts"] == count
    validation = np.bincount(imbalanced.y_train[plain.validation], minlength=3).tolist()
    assert list(oversampled.params["validation_class_counts"].values()) == validation
    assert oversampled.params["validation_images"] == len(plain.validation)
    assert (oversampled.params["train_images"], oversampled.params["epoch_images"]) == (len(plain.train), 3 * largest)
    assert oversampled.params["test_images"] == 30 and oversampled.dataset["test_class_counts"] == dict.fromkeys(
        NAMES, 10
    )
    assert oversampled.params["imbalance"] == "oversample" and oversampled.params["class_weight"] is None
    split = split_training(imbalanced.y_train, validation_split=0.1, seed=2, imbalance="oversample")
    x = to_model_input(imbalanced.x_train)[split.train]
    pipeline = training_pipeline(x, imbalanced.y_train[split.train], 16, True, 2)
    for _ in range(2):  # two epochs over the same pipeline, reshuffled, both balanced
        seen = np.concatenate([labels.numpy() for _, labels in pipeline])
        assert np.bincount(seen).tolist() == [largest] * 3


def test_class_weight_and_oversample_exclude_each_other(imbalanced: Digits) -> None:
    """Asking for balanced class weights and oversampling at once is refused before any training."""
    with pytest.raises(ValueError, match="exclude each other"):
        train_cnn(imbalanced, class_weight="balanced", imbalance="oversample")
    with pytest.raises(ValueError, match="imbalance must be one of"):
        train_cnn(imbalanced, imbalance="smote")
