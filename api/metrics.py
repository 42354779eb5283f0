"""The API's Prometheus metrics: requests by route template, job submissions and rejections, and GET /metrics
(with the queue-depth and job-count collector). /metrics needs no key unless INFERQ_METRICS_PUBLIC=false."""

from __future__ import annotations

import time

from flask import Flask, Response, current_app, g, request

from api.deps import Services
from shared.config.errors import PROBLEM_BASE
from shared.config.settings import Settings
from shared.runtime import metrics
from shared.runtime.celery_app import all_queues

ENDPOINT = "metrics"
# Routes that create a job, and the kind of job when the answer does not say.
SUBMIT_ENDPOINTS = {
    "jobs.create_job": "classify",
    "model_admin.create_training": "train",
    "model_admin.create_optimization": "train",
    "model_admin.create_benchmark": "train",
    "model_admin.create_evaluation": "train",
    "model_admin.create_export": "train",
}


def _started() -> None:
    g.metrics_started = time.perf_counter()


def _record(resp: Response) -> Response:
    rule = request.url_rule
    route = rule.rule if rule is not None else "<unmatched>"  # the template, never the raw path
    method = request.method
    metrics.HTTP_REQUESTS.labels(route, method, str(resp.status_code)).inc()
    started = g.get("metrics_started")
    if started is not None:
        metrics.HTTP_DURATION.labels(route, method).observe(time.perf_counter() - started)
    endpoint = rule.endpoint if rule is not None else ""
    if endpoint in SUBMIT_ENDPOINTS and method == "POST":
        _count_submission(resp, SUBMIT_ENDPOINTS[endpoint])
    return resp


def _count_submission(resp: Response, default_kind: str) -> None:
    body = resp.get_json(silent=True) if resp.is_json else None
    body = body if isinstance(body, dict) else {}
    if resp.status_code < 400:
        kind = body.get("kind")
        metrics.JOBS_SUBMITTED.labels(kind if kind in {"classify", "score", "train"} else default_kind).inc()
        return
    problem = str(body.get("type", ""))
    reason = problem.removeprefix(PROBLEM_BASE) if problem.startswith(PROBLEM_BASE) else f"http-{resp.status_code}"
    metrics.JOBS_REJECTED.labels(reason).inc()


def metrics_view() -> Response:
    """The Prometheus text exposition of the API (every gunicorn worker's) plus queue depths and job counts."""
    body = metrics.scrape(current_app.extensions["inferq_metrics"])
    return Response(body, mimetype="text/plain", content_type=metrics.CONTENT_TYPE)


def services_of(app: Flask) -> Services:
    svc: Services = app.extensions["inferq"]
    return svc


def register_metrics(app: Flask, settings: Settings) -> None:
    """Count every request and serve GET /metrics (nothing at all when INFERQ_METRICS_ENABLED=false)."""
    metrics.configure(metrics_enabled=settings.metrics_enabled)
    if not settings.metrics_enabled:
        return
    app.before_request(_started)
    app.after_request(_record)
    svc = services_of(app)
    app.extensions["inferq_metrics"] = metrics.StackCollector(
        redis_url=settings.broker_url(), lanes=all_queues(settings), sessions=svc.sessions
    )
    app.add_url_rule("/metrics", ENDPOINT, metrics_view, methods=["GET"])
