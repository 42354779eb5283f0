"""GET /metrics on the API: request counts by route template, submissions and rejections, and its access rule."""

from __future__ import annotations

from typing import Any

from flask import Flask

from inferq.top import parse, total
from tests.factories import b64, png_bytes


def scrape(app: Flask, **headers: str) -> dict[Any, float]:
    resp = app.test_client().get("/metrics", headers=headers)
    assert resp.status_code == 200, resp.data[:500]
    assert resp.content_type.startswith("text/plain")
    return parse(resp.get_data(as_text=True))


def test_requests_are_counted_by_route_template(app: Flask) -> None:
    """A request for one job is counted under the route's template, never under the job's id."""
    before = scrape(app)
    resp = app.test_client().get("/v1/jobs/00000000-0000-0000-0000-000000000001")
    assert resp.status_code == 404
    after = scrape(app)
    labels = {"route": "/v1/jobs/<job_id>", "method": "GET", "status": "404"}
    routes = {dict(ls).get("route") for (n, ls) in after if n == "inferq_http_requests_total"}
    assert not any("0000" in str(r) for r in routes), routes
    gained = total(after, "inferq_http_requests_total", **labels) - total(
        before, "inferq_http_requests_total", **labels
    )
    assert gained == 1, routes
    assert total(after, "inferq_http_request_duration_seconds_count") > total(
        before, "inferq_http_request_duration_seconds_count"
    )


def test_submissions_and_rejections_are_counted(app: Flask) -> None:
    """An accepted classify job counts as submitted{kind=classify}; an invalid one as rejected by problem type."""
    before = scrape(app)
    ok = app.test_client().post("/v1/jobs", json={"images": [{"data": b64(png_bytes()), "filename": "a.png"}]})
    assert ok.status_code == 202, ok.json
    bad = app.test_client().post("/v1/jobs", json={"images": []})
    assert 400 <= bad.status_code < 500
    after = scrape(app)
    gained = total(after, "inferq_jobs_submitted_total", kind="classify") - total(
        before, "inferq_jobs_submitted_total", kind="classify"
    )
    assert gained == 1
    reason = str(bad.json["type"]).rsplit("/", 1)[-1]
    assert (
        total(after, "inferq_jobs_rejected_total", reason=reason)
        - total(before, "inferq_jobs_rejected_total", reason=reason)
        == 1
    )


def test_metrics_need_no_key_by_default(app: Flask) -> None:
    """With INFERQ_METRICS_PUBLIC (the default) /metrics answers a client that sends no API key."""
    from flask.testing import FlaskClient

    resp = FlaskClient(app).get("/metrics")  # a client without the test key
    assert resp.status_code == 200
    assert b"inferq_http_requests_total" in resp.data


def test_private_metrics_need_an_admin_key(make_app: Any) -> None:
    """With INFERQ_METRICS_PUBLIC=false, /metrics without a key is 401 and with an admin key 200."""
    from flask.testing import FlaskClient

    app = make_app(metrics_public=False)
    assert FlaskClient(app).get("/metrics").status_code == 401
    assert app.test_client().get("/metrics").status_code == 200


def test_metrics_off_serves_no_endpoint(make_app: Any) -> None:
    """With INFERQ_METRICS_ENABLED=false there is no /metrics route."""
    app = make_app(metrics_enabled=False)
    assert app.test_client().get("/metrics").status_code == 404
