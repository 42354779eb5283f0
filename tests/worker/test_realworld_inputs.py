"""Pictures as users send them: every corruption of the evaluation suite still yields the digit, centred, and
pictures with no digit are refused a label. Fast: Pillow, numpy and scipy only, no model."""

from __future__ import annotations

import numpy as np
import pytest

from shared.inputs.imaging import NO_DIGIT, NO_INK, prepare
from shared.registry.model_jobs import REALWORLD_CORRUPTIONS
from worker.corruptions import CORRUPTIONS, NON_DIGITS, render
from worker.datasets import load_mnist

LIMIT = 40_000_000
SAMPLES = 6  # fixed held-out test digits per corruption
MIN_MATCH = 0.55  # correlation with the MNIST digit itself; a digit erased or cut apart scores far lower
MIN_MATCH_ROTATED = 0.42  # up to 15 degrees off the upright digit it is compared with


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = load_mnist(seed=0, allow_download=False)
    picks = np.random.default_rng(5).choice(len(d.y_test), SAMPLES, replace=False)
    return d.x_test[picks], d.y_test[picks]


def _match(seen: np.ndarray, digit: np.ndarray) -> float:
    """Correlation of the model's 28x28 input with the MNIST digit, at the best shift of up to 2 pixels."""
    ref = digit.astype(np.float32) / 255
    best = -1.0
    for dy in range(-2, 3):
        for dx in range(-2, 3):
            shifted = np.roll(np.roll(seen, dy, axis=0), dx, axis=1)
            best = max(best, float(np.corrcoef(shifted.ravel(), ref.ravel())[0, 1]))
    return best


def test_the_corruption_list_is_the_one_the_api_documents() -> None:
    """The API's list of corruption names (shared, no worker import) is exactly the suite's."""
    assert tuple(CORRUPTIONS) == REALWORLD_CORRUPTIONS


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_each_corruption_still_shows_the_digit_centred(name: str, digits: tuple[np.ndarray, np.ndarray]) -> None:
    """Under every corruption the 28x28 input holds the digit: readable, ink inside, centre of mass near (14, 14),
    and close to the MNIST digit it was rendered from."""
    rng = np.random.default_rng([99, list(CORRUPTIONS).index(name)])
    for digit in digits[0]:
        prepared = prepare(render(name, digit, rng), max_pixels=LIMIT)
        image = prepared.image
        assert prepared.readable, f"{name}: {prepared.warnings}"
        assert image.shape == (28, 28) and image.dtype == np.float32
        mass = float(image.sum())
        assert mass > 15, f"{name}: almost no ink left ({mass:.1f})"
        ys, xs = np.indices(image.shape)
        centre = (float((ys * image).sum()) / mass, float((xs * image).sum()) / mass)
        assert abs(centre[0] - 14) < 1.5 and abs(centre[1] - 14) < 1.5, f"{name}: centre of mass {centre}"
        assert image[:2].sum() + image[-2:].sum() + image[:, :2].sum() + image[:, -2:].sum() < 0.05 * mass
        floor = MIN_MATCH_ROTATED if name == "rotation" else MIN_MATCH
        assert _match(image, digit) > floor, f"{name}: the digit is not what the model sees"


@pytest.mark.parametrize("kind", list(NON_DIGITS))
def test_pictures_with_no_digit_get_no_reading(kind: str) -> None:
    """Blank pages, noise, speckles and ruled paper are `no-ink` or `no-digit` (the label will be null)."""
    rng = np.random.default_rng([7, list(NON_DIGITS).index(kind)])
    for _ in range(8):
        prepared = prepare(NON_DIGITS[kind](rng), max_pixels=LIMIT)
        assert not prepared.readable
        assert set(prepared.warnings) & {NO_INK, NO_DIGIT}
        assert not prepared.image.any()
