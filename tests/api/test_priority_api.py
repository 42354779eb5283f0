"""POST /v1/jobs with a `priority`: 0 low, 1 normal (the default), 2 high, each published to its own queue of the
interactive lane; out-of-range values are 422 and a tenant's cap is 403, neither writing anything."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.factories import SentTasks, assert_nothing_written, assert_problem, b64, png_bytes, post_files

AppFactory = Callable[..., Flask]
IMAGE = {"data": b64(png_bytes())}


def test_each_priority_is_published_to_its_queue_and_shown_on_the_job(client: FlaskClient, sent: SentTasks) -> None:
    """JSON or a form field; without one the job is normal and goes to the lane's plain queue."""
    high = client.post("/v1/jobs", json={"images": [IMAGE], "priority": 2}).get_json()
    low = post_files(client, [png_bytes()], priority="0").get_json()
    normal = client.post("/v1/jobs", json={"images": [IMAGE]}).get_json()
    assert [high["priority"], low["priority"], normal["priority"]] == [2, 0, 1]
    assert [(args, kw["queue"]) for _, args, kw in sent.sent] == [
        ([high["id"]], "interactive-high"),
        ([low["id"]], "interactive-low"),
        ([normal["id"]], "interactive"),
    ]
    assert client.get(f"/v1/jobs/{high['id']}").get_json()["priority"] == 2


@pytest.mark.parametrize(("json_value", "form_value"), [(3, None), (-1, None), ("2", None), (1.5, None), (None, "9")])
def test_a_priority_out_of_range_is_422_and_writes_nothing(
    app: Flask, json_value: object, form_value: str | None
) -> None:
    client = app.test_client()
    if form_value is not None:
        resp = post_files(client, [png_bytes()], priority=form_value)
    else:
        resp = client.post("/v1/jobs", json={"images": [IMAGE], "priority": json_value})
    assert_problem(resp, 422, "validation-error")
    assert_nothing_written(app)


def test_a_tenant_above_its_cap_gets_403_and_its_default_is_lowered_to_the_cap(make_app: AppFactory) -> None:
    """INFERQ_TENANT_MAX_PRIORITY caps a named tenant (INFERQ_MAX_PRIORITY everyone else); a job asking for more is
    refused with the cap in the problem, and a job asking for nothing runs at min(normal, cap)."""
    app = make_app(tenant_max_priority={"default": 0})  # the test key's tenant
    client = app.test_client()
    problem = assert_problem(
        client.post("/v1/jobs", json={"images": [IMAGE], "priority": 1}), 403, "priority-not-allowed"
    )
    assert problem["max_priority"] == 0 and "INFERQ_TENANT_MAX_PRIORITY" in problem["detail"]
    assert_nothing_written(app)
    job = client.post("/v1/jobs", json={"images": [IMAGE]}).get_json()
    assert job["priority"] == 0

    capped_for_all = make_app(max_priority=1).test_client()
    assert_problem(
        capped_for_all.post("/v1/jobs", json={"images": [IMAGE], "priority": 2}), 403, "priority-not-allowed"
    )
    assert capped_for_all.post("/v1/jobs", json={"images": [IMAGE], "priority": 1}).status_code == 202


def test_score_jobs_take_no_priority(client: FlaskClient) -> None:
    """Priority orders the interactive lane only: a score job that sends one is told so (422), not silently ignored."""
    resp = client.post(
        "/v1/jobs", json={"kind": "score", "dataset": "00000000-0000-0000-0000-000000000000", "priority": 2}
    )
    assert_problem(resp, 422, "validation-error")


def test_the_openapi_document_declares_priority_in_both_bodies(client: FlaskClient) -> None:
    spec = client.get("/openapi.json").get_json()
    form = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["properties"]["priority"]["minimum"] == 0 and form["properties"]["priority"]["maximum"] == 2
    json_body = spec["components"]["schemas"]["JobCreate"]["properties"]["priority"]
    assert {"type": "integer", "minimum": 0, "maximum": 2} in json_body["anyOf"]
