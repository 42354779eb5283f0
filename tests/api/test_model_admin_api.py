"""/v1/models/... administration: alias moves, training/optimize/benchmark jobs, and the comparison report."""

from __future__ import annotations

import io
import uuid
from collections.abc import Callable
from typing import Any

from flask import Flask

from shared.db.engine import session_scope
from shared.db.models import Job, ModelVersion
from shared.runtime.celery_app import ROUTES, TRAIN_TASK, TRAINING_QUEUE
from tests.factories import SentTasks, add_model_version, assert_problem, db_session, services_of


def _two_versions(app: Flask) -> None:
    """mnist-cnn:1 (seeded, production) plus mnist-cnn:2 (no alias)."""
    with session_scope(services_of(app).sessions) as s:
        add_model_version(s, aliases=(), metrics={"test_accuracy": 0.98})


def test_put_alias_promotes_and_rolls_back(app: Flask) -> None:
    """PUT /v1/models/{name}/aliases/{alias} moves the alias to the version named in the body, and back."""
    _two_versions(app)
    client = app.test_client()
    resp = client.put("/v1/models/mnist-cnn/aliases/production", json={"version": 2})
    assert resp.status_code == 200 and resp.get_json()["aliases"] == {"production": 2}
    resp = client.put("/v1/models/mnist-cnn/aliases/production", json={"version": 1})
    assert resp.get_json()["aliases"] == {"production": 1}


def test_put_alias_creates_a_new_alias(app: Flask) -> None:
    """An alias that does not exist yet is created (e.g. canary) without touching the others."""
    _two_versions(app)
    body = app.test_client().put("/v1/models/mnist-cnn/aliases/canary", json={"version": 2}).get_json()
    assert body["aliases"] == {"production": 1, "canary": 2}


def test_put_alias_unknown_model_or_version_is_404(app: Flask) -> None:
    """An unknown model or version answers 404 model-not-found and moves nothing."""
    client = app.test_client()
    assert_problem(client.put("/v1/models/nope/aliases/production", json={"version": 1}), 404, "model-not-found")
    assert_problem(client.put("/v1/models/mnist-cnn/aliases/production", json={"version": 9}), 404, "model-not-found")
    assert client.get("/v1/models/mnist-cnn").get_json()["aliases"] == {"production": 1}


def test_put_alias_bad_body_or_alias_is_422(app: Flask) -> None:
    """A missing/non-integer version or an invalid alias name answers 422 validation-error."""
    client = app.test_client()
    assert_problem(client.put("/v1/models/mnist-cnn/aliases/production", json={}), 422, "validation-error")
    assert_problem(
        client.put("/v1/models/mnist-cnn/aliases/production", json={"version": "x"}), 422, "validation-error"
    )
    assert_problem(client.put("/v1/models/mnist-cnn/aliases/Bad!Alias", json={"version": 1}), 422, "validation-error")


def test_training_is_queued_on_the_training_queue(app: Flask, sent: SentTasks) -> None:
    """POST trainings answers 202 with a queued train job holding every hyperparameter, and publishes its id."""
    body = {"epochs": 2, "optimizer": "sgd", "class_weight": "balanced", "learning_rate": 0.01, "limit": 300}
    resp = app.test_client().post("/v1/models/digits/trainings", json=body)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    job = resp.get_json()
    assert (job["kind"], job["status"], job["model"]) == ("train", "queued", "digits")
    assert resp.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["result"] == {"operation": "train"}
    [(name, args, kw)] = sent.sent
    assert (name, args) == (TRAIN_TASK, [job["id"]]) and ROUTES[TRAIN_TASK]["queue"] == TRAINING_QUEUE
    assert kw["time_limit"] == services_of(app).settings.train_time_limit < services_of(app).settings.visibility_timeout
    with db_session(app) as s:
        row = s.get(Job, uuid.UUID(job["id"]))
        assert row is not None and row.dispatched_at is not None
        assert row.params["operation"] == "train" and row.params["optimizer"] == "sgd"
        assert row.params["epochs"] == 2 and row.params["class_weight"] == "balanced" and row.params["augment"] is True


def test_training_params_are_validated(make_app: Callable[..., Flask]) -> None:
    """Unknown optimizers, unknown fields, and epochs past INFERQ_TRAIN_MAX_EPOCHS answer 422 and queue nothing."""
    app = make_app(train_max_epochs=3)
    client = app.test_client()
    for bad in ({"optimizer": "lbfgs"}, {"epochs": 4}, {"colour": "red"}, {"validation_split": 1.5}):
        assert_problem(client.post("/v1/models/digits/trainings", json=bad), 422, "validation-error")
    assert_problem(client.post("/v1/models/mnist-cnn:1/trainings", json={}), 422, "validation-error")
    assert services_of(app).celery.sent == []  # type: ignore[attr-defined]


def test_optimize_is_queued_for_a_keras_version(app: Flask, sent: SentTasks) -> None:
    """POST .../versions/{v}/optimize answers 202 with a train job whose params name the method."""
    resp = app.test_client().post("/v1/models/mnist-cnn/versions/1/optimize", json={"method": "int8"})
    assert resp.status_code == 202
    job = resp.get_json()
    assert job["model"] == "mnist-cnn:1" and sent.sent[0][0] == TRAIN_TASK
    with db_session(app) as s:
        row = s.get(Job, uuid.UUID(job["id"]))
        assert row is not None and row.params == {"operation": "optimize", "method": "int8"}


def test_optimize_refuses_bad_methods_unknown_versions_and_tflite(app: Flask) -> None:
    """An unknown method or a non-numeric version is 422, an unknown version 404, a tflite source 409."""
    with session_scope(services_of(app).sessions) as s:
        add_model_version(s, aliases=(), format="tflite", variant="int8")
    client = app.test_client()
    assert_problem(
        client.post("/v1/models/mnist-cnn/versions/1/optimize", json={"method": "int4"}), 422, "validation-error"
    )
    assert_problem(
        client.post("/v1/models/mnist-cnn/versions/x/optimize", json={"method": "int8"}), 422, "validation-error"
    )
    assert_problem(
        client.post("/v1/models/mnist-cnn/versions/7/optimize", json={"method": "int8"}), 404, "model-not-found"
    )
    assert_problem(
        client.post("/v1/models/mnist-cnn/versions/2/optimize", json={"method": "int8"}), 409, "model-not-optimizable"
    )


def test_benchmark_is_queued(app: Flask, sent: SentTasks) -> None:
    """POST .../versions/{v}/benchmark answers 202 with a benchmark job for that version."""
    resp = app.test_client().post("/v1/models/mnist-cnn/versions/1/benchmark")
    assert resp.status_code == 202 and resp.get_json()["model"] == "mnist-cnn:1"
    assert sent.sent[0][0] == TRAIN_TASK


def test_report_lists_every_version_with_size_accuracy_and_speed(app: Flask) -> None:
    """GET /v1/models/{name}/report has one row per version, oldest first, with parent and measured speed."""
    with session_scope(services_of(app).sessions) as s:
        parent = s.query(ModelVersion).filter_by(name="mnist-cnn", version=1).one()
        parent.metrics = {"test_accuracy": 0.99, "benchmark": {"latency_ms_batch1": 1.5, "throughput_batch64": 9000.0}}
        add_model_version(
            s,
            aliases=(),
            format="tflite",
            variant="int8",
            parent_id=parent.id,
            size_bytes=100,
            metrics={"test_accuracy": 0.988},
        )
    body = app.test_client().get("/v1/models/mnist-cnn/report").get_json()
    assert body["name"] == "mnist-cnn"
    v1, v2 = body["rows"]
    assert (v1["ref"], v1["latency_ms_batch1"], v1["throughput_batch64"], v1["aliases"]) == (
        "mnist-cnn:1",
        1.5,
        9000.0,
        ["production"],
    )
    assert (v2["ref"], v2["variant"], v2["parent"], v2["size_bytes"]) == ("mnist-cnn:2", "int8", "mnist-cnn:1", 100)
    assert v2["test_accuracy"] == 0.988 and v2["latency_ms_batch1"] is None
    assert_problem(app.test_client().get("/v1/models/nope/report"), 404, "model-not-found")


def test_job_shows_its_result(app: Flask) -> None:
    """GET /v1/jobs/{id} includes the job's result (e.g. a training job's live history)."""
    resp = app.test_client().post("/v1/models/digits/trainings", json={"epochs": 1})
    job_id = resp.get_json()["id"]
    with session_scope(services_of(app).sessions) as s:
        row = s.get(Job, uuid.UUID(job_id))
        assert row is not None
        row.result = {"operation": "train", "history": [{"epoch": 1.0, "loss": 0.5}]}
    body = app.test_client().get(f"/v1/jobs/{job_id}").get_json()
    assert body["result"]["history"] == [{"epoch": 1.0, "loss": 0.5}]


def _upload(app: Flask, data: bytes, filename: str, **form: str) -> Any:
    """POST a model file to /v1/models/byom/uploads as multipart."""
    body: dict[str, Any] = {"file": (io.BytesIO(data), filename), **form}
    return app.test_client().post("/v1/models/byom/uploads", data=body, content_type="multipart/form-data")


def test_upload_stores_the_file_and_queues_an_import(app: Flask, sent: SentTasks) -> None:
    """A .keras upload with labels answers 202, stores the bytes as a blob and queues an import job."""
    resp = _upload(app, b"PK-not-really", "mine.keras", labels='["a", "b"]', input_spec='{"shape": [28, 28, 1]}')
    assert resp.status_code == 202, resp.get_data(as_text=True)
    job = resp.get_json()
    assert job["model"] == "byom" and sent.sent[0][0] == TRAIN_TASK
    with db_session(app) as s:
        row = s.get(Job, uuid.UUID(job["id"]))
        assert row is not None
        assert row.params["operation"] == "import" and row.params["labels"] == ["a", "b"]
        assert row.params["input_spec"] == {"shape": [28, 28, 1]} and row.params["filename"] == "mine.keras"
        assert services_of(app).store.get(row.params["blob_key"]) == b"PK-not-really"


def test_upload_refusals(make_app: Callable[..., Flask]) -> None:
    """No file, a wrong suffix or bad labels are 422; a file over INFERQ_MODEL_UPLOAD_MAX_BYTES is 413."""
    app = make_app(model_upload_max_bytes=2048)
    client = app.test_client()
    no_file = client.post("/v1/models/byom/uploads", data={"labels": "[]"}, content_type="multipart/form-data")
    assert_problem(no_file, 422, "validation-error")
    assert_problem(_upload(app, b"x", "model.pkl", labels='["a"]'), 422, "validation-error")
    assert_problem(_upload(app, b"x", "model.keras", labels="a,b"), 422, "validation-error")
    assert_problem(_upload(app, b"x", "model.keras"), 422, "validation-error")
    assert_problem(_upload(app, b"x" * 4096, "model.tflite", labels='["a"]'), 413, "payload-too-large")
    assert services_of(app).celery.sent == []  # type: ignore[attr-defined]


def test_export_is_queued_for_keras_versions_only(app: Flask, sent: SentTasks) -> None:
    """POST .../versions/{v}/export answers 202 for a keras version and 409 for a tflite one."""
    with session_scope(services_of(app).sessions) as s:
        add_model_version(s, aliases=(), format="tflite", variant="int8")
    client = app.test_client()
    resp = client.post("/v1/models/mnist-cnn/versions/1/export", json={"format": "tf-serving"})
    assert resp.status_code == 202 and sent.sent[0][0] == TRAIN_TASK
    export = client.post("/v1/models/mnist-cnn/versions/2/export", json={"format": "tf-serving"})
    assert_problem(export, 409, "model-not-optimizable")


def test_export_takes_onnx_and_refuses_unknown_formats(app: Flask, sent: SentTasks) -> None:
    """{"format": "onnx"} is queued (202) with the format in the job's params; an unknown format is 422."""
    client = app.test_client()
    resp = client.post("/v1/models/mnist-cnn/versions/1/export", json={"format": "onnx"})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    assert len(sent.sent) == 1
    with db_session(app) as s:
        row = s.get(Job, uuid.UUID(resp.get_json()["id"]))
        assert row is not None and row.params["format"] == "onnx" and row.params["operation"] == "export"
    bad = client.post("/v1/models/mnist-cnn/versions/1/export", json={"format": "tflite"})
    assert_problem(bad, 422, "validation-error")
    assert len(sent.sent) == 1


def test_training_takes_a_webhook(make_app: Callable[..., Flask]) -> None:
    """A training job accepts `webhook` like any job: stored as the job's webhook, not as a hyperparameter."""
    app = make_app(webhook_allow_cidrs="127.0.0.0/8")
    body = {"epochs": 1, "webhook": "http://127.0.0.1:9/hook", "webhook_events_filter": ["start", "completed"]}
    resp = app.test_client().post("/v1/models/digits/trainings", json=body)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    with db_session(app) as s:
        row = s.get(Job, uuid.UUID(resp.get_json()["id"]))
        assert row is not None and row.params["webhook"] == {
            "url": "http://127.0.0.1:9/hook",
            "events": ["start", "completed"],
        }
        assert "webhook_events_filter" not in row.params


def test_evaluation_is_queued_and_unknown_corruptions_are_refused(app: Flask, sent: SentTasks) -> None:
    """POST .../versions/{v}/evaluate answers 202 with an evaluate job; an unknown corruption is a 422 and no job."""
    client = app.test_client()
    resp = client.post("/v1/models/mnist-cnn/versions/1/evaluate", json={"corruptions": ["photo", "lowres-8"]})
    assert resp.status_code == 202 and resp.get_json()["model"] == "mnist-cnn:1"
    assert sent.sent[0][0] == TRAIN_TASK
    with session_scope(services_of(app).sessions) as s:
        job = s.get(Job, uuid.UUID(resp.get_json()["id"]))
        assert job is not None
        assert job.params["operation"] == "evaluate" and job.params["corruptions"] == ["photo", "lowres-8"]
    assert_problem(
        client.post("/v1/models/mnist-cnn/versions/1/evaluate", json={"corruptions": ["sepia"]}),
        422,
        "validation-error",
    )
    assert len(sent.sent) == 1


def test_report_shows_real_world_accuracy_once_evaluated(app: Flask) -> None:
    """The report's realworld_accuracy is the evaluation's overall accuracy, None before any evaluation."""
    assert app.test_client().get("/v1/models/mnist-cnn/report").get_json()["rows"][0]["realworld_accuracy"] is None
    with session_scope(services_of(app).sessions) as s:
        mv = s.query(ModelVersion).filter_by(name="mnist-cnn", version=1).one()
        mv.metrics = {**mv.metrics, "realworld": {"overall": 0.971, "corruptions": {}}}
    row = app.test_client().get("/v1/models/mnist-cnn/report").get_json()["rows"][0]
    assert row["realworld_accuracy"] == 0.971
