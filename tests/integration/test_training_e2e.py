"""Training on an uploaded dataset on the real stack: zip upload -> training queue -> worker -> classify with it."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

import pytest

from inferq.samples import as_user_photo
from shared.config.settings import Settings
from tests.factories import post_files
from tests.integration.conftest import wait_until
from tests.training_factories import class_folder_zip, mnist_arrays

pytestmark = [pytest.mark.integration, pytest.mark.slow]
SHAPES = {0: "circle", 1: "stroke", 7: "seven"}


def finished(api_client: Any, job_id: str) -> Callable[[], dict[str, Any] | None]:
    """A predicate: the job once it is terminal, else None."""

    def check() -> dict[str, Any] | None:
        job: dict[str, Any] = api_client.get(f"/v1/jobs/{job_id}").get_json()
        return job if job["status"] in {"succeeded", "failed", "canceled"} else None

    return check


def user_photo_of_a_seven() -> bytes:
    """A '7' from the sample drawn large, off-centre and dark on white, as a user would photograph it."""
    x, y = mnist_arrays()
    buf = io.BytesIO()
    as_user_photo(x[y == 7][-1]).save(buf, format="PNG")
    return buf.getvalue()


def test_a_model_trained_on_an_uploaded_zip_classifies_with_its_labels(
    stack_settings: Settings, start_worker: Callable[..., Any], api_client: Any
) -> None:
    """A 3-class zip of real digits (folders circle/stroke/seven) trains 2 epochs on a worker through the API; the
    new version carries the folder names as labels, its test split and dataset, and classifying with it answers
    one of those labels."""
    resp = api_client.post(
        "/v1/datasets?filename=shapes.zip", data=class_folder_zip(SHAPES, 100), content_type="application/zip"
    )
    assert resp.status_code == 201, resp.get_data(as_text=True)
    dataset = resp.get_json()["id"]
    t0 = time.monotonic()
    start_worker("--lanes", "interactive,bulk,training,ops")
    t1 = time.monotonic()
    body = {"dataset": dataset, "epochs": 2, "imbalance": "oversample", "augment": False, "seed": 1}
    resp = api_client.post("/v1/models/shapes/trainings", json=body)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    job = wait_until(finished(api_client, resp.get_json()["id"]), 180, "the training job to finish", interval=0.5)
    assert job["status"] == "succeeded", job.get("error")
    assert job["model_version"] == "shapes:1" and len(job["result"]["history"]) == 2
    t2 = time.monotonic()

    [version] = api_client.get("/v1/models/shapes").get_json()["versions"]
    labels = version["labels"]
    assert labels == ["circle", "seven", "stroke"]
    assert version["metrics"]["test_split"]["dataset_id"] == dataset
    assert version["metrics"]["test_split"]["test_size"] == 60 and version["metrics"]["test_accuracy"] > 0.5

    resp = post_files(api_client, [user_photo_of_a_seven()], model="shapes:1", top_k="3")
    assert resp.status_code == 202, resp.get_data(as_text=True)
    done = wait_until(finished(api_client, resp.get_json()["id"]), 60, "the classify job to finish")
    assert done["status"] == "succeeded" and done["model_version"] == "shapes:1"
    [prediction] = done["predictions"]
    assert prediction["label"] in labels and {t["label"] for t in prediction["top_k"]} == set(labels)
    print(
        f"\nworker ready {t1 - t0:.1f}s, training job {t2 - t1:.1f}s (fit {job['result']['train_seconds']:.1f}s), "
        f"classify {time.monotonic() - t2:.1f}s; shapes:1 test accuracy {version['metrics']['test_accuracy']:.3f}; "
        f"a user's 7 -> {prediction['label']}"
    )
