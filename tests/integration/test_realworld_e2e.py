"""Pictures as users send them, through the whole stack: upload -> real worker -> the served default model.

The default model of the session (trained by `inferq train-default`, with realistic augmentation) reads a fixed
set of held-out test digits rendered as crops, low-resolution scans, photos, JPEGs, ruled paper, ... and gives no
label to blank pages and noise."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest

from worker.corruptions import NON_DIGITS, REALWORLD, render
from worker.datasets import load_mnist

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PER_CORRUPTION = 3  # fixed held-out test digits per corruption: 48 pictures
FLOOR = 0.85  # the session's model trains for only 2 epochs; the full default model does far better (docs/models.md)


def _realistic_set() -> tuple[list[bytes], list[str], list[bytes]]:
    digits = load_mnist(seed=0, allow_download=False)
    rng = np.random.default_rng(2026)
    pictures, truth = [], []
    for i, name in enumerate(REALWORLD):
        for j in range(PER_CORRUPTION):
            k = (i * PER_CORRUPTION + j) * 7 % len(digits.y_test)
            pictures.append(render(name, digits.x_test[k], rng))
            truth.append(str(int(digits.y_test[k])))
    blanks = [make(rng) for make in NON_DIGITS.values()]
    return pictures, truth, blanks


def _classify(client: Any, images: list[bytes]) -> list[dict[str, Any]]:
    files = [(io.BytesIO(b), f"picture{i}.png") for i, b in enumerate(images)]
    resp = client.post("/v1/jobs", data={"images": files}, content_type="multipart/form-data")
    assert resp.status_code == 202, resp.json
    job = client.get(f"/v1/jobs/{resp.json['id']}?wait=120").json
    assert job["status"] == "succeeded", job
    return list(job["predictions"])


def test_realistic_pictures_are_read_and_blank_ones_get_no_label(api_client: Any, start_worker: Any) -> None:
    """A fixed realistic set is read at or above the floor, and no blank or noise picture gets a label."""
    pictures, truth, blanks = _realistic_set()
    start_worker()
    predicted = _classify(api_client, pictures)
    right = sum(p["label"] == t for p, t in zip(predicted, truth, strict=True))
    assert right / len(truth) >= FLOOR, f"{right}/{len(truth)} right"
    for prediction in _classify(api_client, blanks):
        assert prediction["label"] is None, prediction
        assert {"no-ink", "no-digit"} & set(prediction["warnings"]), prediction
