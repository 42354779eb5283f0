"""/v1/models: models with their versions, aliases and metrics."""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask

from shared.db.engine import session_scope
from tests.factories import add_model_version, assert_problem, services_of

AppFactory = Callable[..., Flask]


def _registry(app: Flask) -> None:
    """mnist-cnn:1 (seeded, production), mnist-cnn:2 (canary), and tiny-mlp:1 (production)."""
    with session_scope(services_of(app).sessions) as s:
        add_model_version(s, aliases=("canary",), format="tflite", variant="int8", metrics={"accuracy": 0.985})
        add_model_version(s, name="tiny-mlp", metrics={"accuracy": 0.97})


def test_list_models(app: Flask) -> None:
    """GET /v1/models lists every model with its aliases and versions (newest first), each with metrics."""
    _registry(app)
    resp = app.test_client().get("/v1/models")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    models = {m["name"]: m for m in resp.get_json()["data"]}
    assert set(models) == {"mnist-cnn", "tiny-mlp"}
    mnist = models["mnist-cnn"]
    assert mnist["aliases"] == {"production": 1, "canary": 2}
    assert [v["version"] for v in mnist["versions"]] == [2, 1]
    v2, v1 = mnist["versions"]
    assert (v2["ref"], v2["format"], v2["variant"]) == ("mnist-cnn:2", "tflite", "int8")
    assert v2["aliases"] == ["canary"]
    assert v2["metrics"] == {"accuracy": 0.985}
    assert v1["metrics"] == {"accuracy": 0.991, "loss": 0.03} and v1["aliases"] == ["production"]
    assert v1["labels"] == [str(i) for i in range(10)] and v1["input_spec"]["shape"] == [28, 28, 1]
    assert v1["created_at"] and v1["size_bytes"] == 1234
    assert models["tiny-mlp"]["aliases"] == {"production": 1}


def test_empty_registry(make_app: AppFactory) -> None:
    """With no model registered the list is empty, not an error."""
    app = make_app(seed=False)
    resp = app.test_client().get("/v1/models")
    assert resp.status_code == 200 and resp.get_json() == {"data": []}


def test_get_one_model(app: Flask) -> None:
    """GET /v1/models/{name} returns that model only."""
    _registry(app)
    body = app.test_client().get("/v1/models/mnist-cnn").get_json()
    assert body["name"] == "mnist-cnn"
    assert [v["ref"] for v in body["versions"]] == ["mnist-cnn:2", "mnist-cnn:1"]


def test_get_unknown_model_is_404(app: Flask) -> None:
    """GET /v1/models/{name} for an unknown name answers 404 model-not-found."""
    body = assert_problem(app.test_client().get("/v1/models/no-such-model"), 404, "model-not-found")
    assert body["instance"] == "/v1/models/no-such-model"
