"""The default digit classifier: the seed article's small CNN, plus the training-time augmentation.

Inputs are float32 (N, 28, 28, 1) in [0, 1] (light digit on dark), outputs softmax probabilities.
Augmentation is a separate model applied in the tf.data training pipeline, so the served model never
contains random layers.  Keras is imported lazily (inside the functions) to keep imports cheap.
"""

from __future__ import annotations

from typing import Any

INPUT_SHAPE = (28, 28, 1)
TRANSLATION = 0.1
ROTATION = 0.05  # fraction of a full turn: +-18 degrees
ZOOM = 0.1


def _keras() -> Any:
    import keras

    return keras


def build_cnn(num_classes: int = 10, input_shape: tuple[int, ...] = INPUT_SHAPE, dropout: float = 0.0) -> Any:
    """Return the uncompiled CNN: two conv/pool blocks, Dense(128), optional Dropout, softmax output."""
    keras = _keras()
    layers = keras.layers
    stack = [
        keras.Input(shape=input_shape, name="image"),
        layers.Conv2D(32, 3, activation="relu", name="conv1"),
        layers.MaxPool2D(name="pool1"),
        layers.Conv2D(64, 3, activation="relu", name="conv2"),
        layers.MaxPool2D(name="pool2"),
        layers.Flatten(name="flatten"),
        layers.Dense(128, activation="relu", name="dense"),
    ]
    if dropout > 0:
        stack.append(layers.Dropout(dropout, name="dropout"))
    stack.append(layers.Dense(num_classes, activation="softmax", name="probabilities"))
    return keras.Sequential(stack, name="mnist_cnn")


def augmentation_layers(seed: int = 0) -> Any:
    """Return a Sequential of small random shifts, rotations and zooms (black fill) for training only."""
    keras = _keras()
    layers = keras.layers
    fill = {"fill_mode": "constant", "fill_value": 0.0}
    return keras.Sequential(
        [
            layers.RandomTranslation(TRANSLATION, TRANSLATION, seed=seed, name="shift", **fill),
            layers.RandomRotation(ROTATION, seed=seed + 1, name="rotate", **fill),
            layers.RandomZoom(ZOOM, ZOOM, seed=seed + 2, name="zoom", **fill),
        ],
        name="augmentation",
    )


def augmentation_params() -> dict[str, float]:
    """Return the augmentation ranges, for recording with a trained model's hyperparameters."""
    return {"translation": TRANSLATION, "rotation": ROTATION, "zoom": ZOOM}
