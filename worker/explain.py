"""Explanations: a saliency map per image (which pixels pushed the predicted label), batched like predictions.

Keras models get gradient x input (one backward pass for the whole batch); models without gradients (TFLite /
LiteRT) get occlusion: every patch of the picture is blanked in turn and the drop of the predicted label's
probability is that patch's weight (one forward pass of N x (28/patch)^2 pictures). Maps are scaled per image to
0-255 and stored as 784 uint8 bytes next to the 28x28 picture the model saw.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np

from shared.inputs.imaging import to_pixels
from shared.jobs.lifecycle import ItemResult
from worker.batcher import Request
from worker.runtime import LoadedModel

SIDE = 28


def saliency(model: LoadedModel, batch: np.ndarray, classes: np.ndarray, *, patch: int) -> np.ndarray:
    """(N, 28, 28) float32 maps in [0, 1] for the labels `classes` of a (N, 28, 28) batch in [0, 1]."""
    batch = np.asarray(batch, dtype=np.float32).reshape(len(batch), SIDE, SIDE)
    keras = getattr(model, "model", None)
    if keras is not None and hasattr(keras, "inputs"):
        raw = gradient_x_input(keras, batch, classes)
    else:
        raw = occlusion(model, batch, classes, patch=patch)
    peak = raw.reshape(len(raw), -1).max(axis=1, initial=0.0).reshape(-1, 1, 1)
    return np.divide(raw, peak, out=np.zeros_like(raw), where=peak > 0).astype(np.float32)


def gradient_x_input(keras: Any, batch: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """|d p(class) / d x| * x per pixel, for a Keras model (TensorFlow imported here, in the worker only)."""
    import tensorflow as tf

    shape = tuple(int(d) for d in keras.inputs[0].shape[1:])
    x = tf.convert_to_tensor(batch.reshape(len(batch), *shape))
    with tf.GradientTape() as tape:
        tape.watch(x)
        probs = keras(x, training=False)
        picked = tf.gather(probs, tf.convert_to_tensor(classes, dtype=tf.int32), axis=1, batch_dims=1)
    grads = tape.gradient(picked, x).numpy().reshape(len(batch), SIDE, SIDE)
    return np.abs(grads * batch).astype(np.float32)


def occlusion(model: LoadedModel, batch: np.ndarray, classes: np.ndarray, *, patch: int) -> np.ndarray:
    """How much p(class) drops when each patch x patch square is blanked (only forward passes needed)."""
    if patch < 1 or SIDE % patch:
        raise ValueError(f"the occlusion patch must divide {SIDE}, got {patch}")
    cells = SIDE // patch
    n = len(batch)
    occluded = np.repeat(batch[:, None], cells * cells, axis=1)  # (N, cells^2, 28, 28)
    for k in range(cells * cells):
        r, c = divmod(k, cells)
        occluded[:, k, r * patch : (r + 1) * patch, c * patch : (c + 1) * patch] = 0.0
    base = model.predict(batch)[np.arange(n), classes]
    probs = model.predict(occluded.reshape(n * cells * cells, SIDE, SIDE)).reshape(n, cells * cells, -1)
    drop = np.clip(base[:, None] - probs[np.arange(n), :, classes], 0.0, None)
    grid = drop.reshape(n, cells, cells)
    return np.kron(grid, np.ones((patch, patch), dtype=np.float32)).astype(np.float32)


def explain_results(
    model: LoadedModel,
    requests: Sequence[Request],
    outputs: Sequence[np.ndarray],
    results: list[ItemResult],
    *,
    patch: int,
) -> list[ItemResult]:
    """`results` with the picture and saliency map added to the items of requests tagged `explain` (one
    saliency pass for all of them); the others are returned unchanged."""
    asked = [(req, out) for req, out in zip(requests, outputs, strict=True) if getattr(req.tag, "explain", False)]
    if not asked:
        return results
    ids = [item_id for req, _ in asked for item_id in req.tag.item_ids]
    images = np.concatenate([np.asarray(req.inputs, dtype=np.float32).reshape(-1, SIDE, SIDE) for req, _ in asked])
    classes = np.concatenate([np.argmax(np.asarray(out), axis=1) for _, out in asked])
    maps = saliency(model, images, classes, patch=patch)
    extra = {item_id: (to_pixels(img), to_pixels(m)) for item_id, img, m in zip(ids, images, maps, strict=True)}
    return [
        dataclasses.replace(r, input_image=extra[r.item_id][0], explanation=extra[r.item_id][1])
        if r.item_id in extra
        else r
        for r in results
    ]
