"""One place that turns every error into RFC 9457 application/problem+json with a stable type."""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, json, request
from pydantic import ValidationError
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

from shared.config.errors import PROBLEM_BASE, InferqError, PayloadTooLarge, StorageUnavailable, ValidationFailed

log = logging.getLogger(__name__)
PROBLEM_JSON = "application/problem+json"


def problem_response(body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    """A response carrying a problem body."""
    resp = Response(json.dumps(body), status=body["status"], mimetype=PROBLEM_JSON)
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def validation_problem(exc: ValidationError) -> Response:
    """A 422 problem listing each invalid field (used for pydantic errors from flask-openapi3 and our own)."""
    errors = [
        {"field": ".".join(str(p) for p in e["loc"]) or "body", "message": e["msg"], "type": e["type"]}
        for e in exc.errors(include_url=False, include_input=False, include_context=False)
    ]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
    return problem_response(ValidationFailed(detail, errors=errors).to_problem(request.path))


def register_storage_errors(app: Flask, retry_after_s: int) -> None:
    """Errors of the blob store (S3 through s3fs/botocore, or the local disk) become a 503 storage-unavailable problem
    with Retry-After, not a 500: the request changed nothing (inputs are stored before any row is written, and a
    failed store aborts the transaction), so the same request can simply be sent again. A missing blob
    (FileNotFoundError) is not an outage and stays a 500."""
    from botocore.exceptions import BotoCoreError, ClientError

    def _unavailable(exc: Exception) -> Response:
        if isinstance(exc, FileNotFoundError):
            return _internal_error(exc)
        log.warning("storage failed on %s %s: %s: %s", request.method, request.path, type(exc).__name__, exc)
        detail = "the blob store failed or could not be reached; nothing was kept: send the request again later"
        error = StorageUnavailable(detail, retry_after_s=retry_after_s)
        return problem_response(error.to_problem(request.path), error.headers)

    for kind in (OSError, BotoCoreError, ClientError):
        app.register_error_handler(kind, _unavailable)


def _internal_error(exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.path)
    body = {
        "type": PROBLEM_BASE + "internal-error",
        "title": "Internal error",
        "status": 500,
        "detail": "an unexpected error happened; it has been logged",
        "instance": request.path,
    }
    return problem_response(body)


def register_error_handlers(app: Flask) -> None:
    """Map domain errors, HTTP errors and anything unexpected to problem+json."""

    @app.errorhandler(InferqError)
    def _domain(exc: InferqError) -> Response:
        return problem_response(exc.to_problem(request.path), getattr(exc, "headers", None))

    @app.errorhandler(ValidationError)
    def _pydantic(exc: ValidationError) -> Response:
        return validation_problem(exc)

    @app.errorhandler(RequestEntityTooLarge)
    def _too_large(exc: RequestEntityTooLarge) -> Response:
        limit, sent = request.max_content_length, request.content_length
        if limit is not None and (sent is None or sent > limit):  # declared too long, or streamed past the limit
            named = " (INFERQ_MAX_REQUEST_BYTES)" if limit == app.config["MAX_CONTENT_LENGTH"] else ""
            detail = f"the request body is larger than {limit} bytes{named}; send less per request"
        else:
            detail = (
                f"the multipart body has more than {request.max_form_parts} parts or a form field over "
                f"{request.max_form_memory_size} bytes; send fewer images per request"
            )
        return problem_response(PayloadTooLarge(detail).to_problem(request.path))

    @app.errorhandler(HTTPException)
    def _http(exc: HTTPException) -> Response:
        status = exc.code or 500
        slug = (exc.name or "error").lower().replace(" ", "-")
        body = {
            "type": PROBLEM_BASE + slug,
            "title": exc.name,
            "status": status,
            "detail": exc.description or exc.name,
            "instance": request.path,
        }
        allowed = getattr(exc, "valid_methods", None)
        headers = {"Allow": ", ".join(allowed)} if allowed else None
        return problem_response(body, headers)

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        return _internal_error(exc)
