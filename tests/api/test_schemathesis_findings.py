"""What the schemathesis run of the OpenAPI document found, each fixed and pinned here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask

from tests.factories import assert_problem, b64, png_bytes

AppFactory = Callable[..., Flask]


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return make_app(rate_limit_enabled=False)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("put", "/v1/models/mnist-cnn/aliases/canary", {"version": 2**64}),
        ("post", "/v1/models/mnist-cnn/versions/99999999999999999999/optimize", {"method": "int8"}),
        ("get", "/v1/jobs/00000000-0000-0000-0000-000000000000/results?after=99999999999999999999", None),
    ],
    ids=["alias-version", "path-version", "results-after"],
)
def test_integers_past_the_database_range_are_422_not_500(app: Flask, method: str, path: str, body: Any) -> None:
    """A version or index too large for the database column is a 422 validation problem, not a 500."""
    resp = getattr(app.test_client(), method)(path, json=body)
    assert_problem(resp, 422, "validation-error")


@pytest.mark.parametrize("seed", ["1", True, 1.5])
def test_json_numbers_are_numbers(app: Flask, seed: Any) -> None:
    """A string or a boolean where the document says integer is refused (pydantic's lax mode took "1" and true)."""
    resp = app.test_client().post("/v1/models/mnist-cnn/trainings", json={"epochs": 1, "seed": seed})
    assert_problem(resp, 422, "validation-error")


def test_whole_floats_are_integers(app: Flask) -> None:
    """5.0 is an integer in JSON Schema, so it is accepted where the document says integer."""
    client = app.test_client()
    assert client.post("/v1/models/mnist-cnn/trainings", json={"epochs": 1.0, "seed": 3.0}).status_code == 202
    assert client.put("/v1/models/mnist-cnn/aliases/canary", json={"version": 1.0}).status_code == 200
    resp = client.post("/v1/jobs", json={"images": [{"data": b64(png_bytes())}], "top_k": 2.0})
    assert resp.status_code == 202 and resp.get_json()["top_k"] == 2
    assert_problem(
        client.post("/v1/jobs", json={"images": [{"data": b64(png_bytes())}], "top_k": "2"}), 422, "validation-error"
    )


@pytest.mark.parametrize("param", ["job_id", "endpoint_id"])
def test_an_empty_id_filter_is_refused(app: Flask, param: str) -> None:
    """`?job_id=` is not a UUID (as documented) rather than silently no filter."""
    assert_problem(app.test_client().get(f"/v1/webhooks/deliveries?{param}="), 422, "validation-error")


def test_the_document_says_what_the_code_checks(app: Flask) -> None:
    """Model names and aliases carry their pattern, id filters their uuid format, key scopes their enum, the
    multipart images at least one file, and the secrets of POST answers may be null (in a replay)."""
    spec = app.test_client().get("/openapi.json").get_json()
    params = {
        (p["in"], p["name"]): p["schema"]
        for item in spec["paths"].values()
        for op in item.values()
        if isinstance(op, dict)
        for p in op.get("parameters", [])
    }
    assert params[("path", "name")]["pattern"] == "^[a-z0-9][a-z0-9._-]{0,99}$"
    assert params[("path", "alias")]["pattern"] == "^[a-z0-9][a-z0-9_-]{0,59}$"
    assert params[("query", "endpoint_id")]["format"] == params[("query", "job_id")]["format"] == "uuid"
    schemas = spec["components"]["schemas"]
    assert sorted(schemas["KeyCreate"]["properties"]["scopes"]["items"]["enum"]) == ["admin", "jobs", "models"]
    multipart = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert multipart["properties"]["images"]["minItems"] == 1
    assert schemas["SecretPublic"]["properties"]["secret"]["type"] == ["string", "null"]
    assert schemas["KeyWithSecret"]["properties"]["key"]["type"] == ["string", "null"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("post", "/v1/models/U/trainings", {}),
        ("get", "/v1/models/Mnist-CNN", None),
        ("put", "/v1/models/mnist-cnn/aliases/Canary", {"version": 1}),
        ("post", "/v1/models/%20u/trainings", {}),
    ],
    ids=["training-uppercase", "model-uppercase", "alias-uppercase", "leading-space"],
)
def test_path_names_follow_their_documented_pattern(app: Flask, method: str, path: str, body: Any) -> None:
    """A model or alias name in the path that breaks the documented pattern is refused (the stateful phase found
    POST /v1/models/U/trainings accepted, lowercased, with 202), and no job is created."""
    from shared.db.models import Job
    from tests.factories import db_session

    resp = getattr(app.test_client(), method)(path, json=body)
    assert_problem(resp, 422, "validation-error")
    with db_session(app) as session:
        assert session.query(Job).count() == 0
