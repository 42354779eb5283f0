"""POST /v1/models/{name}/trainings on uploaded datasets: accepted datasets, refusals, imbalance options."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select, update

from shared.db.models import Dataset, Job
from shared.runtime.celery_app import TRAIN_TASK
from tests.api.conftest import AppFactory
from tests.dataset_factories import npy_bytes, npz_bytes
from tests.factories import SentTasks, assert_problem, db_session, services_of
from tests.training_factories import class_folder_zip, npz_with_y, real_digits

SHAPES = {0: "circle", 1: "stroke", 7: "seven"}


def dataset_id(client: FlaskClient, data: bytes, filename: str) -> str:
    """Upload through POST /v1/datasets and return the new dataset's id."""
    resp = client.post(f"/v1/datasets?filename={filename}", data=data, content_type="application/octet-stream")
    assert resp.status_code == 201, resp.get_data(as_text=True)
    return str(resp.get_json()["id"])


def train(client: FlaskClient, **body: Any) -> Any:
    """POST a training of the model 'shapes'."""
    return client.post("/v1/models/shapes/trainings", json=body)


def jobs(app: Flask) -> int:
    """Jobs in the database."""
    with db_session(app) as s:
        return s.scalar(select(func.count()).select_from(Job)) or 0


def test_a_labelled_upload_is_queued_with_its_id_and_imbalance(app: Flask, sent: SentTasks) -> None:
    """A class-folder zip trains: 202, the job's params hold the dataset id and imbalance, one message is sent."""
    client = app.test_client()
    ds = dataset_id(client, class_folder_zip(SHAPES, 5), "shapes.zip")
    resp = train(client, dataset=ds.upper(), imbalance="oversample", epochs=2)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    [(name, args, _)] = sent.sent
    assert (name, args) == (TRAIN_TASK, [resp.get_json()["id"]])
    with db_session(app) as s:
        row = s.get(Job, uuid.UUID(resp.get_json()["id"]))
        assert row is not None and row.tenant_id == "default"
        assert (row.params["dataset"], row.params["imbalance"], row.params["class_weight"]) == (ds, "oversample", None)


def test_class_weight_and_imbalance_are_one_option(app: Flask) -> None:
    """class_weight='balanced' is imbalance='class_weight' and vice versa; combined with oversample it is 422."""
    client = app.test_client()
    for body in ({"class_weight": "balanced"}, {"imbalance": "class_weight"}):
        job_id = train(client, **body).get_json()["id"]
        with db_session(app) as s:
            row = s.get(Job, uuid.UUID(job_id))
            assert row is not None and (row.params["imbalance"], row.params["class_weight"]) == (
                "class_weight",
                "balanced",
            )
    bad = train(client, class_weight="balanced", imbalance="oversample")
    assert "exclude each other" in assert_problem(bad, 422, "validation-error")["errors"][0]["message"]
    assert_problem(train(client, imbalance="smote"), 422, "validation-error")


def test_untrainable_datasets_are_refused_with_the_reason(app: Flask) -> None:
    """No labels, a single class, too few images, arrays of the wrong size or files that are not images: 422
    dataset-not-trainable naming the problem; nothing is queued."""
    client = app.test_client()
    x, y = real_digits({3: 8, 5: 8})
    cases = {
        "has no labels": dataset_id(client, npy_bytes(x), "x.npy"),
        "single class": dataset_id(client, npz_with_y(x, np.full(len(x), 3)), "one.npz"),
        "needs 10 or more": dataset_id(client, npz_with_y(x[:6], np.array([3, 5] * 3)), "few.npz"),
        "holds 32x32 images": dataset_id(
            client, npz_bytes(x=np.zeros((12, 32, 32), np.uint8), y=np.arange(12) % 2), "big.npz"
        ),
        "not an image the model can take": dataset_id(
            client, class_folder_zip(SHAPES, 5, extra=[("circle/0000a.txt", b"words")]), "mixed.zip"
        ),
    }
    for reason, ds in cases.items():
        body = assert_problem(train(client, dataset=ds), 422, "dataset-not-trainable")
        assert reason in body["detail"], body
    assert jobs(app) == 0 and services_of(app).celery.sent == []  # type: ignore[attr-defined]


def test_unknown_other_tenants_and_oversized_datasets(make_app: AppFactory) -> None:
    """An unknown id or another tenant's dataset is 404 dataset-not-found; more images than INFERQ_TRAIN_MAX_ITEMS
    is 413 dataset-too-large; a dataset that is neither 'mnist' nor a UUID is 422."""
    app = make_app(train_max_items=12)
    client = app.test_client()
    small = dataset_id(client, class_folder_zip(SHAPES, 4), "small.zip")
    large = dataset_id(client, class_folder_zip(SHAPES, 5), "large.zip")
    assert_problem(train(client, dataset=str(uuid.uuid4())), 404, "dataset-not-found")
    assert "INFERQ_TRAIN_MAX_ITEMS" in assert_problem(train(client, dataset=large), 413, "dataset-too-large")["detail"]
    assert_problem(train(client, dataset="cifar10"), 422, "validation-error")
    with db_session(app) as s:
        s.execute(update(Dataset).where(Dataset.id == uuid.UUID(small)).values(tenant_id="someone-else"))
        s.commit()
    assert_problem(train(client, dataset=small), 404, "dataset-not-found")
    assert jobs(app) == 0
