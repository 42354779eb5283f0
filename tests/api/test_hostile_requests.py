"""Hostile requests: oversized, over-long, over-split or over-nested bodies are problems, and nothing is written."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from werkzeug.test import TestResponse

from tests.factories import assert_nothing_written, assert_problem, b64, noise_png, png_bytes, settings_of

AppFactory = Callable[..., Flask]
LIMIT = 16_000  # INFERQ_MAX_REQUEST_BYTES in these tests


class ReadCounter(io.BytesIO):
    """A request body that counts the bytes the server read from it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.consumed = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.consumed += len(chunk)
        return chunk

    def readline(self, size: int | None = -1) -> bytes:
        chunk = super().readline(size)
        self.consumed += len(chunk)
        return chunk


def _app(make_app: AppFactory, **overrides: Any) -> Flask:
    return make_app(**{"auth_enabled": False, "rate_limit_enabled": False, "max_request_bytes": LIMIT, **overrides})


def _multipart(images: list[bytes], **fields: str) -> tuple[bytes, str]:
    """A multipart body (and its content type) with one 'images' part per image, plus form fields."""
    boundary = "inferq-test-boundary"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="i{i}.png"\r\n'
        f"Content-Type: image/png\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(images)
    ]
    parts += [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode() for k, v in fields.items()
    ]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _streamed(app: Flask, body: bytes, content_type: str) -> TestResponse:
    """POST /v1/jobs with a chunked body: no Content-Length, so only reading it can reveal its size."""
    return app.test_client().post(
        "/v1/jobs",
        input_stream=io.BytesIO(body),
        content_type=content_type,
        environ_overrides={"wsgi.input_terminated": True},
    )


# --- body size -----------------------------------------------------------------------------------------------


def _two_noise_images(kind: str) -> tuple[bytes, str]:
    """A body of two barely-compressible images (over LIMIT), as multipart or JSON, with its content type."""
    if kind == "json":
        return json.dumps({"images": [{"data": b64(noise_png())} for _ in range(2)]}).encode(), "application/json"
    return _multipart([noise_png(), noise_png()])


@pytest.mark.parametrize("kind", ["multipart", "json"])
def test_declared_body_over_the_limit_is_refused_unread(make_app: AppFactory, kind: str) -> None:
    """A Content-Length over INFERQ_MAX_REQUEST_BYTES is a 413 problem before a byte of the body is read."""
    app = _app(make_app)
    body, ctype = _two_noise_images(kind)
    assert len(body) > LIMIT
    stream = ReadCounter(body)
    resp = app.test_client().post("/v1/jobs", input_stream=stream, content_type=ctype, content_length=len(body))
    problem = assert_problem(resp, 413, "payload-too-large")
    assert f"{LIMIT} bytes (INFERQ_MAX_REQUEST_BYTES)" in problem["detail"]
    assert stream.consumed == 0
    assert_nothing_written(app)


@pytest.mark.parametrize("kind", ["multipart", "json"])
def test_streamed_body_over_the_limit_is_refused(make_app: AppFactory, kind: str) -> None:
    """A chunked body (no Content-Length) is cut off at the limit: 413 problem, no job, no blob, no message."""
    app = _app(make_app)
    body, ctype = _two_noise_images(kind)
    assert_problem(_streamed(app, body, ctype), 413, "payload-too-large")
    assert_nothing_written(app)


def test_streamed_body_under_the_limit_is_accepted(make_app: AppFactory) -> None:
    """The same chunked transfer under the limit is an ordinary 202 (the limit is not a ban on streaming)."""
    app = _app(make_app)
    body, ctype = _multipart([png_bytes()])
    resp = _streamed(app, body, ctype)
    assert resp.status_code == 202, resp.get_data(as_text=True)


# --- multipart structure ---------------------------------------------------------------------------------------


def test_too_many_multipart_parts_is_413(make_app: AppFactory) -> None:
    """More parts than MAX_FORM_PARTS (INFERQ_MAX_IMAGES_PER_JOB + 16) is a 413 problem naming parts; nothing
    is written (the parts are tiny: the body itself is far under the size limit)."""
    app = _app(make_app, max_images_per_job=2)
    fields = {f"field{i}": "x" for i in range(40)}
    body, ctype = _multipart([png_bytes()], **fields)
    assert len(body) < LIMIT
    resp = app.test_client().post("/v1/jobs", data=body, content_type=ctype)
    problem = assert_problem(resp, 413, "payload-too-large")
    assert f"more than {app.config['MAX_FORM_PARTS']} parts" in problem["detail"]
    assert_nothing_written(app)


def test_form_field_over_the_memory_limit_is_413(make_app: AppFactory) -> None:
    """A non-file form field over MAX_FORM_MEMORY_SIZE is a 413 problem, not a field held in memory."""
    app = make_app(auth_enabled=False, rate_limit_enabled=False)
    app.config["MAX_FORM_MEMORY_SIZE"] = 1000
    body, ctype = _multipart([png_bytes()], model="m" * 5000)
    problem = assert_problem(
        app.test_client().post("/v1/jobs", data=body, content_type=ctype), 413, "payload-too-large"
    )
    assert "form field over 1000 bytes" in problem["detail"]
    assert_nothing_written(app)


# --- JSON structure ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/jobs", "[" * 100_000),
        ("/v1/jobs", '{"images": ' + "[" * 100_000),
        ("/v1/webhooks/endpoints", '{"url": ' + "[" * 100_000),
        ("/v1/models/mnist-cnn/trainings", "{" + '"a":{' * 50_000),
    ],
    ids=["jobs-array", "jobs-field", "pydantic-body", "objects"],
)
def test_json_nested_too_deeply_is_a_client_error(make_app: AppFactory, path: str, body: str) -> None:
    """JSON nested past the parser's recursion limit is a 4xx problem like any malformed JSON, never a 500."""
    app = _app(make_app, max_request_bytes=1024 * 1024)
    resp = app.test_client().post(path, data=body, content_type="application/json")
    assert 400 <= resp.status_code < 500, resp.get_data(as_text=True)
    assert resp.mimetype == "application/problem+json"
    assert_nothing_written(app)


def test_json_nested_but_within_the_parser_is_read_normally(make_app: AppFactory) -> None:
    """Moderate nesting (50 levels) in an unknown field is an ordinary 422 validation problem."""
    app = _app(make_app, max_request_bytes=1024 * 1024)
    nested: Any = "x"
    for _ in range(50):
        nested = [nested]
    resp = app.test_client().post("/v1/jobs", json={"images": [{"data": b64(png_bytes())}], "extra": nested})
    assert_problem(resp, 422, "validation-error")
    assert settings_of(app).max_request_bytes == 1024 * 1024
