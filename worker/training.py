"""Train the CNN on digits or an uploaded dataset (seeded, early stopping, class-imbalance options, cancellable)
and save it atomically.  The output layer has one unit per class of the dataset (`Digits.labels`)."""

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

from worker.augment import mode as augment_mode
from worker.augment import realistic_copies
from worker.cnn import augmentation_layers, augmentation_params, build_cnn
from worker.datasets import Digits

EpochHook = Callable[[int, dict[str, float]], None]
MONITOR = "val_loss"
LOSS = "sparse_categorical_crossentropy"
DROPOUT = 0.3  # before the output layer: +0.5-1 point of test accuracy on the 4,000-image sample
COSINE_ALPHA = 0.05  # the learning rate decays along a cosine to 5% of its start over `epochs`
IMBALANCE = ("none", "class_weight", "oversample")
OVERSAMPLE_STREAM = 1  # oversampling draws from its own seeded stream, so the validation split never depends on it


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


@dataclass(frozen=True)
class Split:
    """Positions within the training images: the (shuffled) training part, which repeats images of the smaller
    classes when oversampled, and the validation part, which never does."""

    train: np.ndarray
    validation: np.ndarray


def oversample(indices: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`indices` plus repeats drawn with `rng` from each smaller class's own indices, until every class has as many
    as the largest one; shuffled."""
    labels = y[indices]
    values, counts = np.unique(labels, return_counts=True)
    target = int(counts.max()) if len(counts) else 0
    extra = [
        rng.choice(indices[labels == v], target - int(c), replace=True)
        for v, c in zip(values, counts, strict=True)
        if c < target
    ]
    return rng.permutation(np.concatenate([indices, *extra]))


def split_training(y: np.ndarray, *, validation_split: float, seed: int, imbalance: str = "none") -> Split:
    """Hold out a seeded validation split of the training images, then oversample only the rest if asked."""
    order = np.random.default_rng(seed).permutation(len(y))
    n_val = max(1, int(round(validation_split * len(y))))
    validation, train = order[:n_val], order[n_val:]
    if len(train) == 0:
        raise ValueError(f"validation_split {validation_split} leaves no training images out of {len(y)}")
    if imbalance == "oversample":
        train = oversample(train, y, np.random.default_rng([seed, OVERSAMPLE_STREAM]))
    return Split(train=train, validation=validation)


def training_pipeline(x: np.ndarray, y: np.ndarray, batch_size: int, augment: bool, seed: int) -> Any:
    """The tf.data pipeline of one fit: all of (x, y) every epoch, reshuffled (seeded), batched, maybe augmented."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices((x, y)).shuffle(len(y), seed=seed).batch(batch_size)
    if augment:
        augmenter = augmentation_layers(seed)
        ds = ds.map(lambda images, labels: (augmenter(images, training=True), labels))
    return ds.prefetch(tf.data.AUTOTUNE)


def _hooks(on_epoch: EpochHook | None, should_stop: Callable[[], bool] | None) -> Any:
    """A callback that records each epoch's metrics in `.history` (and reports them to `on_epoch`), and stops the
    fit at the next batch boundary once `should_stop()` says so (then `.cancelled` is set)."""
    keras = _keras()

    class Hooks(keras.callbacks.Callback):  # type: ignore[name-defined]
        history: list[dict[str, float]]
        cancelled = False

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if should_stop is not None and should_stop():
                self.cancelled = True
                self.model.stop_training = True

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            row = {"epoch": float(epoch + 1)}
            row.update({k: float(v) for k, v in (logs or {}).items() if np.size(v) == 1})
            self.history.append(row)
            if on_epoch is not None:
                on_epoch(epoch + 1, dict(row))

    hooks = Hooks()
    hooks.history = []
    return hooks


# train_cnn's arguments that are recorded as they were given in a version's params
HYPERPARAMETERS = ("epochs", "batch_size", "learning_rate", "validation_split", "patience", "seed", "optimizer")
OPTIMIZERS = {"adam": "Adam", "sgd": "SGD", "adagrad": "Adagrad", "rmsprop": "RMSprop"}


def _compiled_model(learning_rate: float, decay_steps: int, optimizer: str = "adam", num_classes: int = 10) -> Any:
    keras = _keras()
    model = build_cnn(num_classes=num_classes, dropout=DROPOUT)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, decay_steps=decay_steps, alpha=COSINE_ALPHA)
    opt = getattr(keras.optimizers, OPTIMIZERS[optimizer])(schedule)
    model.compile(optimizer=opt, loss=LOSS, metrics=["accuracy"])
    return model


def balanced_class_weight(y: np.ndarray) -> dict[int, float]:
    """Weights n / (classes * count) per class, so every class counts equally in the loss."""
    values, counts = np.unique(y, return_counts=True)
    return {int(v): float(len(y) / (len(values) * c)) for v, c in zip(values, counts, strict=True)}


def _per_class(y_true: np.ndarray, y_pred: np.ndarray, names: tuple[str, ...]) -> dict[str, float]:
    return {names[int(c)]: float(np.mean(y_pred[y_true == c] == c)) for c in np.unique(y_true)}


def class_counts(y: np.ndarray, names: tuple[str, ...]) -> dict[str, int]:
    """How many of `y` fall in each class, by class name (classes absent from `y` count 0)."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=len(names))
    return {name: int(counts[i]) for i, name in enumerate(names)}


def _imbalance(imbalance: str, class_weight: str | None) -> str:
    if imbalance not in IMBALANCE:
        raise ValueError(f"imbalance must be one of {', '.join(IMBALANCE)}, got {imbalance!r}")
    if class_weight == "balanced":
        if imbalance == "oversample":
            raise ValueError("class_weight='balanced' and imbalance='oversample' exclude each other")
        return "class_weight"
    return imbalance


def _fixed_params(augment: str) -> dict[str, Any]:
    return {
        "loss": LOSS,
        "lr_schedule": f"cosine decay to {COSINE_ALPHA} x over all epochs",
        "early_stopping_monitor": MONITOR,
        "restore_best_weights": True,
        "dropout": DROPOUT,
        "augmentation": None if augment == "none" else {**augmentation_params(), "mode": augment},
        "architecture": "mnist_cnn",
    }


def _epoch_arrays(
    digits: Digits, split: Split, augment: str, seed: int, on_augment: Callable[[int, int], None] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Model inputs and labels of one epoch and of validation, and how many realistic copies the epoch holds."""
    x_all = to_model_input(digits.x_train)
    x_train, y_train = x_all[split.train], digits.y_train[split.train]
    x_val, y_val = x_all[split.validation], digits.y_train[split.validation]
    del x_all
    if augment != "realistic":
        return x_train, y_train, x_val, y_val, 0
    x_real, y_real = realistic_copies(digits.x_train[split.train], y_train, seed=seed, on_progress=on_augment)
    x_train, y_train = np.concatenate([x_train, to_model_input(x_real)]), np.concatenate([y_train, y_real])
    return x_train, y_train, x_val, y_val, len(y_real)


def _data_params(
    digits: Digits, trained: np.ndarray, epoch: np.ndarray, validation: np.ndarray, rendered: int
) -> dict[str, Any]:
    """What a version was trained on: image counts and class counts of each part (labels given)."""
    names = tuple(digits.labels)
    return {
        "num_classes": len(names),
        "train_images": len(trained),
        "epoch_images": len(epoch),  # with oversampling, repeats included; with realistic augmentation, copies
        "realistic_copies": rendered,
        "validation_images": len(validation),
        "test_images": len(digits.y_test),
        "train_class_counts": class_counts(trained, names),
        "epoch_class_counts": class_counts(epoch, names),
        "validation_class_counts": class_counts(validation, names),
    }


def train_cnn(
    digits: Digits,
    *,
    epochs: int = 12,
    batch_size: int = 32,
    learning_rate: float = 2e-3,
    validation_split: float = 0.1,
    patience: int = 3,
    augment: bool | str = True,
    seed: int = 0,
    on_epoch: EpochHook | None = None,
    should_stop: Callable[[], bool] | None = None,
    optimizer: str = "adam",
    class_weight: str | None = None,
    imbalance: str = "none",
    callbacks: Sequence[Any] = (),
    on_augment: Callable[[int, int], None] | None = None,
) -> TrainResult:
    """Train the CNN on `digits` (cosine decay, early stopping restoring the best weights) and test it.
    `imbalance`: "none", "class_weight" (also `class_weight="balanced"`) or "oversample" (training part only).
    `augment`: "none" (False), "basic" (True: random shifts, rotations, zooms) or "realistic" (basic, plus every
    training image rendered as users send pictures and preprocessed, worker.augment)."""
    hyper = {name: value for name, value in locals().items() if name in HYPERPARAMETERS}
    if not 0.0 < validation_split < 1.0:
        raise ValueError(f"validation_split must be between 0 and 1, got {validation_split}")
    imbalance = _imbalance(imbalance, class_weight)
    augment = augment_mode(augment)
    keras = _keras()
    keras.utils.set_random_seed(seed)
    started = time.perf_counter()
    split = split_training(digits.y_train, validation_split=validation_split, seed=seed, imbalance=imbalance)
    x_train, y_train, x_val, y_val, rendered = _epoch_arrays(digits, split, augment, seed, on_augment)
    model = _compiled_model(learning_rate, epochs * -(-len(y_train) // batch_size), optimizer, len(digits.labels))
    weights = balanced_class_weight(y_train) if imbalance == "class_weight" else None
    stopper = keras.callbacks.EarlyStopping(monitor=MONITOR, patience=patience, restore_best_weights=True)
    hooks = _hooks(on_epoch, should_stop)
    pipeline = training_pipeline(x_train, y_train, batch_size, augment != "none", seed)
    fit = {"epochs": epochs, "validation_data": (x_val, y_val), "class_weight": weights, "verbose": 0}
    model.fit(pipeline, shuffle=False, callbacks=[stopper, hooks, *callbacks], **fit)
    predicted = np.argmax(model.predict(to_model_input(digits.x_test), batch_size=256, verbose=0), axis=1)
    trained_on = np.unique(split.train)
    params = {
        **hyper,
        "augment": augment,
        "class_weight": "balanced" if imbalance == "class_weight" else None,
        "imbalance": imbalance,
        **_fixed_params(augment),
        **_data_params(digits, digits.y_train[trained_on], y_train, y_val, rendered),
    }
    return TrainResult(
        model=model,
        history=hooks.history,
        test_accuracy=float(np.mean(predicted == digits.y_test)),
        per_class_accuracy=_per_class(digits.y_test, predicted, tuple(digits.labels)),
        params=params,
        dataset=digits.describe(),
        stop_reason="cancelled" if hooks.cancelled else "early_stopping" if stopper.stopped_epoch else "completed",
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
