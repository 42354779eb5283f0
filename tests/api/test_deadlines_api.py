"""POST /v1/jobs with a deadline: `deadline_s` in JSON or a form field, or the Inferq-Deadline-S header; bad values
are 422 problems and write nothing."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pytest
from flask import Flask
from flask.testing import FlaskClient

from shared.db.models import utcnow
from tests.factories import assert_nothing_written, assert_problem, b64, png_bytes, post_files

AppFactory = Callable[..., Flask]


def _seconds_left(body: dict[str, str]) -> float:
    return (datetime.fromisoformat(body["deadline_at"]) - utcnow()).total_seconds()


def test_a_deadline_comes_from_json_a_form_field_or_the_header(client: FlaskClient) -> None:
    """deadline_s is counted from the submission; the body's value wins over the header; without either there is
    no deadline."""
    image = {"data": b64(png_bytes())}
    by_json = client.post("/v1/jobs", json={"images": [image], "deadline_s": 30}).get_json()
    by_form = post_files(client, [png_bytes()], deadline_s="2.5").get_json()
    by_header = client.post("/v1/jobs", json={"images": [image]}, headers={"Inferq-Deadline-S": "600"}).get_json()
    both = client.post("/v1/jobs", json={"images": [image], "deadline_s": 5}, headers={"Inferq-Deadline-S": "600"})
    none = client.post("/v1/jobs", json={"images": [image]}).get_json()
    assert 28 < _seconds_left(by_json) <= 30
    assert 0 < _seconds_left(by_form) <= 2.5
    assert 590 < _seconds_left(by_header) <= 600
    assert 0 < _seconds_left(both.get_json()) <= 5
    assert none["deadline_at"] is None and none["counts"]["expired"] == 0


@pytest.mark.parametrize(
    ("json_value", "form_value", "header"),
    [
        (0, None, None),
        (-1, None, None),
        (None, "soon", None),
        (None, "0", None),
        (None, None, "abc"),
        (None, None, "-3"),
        (90000, None, None),
        (None, None, "86401"),
    ],
)
def test_a_bad_deadline_is_422_and_writes_nothing(
    app: Flask, json_value: float | None, form_value: str | None, header: str | None
) -> None:
    """Zero, negative, non-numeric and past INFERQ_MAX_DEADLINE_S (default 86400 s) are refused before anything
    is written."""
    client = app.test_client()
    headers = {"Inferq-Deadline-S": header} if header is not None else {}
    if form_value is not None:
        resp = post_files(client, [png_bytes()], deadline_s=form_value)
    else:
        body: dict[str, object] = {"images": [{"data": b64(png_bytes())}]}
        if json_value is not None:
            body["deadline_s"] = json_value
        resp = client.post("/v1/jobs", json=body, headers=headers)
    assert_problem(resp, 422, "validation-error")
    assert_nothing_written(app)


def test_the_largest_deadline_is_a_setting_and_the_openapi_document_says_so(make_app: AppFactory) -> None:
    """INFERQ_MAX_DEADLINE_S bounds deadline_s in the API and in the schema of both request bodies."""
    app = make_app(max_deadline_s=10)
    client = app.test_client()
    resp = client.post("/v1/jobs", json={"images": [{"data": b64(png_bytes())}], "deadline_s": 11})
    assert "INFERQ_MAX_DEADLINE_S" in assert_problem(resp, 422, "validation-error")["detail"]
    spec = client.get("/openapi.json").get_json()
    (number,) = [
        o
        for o in spec["components"]["schemas"]["JobCreate"]["properties"]["deadline_s"]["anyOf"]
        if o.get("type") == "number"
    ]
    assert number == {"type": "number", "exclusiveMinimum": 0, "maximum": 10}
    form = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["deadline_s"]["maximum"] == 10
    (header,) = [p for p in spec["paths"]["/v1/jobs"]["post"]["parameters"] if p["name"] == "Inferq-Deadline-S"]
    assert header["in"] == "header" and header["schema"] == {"type": "number", "exclusiveMinimum": 0, "maximum": 10}


@pytest.mark.parametrize("header", ["abc", "0", "86401"])
def test_a_bad_header_is_refused_even_when_the_body_has_a_deadline(app: Flask, header: str) -> None:
    """The body's deadline_s wins, but a malformed or too large header is still a 422 (what the schema says)."""
    body = {"images": [{"data": b64(png_bytes())}], "deadline_s": 5}
    resp = app.test_client().post("/v1/jobs", json=body, headers={"Inferq-Deadline-S": header})
    assert_problem(resp, 422, "validation-error")
    assert_nothing_written(app)
