"""Explanations: occlusion and gradient x input saliency maps, and the classify job's `explain` option."""

from __future__ import annotations

import numpy as np
import pytest

from shared.db.engine import session_scope
from shared.db.models import ModelVersion
from shared.jobs import lifecycle as jobstore
from tests.worker.test_inference import FakeModel, ctx, load, model, png  # noqa: F401  (fixtures)
from worker.context import WorkerContext
from worker.explain import occlusion, saliency
from worker.inference import run_classify


class CornerModel:
    """Two classes: p(class 0) is the mean ink of the top-left 8x8 corner, so only that corner matters."""

    num_classes = 2

    def predict(self, x: np.ndarray) -> np.ndarray:
        p = np.asarray(x, dtype=np.float32).reshape(len(x), 28, 28)[:, :8, :8].mean(axis=(1, 2))
        return np.stack([p, 1.0 - p], axis=1)


def test_occlusion_weights_only_the_pixels_the_model_uses() -> None:
    """Blanking the corner drops p(class 0); blanking anything else changes nothing, so the map is 0 there."""
    batch = np.ones((2, 28, 28), dtype=np.float32)
    raw = occlusion(CornerModel(), batch, np.array([0, 0]), patch=4)
    assert raw.shape == (2, 28, 28)
    assert (raw[:, :8, :8] > 0).all() and not raw[:, 8:, :].any() and not raw[:, :, 8:].any()


def test_occlusion_rejects_a_patch_that_does_not_divide_28() -> None:
    """A patch side that does not tile the picture is refused."""
    with pytest.raises(ValueError, match="divide"):
        occlusion(CornerModel(), np.ones((1, 28, 28), dtype=np.float32), np.array([0]), patch=5)


def test_gradient_x_input_is_zero_where_there_is_no_ink() -> None:
    """A Keras model's map is |gradient| x input: background pixels (0) weigh nothing, ink pixels something."""
    keras = pytest.importorskip("keras")
    net = keras.Sequential([keras.Input((28, 28)), keras.layers.Flatten(), keras.layers.Dense(10, "softmax")])

    class Wrapped:
        model = net
        num_classes = 10

        def predict(self, x: np.ndarray) -> np.ndarray:
            return np.asarray(net.predict_on_batch(x))

    batch = np.zeros((1, 28, 28), dtype=np.float32)
    batch[0, 5:20, 12:15] = 1.0
    maps = saliency(Wrapped(), batch, np.array([3]), patch=4)  # type: ignore[arg-type]
    assert maps.max() == pytest.approx(1.0) and maps.min() >= 0
    assert not maps[0][batch[0] == 0].any() and maps[0][batch[0] > 0].any()


def test_an_explained_job_stores_the_picture_seen_and_its_map(
    ctx: WorkerContext,  # noqa: F811
    model: tuple[ModelVersion, FakeModel],  # noqa: F811
) -> None:
    """With explain, each prediction keeps 784 bytes of picture and of map; without it, neither is stored."""
    ids = []
    for explain in (True, False):
        with session_scope(ctx.sessions) as session:
            job = jobstore.create_classify_job(
                session=session,
                store=ctx.store,
                model_ref="mnist-cnn",
                top_k=3,
                uploads=[jobstore.Upload("a.png", png()), jobstore.Upload("b.png", png(20))],
                explain=explain,
            )
            ids.append(job.id)
        assert run_classify(ctx, job.id).status == "succeeded"
    _, explained = load(ctx, ids[0])
    _, plain = load(ctx, ids[1])
    assert all(len(i.input_image or b"") == 784 and len(i.explanation or b"") == 784 for i in explained)
    assert all(max(i.explanation or b"") in (0, 255) for i in explained)  # scaled per image (0: nothing mattered)
    assert all(max(i.input_image or b"") == 255 for i in explained)  # the picture: white ink on black
    assert all(i.input_image is None and i.explanation is None for i in plain)
