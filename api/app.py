"""The Flask application factory (the API never imports TensorFlow; it sends tasks by name)."""

from __future__ import annotations

import logging
from typing import Any

from flask import Response, jsonify
from flask_openapi3 import Info, OpenAPI

from api import datasets, health, jobs, keys, model_admin, models, scoring, webhooks
from api.auth import document_security, register_auth, register_auth_refusal
from api.deps import register_services
from api.idempotency import document_idempotency, register_idempotency
from api.limits import document_limits, register_limits
from api.metrics import register_metrics
from api.openapi import document_classify_body, document_constraints
from api.problems import register_error_handlers, register_storage_errors, validation_problem
from api.web.pages import register_web
from shared.config.settings import Settings
from shared.inputs.imaging import configure_pillow
from shared.runtime.celery_app import make_celery
from shared.tenancy.redaction import install_log_redaction

DOC_PREFIX = "/docs"
DESCRIPTION = """Asynchronous image classification on micro-batching Celery workers.
Submit images with `POST /v1/jobs`, then poll `GET /v1/jobs/{id}`. Errors are `application/problem+json`.
Every route but `/healthz`, `/readyz` and the docs needs an API key: `Authorization: Bearer iq_...` or `X-API-Key`."""


class InferqAPI(OpenAPI):
    """flask-openapi3's app, serving the spec with the additions of api.openapi (also to the docs page)."""

    @property
    def api_doc(self) -> dict[str, Any]:
        settings = self.extensions["inferq"].settings
        spec = document_constraints(document_classify_body(super().api_doc), settings)
        spec = document_security(spec, self.url_map.iter_rules(), DOC_PREFIX)
        return document_idempotency(document_limits(spec, settings))


def create_app(settings: Settings | None = None) -> OpenAPI:
    """Build the API for `settings` (read from INFERQ_* variables when not given)."""
    settings = settings or Settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_log_redaction()
    configure_pillow(max_pixels=settings.max_image_pixels)
    app = InferqAPI(
        __name__,
        info=Info(title="inferq", version="0.1.0", description=DESCRIPTION),
        doc_prefix=DOC_PREFIX,
        doc_url="/openapi.json",  # served at /docs/openapi.json for the UI, and at /openapi.json below
        validation_error_status=422,
        validation_error_callback=validation_problem,
    )
    app.config.update(MAX_CONTENT_LENGTH=settings.max_request_bytes, MAX_FORM_PARTS=settings.max_images_per_job + 16)
    register_services(app, settings, make_celery(settings))
    register_metrics(app, settings)  # first: its after-request hook sees every answer, 401s and 429s included
    register_auth(app, DOC_PREFIX)
    register_limits(app, settings, DOC_PREFIX)  # after auth: requests are counted per API key
    register_auth_refusal(app)  # after the limiter: a missing or bad key is counted per client address, then 401
    register_idempotency(app)  # after auth and limits: keys belong to a tenant; replays count as requests
    register_error_handlers(app)
    register_storage_errors(app, settings.storage_retry_after_s)
    for bp in (health.bp, jobs.bp, models.bp, datasets.bp, scoring.bp):
        app.register_api(bp)
    app.register_api(model_admin.bp)
    app.register_api(webhooks.bp)
    app.register_api(keys.bp)
    register_web(app, settings)  # the pages at / (a client of the routes above)

    @app.get("/openapi.json", doc_ui=False)
    def openapi_json() -> Response:
        """The OpenAPI 3 document of this API."""
        return jsonify(app.api_doc)

    return app
