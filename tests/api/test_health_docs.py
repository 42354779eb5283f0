"""Probes, the OpenAPI document, the docs page, and problem+json for unknown routes and methods."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from jsonschema import Draft202012Validator

from shared.inputs.imaging import WARNINGS
from shared.runtime.embedded import EmbeddedRedis, free_port
from tests.factories import assert_problem

AppFactory = Callable[..., Flask]
METHODS = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}


# --- probes -----------------------------------------------------------------------------------------------


def test_healthz(app: Flask) -> None:
    """/healthz answers 200 while the process serves requests."""
    resp = app.test_client().get("/healthz")
    assert resp.status_code == 200 and resp.get_json()["status"] == "ok"


@pytest.mark.timeout(15)
def test_readyz_reports_unreachable_redis(make_app: AppFactory) -> None:
    """With Redis down, /readyz answers 503 within seconds: database ok, Redis in error."""
    app = make_app(real_celery=True, redis_url=f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    resp = app.test_client().get("/readyz")
    assert time.monotonic() - started < 5
    assert resp.status_code == 503
    body = resp.get_json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"] == "ok"
    assert body["checks"]["redis"].startswith("error")


@pytest.mark.timeout(15)
def test_readyz_ok_with_database_and_redis(make_app: AppFactory, tmp_path: Path) -> None:
    """/readyz answers 200 when both the database and Redis answer."""
    with EmbeddedRedis(tmp_path / "redis", free_port(), appendonly=False) as server:
        app = make_app(real_celery=True, redis_url=server.url)
        resp = app.test_client().get("/readyz")
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


# --- OpenAPI ----------------------------------------------------------------------------------------------


@pytest.fixture
def spec(app: Flask) -> dict[str, Any]:
    resp = app.test_client().get("/openapi.json")
    assert resp.status_code == 200 and resp.mimetype == "application/json"
    body: dict[str, Any] = resp.get_json()
    return body


def _resolve(spec: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = spec
    for part in ref[2:].split("/"):
        node = node[part]
    return node


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if isinstance(node.get("$ref"), str) else []) + [
            r for v in node.values() for r in _refs(v)
        ]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _flask_path(rule: str) -> str:
    return rule.replace("<", "{").replace(">", "}")


def test_openapi_is_an_openapi_3_document(spec: dict[str, Any]) -> None:
    """/openapi.json is an OpenAPI 3 document whose every $ref resolves and whose schemas are valid."""
    assert spec["openapi"].startswith("3.")
    assert spec["info"]["title"] == "inferq" and spec["info"]["version"]
    for ref in _refs(spec):
        assert _resolve(spec, ref) is not None
    for name, schema in spec["components"]["schemas"].items():
        try:
            Draft202012Validator.check_schema(schema)
        except Exception as exc:  # pragma: no cover - the message is the point
            pytest.fail(f"components.schemas.{name} is not a valid JSON Schema: {exc}")
    for path, item in spec["paths"].items():
        for method, op in item.items():
            assert method in METHODS, (path, method)
            assert op.get("responses"), (path, method)
            assert op.get("operationId"), (path, method)


def test_openapi_documents_every_route(app: Flask, spec: dict[str, Any]) -> None:
    """Every API route of the app appears in the document with its methods."""
    documented = {(p, m) for p, item in spec["paths"].items() for m in item}
    for rule in app.url_map.iter_rules():
        path = _flask_path(rule.rule)
        if rule.endpoint == "static" or path.startswith("/docs") or path in {"/openapi.json", "/metrics"}:
            continue
        if rule.endpoint.startswith("web."):  # the web app's pages are not API routes
            continue
        for method in (rule.methods or set()) - {"HEAD", "OPTIONS"}:
            assert (path, method.lower()) in documented, f"{method} {path} is not documented"
    for expected in [
        "/healthz",
        "/readyz",
        "/v1/jobs",
        "/v1/jobs/{job_id}",
        "/v1/jobs/{job_id}/results",
        "/v1/jobs/{job_id}/cancel",
        "/v1/models",
        "/v1/models/{name}",
    ]:
        assert expected in spec["paths"]


def test_openapi_submit_accepts_multipart_and_json(spec: dict[str, Any]) -> None:
    """POST /v1/jobs documents both a multipart/form-data and an application/json request body."""
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]
    content = body["content"]
    assert set(content) >= {"multipart/form-data", "application/json"}
    multipart = content["multipart/form-data"]["schema"]
    assert multipart["properties"]["images"]["items"]["format"] == "binary"
    json_schema = _resolve(spec, content["application/json"]["schema"]["$ref"])
    assert "images" in json_schema["properties"] and "images" in json_schema["required"]
    assert "202" in spec["paths"]["/v1/jobs"]["post"]["responses"]


def _error_responses(spec: dict[str, Any]) -> list[tuple[str, str, str, dict[str, Any]]]:
    """(path, method, code, content) of every documented 4xx/5xx response with a body, except /readyz's
    503, which is the Health body (the probe's answer, not a problem)."""
    return [
        (path, method, code, resp["content"])
        for path, item in spec["paths"].items()
        for method, op in item.items()
        for code, resp in op["responses"].items()
        if code[0] in "45" and resp.get("content") and (path, code) != ("/readyz", "503")
    ]


def test_openapi_errors_are_problem_json(spec: dict[str, Any]) -> None:
    """Every documented 4xx/5xx response body is application/problem+json, never application/json."""
    errors = _error_responses(spec)
    assert len(errors) >= 10
    for path, method, code, content in errors:
        assert set(content) == {"application/problem+json"}, (path, method, code)
    submit = spec["paths"]["/v1/jobs"]["post"]["responses"]
    assert {"400", "404", "413", "415", "422"} <= set(submit)


def test_openapi_error_schemas_are_problem(spec: dict[str, Any]) -> None:
    """Every documented error body is the Problem schema, which is what the API actually sends."""
    wrong = [
        (path, method, code)
        for path, method, code, content in _error_responses(spec)
        if content["application/problem+json"]["schema"] != {"$ref": "#/components/schemas/Problem"}
    ]
    assert wrong == []


def test_openapi_documents_prediction_warnings(spec: dict[str, Any]) -> None:
    """A prediction's `warnings` is a list of strings whose description names every code with its meaning; label,
    confidence and top_k say they are null when there is nothing to read."""
    fields = spec["components"]["schemas"]["PredictionPublic"]["properties"]
    warnings = fields["warnings"]
    assert warnings["type"] == "array" and warnings["items"] == {"type": "string"}
    assert all(f"`{code}`: {meaning}" in warnings["description"] for code, meaning in WARNINGS.items())
    assert {"no-ink", "no-digit", "low-contrast", "several-digits", "low-confidence"} <= set(WARNINGS)
    for name in ("label", "confidence", "top_k"):
        assert "nothing to read" in fields[name]["description"], name


def test_openapi_readyz_503_media_type(spec: dict[str, Any]) -> None:
    """/readyz's 503 is documented with the media type it is sent with (application/json, a Health body)."""
    assert set(spec["paths"]["/readyz"]["get"]["responses"]["503"]["content"]) == {"application/json"}


def test_problem_bodies_match_the_documented_schema(app: Flask, spec: dict[str, Any]) -> None:
    """Real error responses validate against the documented Problem schema."""
    schema = {**spec["components"]["schemas"]["Problem"], "components": spec["components"]}
    validator = Draft202012Validator(schema)
    client = app.test_client()
    responses = [
        client.get("/v1/jobs/00000000-0000-0000-0000-000000000000"),
        client.get("/v1/jobs?status=bogus"),
        client.post("/v1/jobs", data="x", content_type="text/plain"),
        client.post("/v1/jobs", json={"images": [{"data": "!!"}]}),
        client.get("/nope"),
        client.delete("/healthz"),
    ]
    for resp in responses:
        assert resp.mimetype == "application/problem+json"
        errors = [e.message for e in validator.iter_errors(resp.get_json(force=True))]
        assert errors == [], (resp.request.path, errors)


def test_docs_page(app: Flask) -> None:
    """The Swagger UI answers 200 with HTML."""
    client = app.test_client()
    resp = client.get("/docs/", follow_redirects=True)
    assert resp.status_code == 200 and resp.mimetype == "text/html"
    swagger = client.get("/docs/swagger", follow_redirects=True)
    assert swagger.status_code == 200 and b"swagger" in swagger.data.lower()


# --- unknown routes and methods -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/nope", "/v1", "/v1/jobz", "/v1/models/mnist-cnn/versions/1"])
def test_unknown_route_is_problem_json(app: Flask, path: str) -> None:
    """An unknown route answers 404 as problem+json."""
    body = assert_problem(app.test_client().get(path), 404, "not-found")
    assert body["instance"] == path


WRONG_METHODS = [
    ("delete", "/healthz"),
    ("put", "/v1/jobs"),
    ("post", "/v1/models"),
    ("get", "/v1/jobs/00000000-0000-0000-0000-000000000000/cancel"),
]


@pytest.mark.parametrize(("method", "path"), WRONG_METHODS)
def test_wrong_method_is_problem_json(app: Flask, method: str, path: str) -> None:
    """A known route with the wrong method answers 405 as problem+json with an Allow header."""
    resp = getattr(app.test_client(), method)(path)
    assert_problem(resp, 405, "method-not-allowed")
    assert resp.headers.get("Allow")


def _component(spec: dict[str, Any], name: str) -> Draft202012Validator:
    """A validator for one component schema, its $refs resolved against the whole document."""
    return Draft202012Validator({**spec["components"]["schemas"][name], "components": spec["components"]})


def test_openapi_states_the_limits_that_are_settings(make_app: AppFactory) -> None:
    """The maxima a client must respect come from this deployment's settings, not from constants."""
    spec = make_app(max_top_k=7, train_max_epochs=9, train_max_batch_size=33).test_client().get("/openapi.json").json
    schemas = spec["components"]["schemas"]
    assert {"type": "integer", "minimum": 1, "maximum": 7} in schemas["JobCreate"]["properties"]["top_k"]["anyOf"]
    multipart = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert multipart["properties"]["top_k"]["maximum"] == 7
    training = schemas["TrainingCreate"]["properties"]
    assert (training["epochs"]["maximum"], training["batch_size"]["maximum"]) == (9, 33)


@pytest.mark.parametrize(
    ("component", "body", "valid"),
    [
        ("EndpointCreate", {"url": "https://hooks.example.com/x"}, True),
        ("EndpointCreate", {"url": ""}, False),
        ("EndpointCreate", {"url": "ftp://hooks.example.com/x"}, False),
        ("JobCreate", {"images": [{"data": "iVBORw0KGgo="}]}, True),
        ("JobCreate", {"images": [{"data": ""}]}, False),
        ("JobCreate", {"images": [{"data": "not base64!"}]}, False),
        ("JobCreate", {"images": [{"data": "iVBORw0KGgo="}], "webhook_events_filter": ["completed"]}, False),
        ("JobCreate", {"images": [{"data": "iVBORw0KGgo="}], "webhook_events_filter": ["done"]}, False),
        ("TrainingCreate", {"webhook": "https://h.example.com/", "webhook_events_filter": "start, completed"}, True),
        ("TrainingCreate", {"webhook": "", "webhook_events_filter": ""}, True),
        ("TrainingCreate", {"webhook_events_filter": "start"}, False),
        ("EvaluateCreate", {"corruptions": ["photo", "lowres-8"]}, True),
        ("EvaluateCreate", {"corruptions": ["sepia"]}, False),
    ],
)
def test_openapi_says_what_the_api_refuses(app: Flask, component: str, body: dict[str, Any], valid: bool) -> None:
    """Bodies the document allows pass its schema, and those the API refuses for a reason a schema can state
    (an empty or non-http(s) URL, non-base64 data, unknown events or corruptions, an events filter without a
    webhook) fail it: a schema-driven client finds out before sending (schemathesis checks the live API)."""
    spec = app.test_client().get("/openapi.json").json
    assert _component(spec, component).is_valid(body) is valid
