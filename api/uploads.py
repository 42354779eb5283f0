"""Read a classify request (multipart files or JSON with base64 images) into validated uploads."""

from __future__ import annotations

import binascii
from base64 import b64decode
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import Request
from pydantic import ValidationError

from shared.config.errors import BadRequest, InferqError, NoImages, PayloadTooLarge, TooManyImages, ValidationFailed
from shared.config.settings import Settings
from shared.db.models import utcnow
from shared.inputs.imaging import check_image
from shared.jobs.lifecycle import Upload
from shared.schemas.public import DEADLINE_HEADER, JobCreate


@dataclass(frozen=True)
class ClassifyRequest:
    uploads: list[Upload]
    model: str | None
    top_k: int | None
    explain: bool = False
    deadline_s: float | None = None
    priority: int | None = None


def read_classify_request(request: Request, settings: Settings) -> ClassifyRequest:
    """Parse and validate the whole request before anything is written."""
    if request.mimetype == "multipart/form-data":
        parsed = _from_multipart(request, settings)
    elif request.is_json:
        parsed = _from_json(request, settings)
    else:
        raise BadRequest(
            f"unsupported content type {request.mimetype or 'none'!r}; send multipart/form-data with image files "
            "or application/json with base64 images"
        )
    for idx, up in enumerate(parsed.uploads):
        _check_one(idx, up, settings)
    return parsed


def _from_multipart(request: Request, settings: Settings) -> ClassifyRequest:
    files = [f for key in request.files for f in request.files.getlist(key)]
    _check_count(len(files), settings)
    uploads = []
    for f in files:
        data = f.stream.read(settings.max_image_bytes + 1)
        uploads.append(Upload(filename=(f.filename or None), data=data))
    raw = request.form.get("top_k")
    try:
        top_k = int(raw) if raw not in (None, "") else None
    except ValueError:
        top_k = 0
    if top_k is not None and top_k < 1:
        raise ValidationFailed(f"top_k must be a whole number of at least 1, got {raw!r}")
    explain = _form_bool(request.form.get("explain"), "explain")
    deadline = _seconds(request.form.get("deadline_s"), "deadline_s")
    priority = _priority(request.form.get("priority"))
    return ClassifyRequest(uploads, request.form.get("model") or None, top_k, explain, deadline, priority)


def _priority(raw: str | None) -> int | None:
    """The `priority` form field: absent or empty is None, else 0, 1 or 2 (422 otherwise)."""
    if raw in (None, ""):
        return None
    if raw not in ("0", "1", "2"):
        raise ValidationFailed(f"priority must be 0 (low), 1 (normal) or 2 (high), got {raw!r}")
    return int(raw)


def _seconds(raw: str | None, what: str) -> float | None:
    """A number of seconds sent as text (a form field or a header): absent or empty is None, else it must be a
    positive finite number (422 otherwise)."""
    if raw in (None, ""):
        return None
    try:
        value = float(raw)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise ValidationFailed(f"{what} must be a positive number of seconds, got {raw!r}")
    return value


def _form_bool(raw: str | None, name: str) -> bool:
    """A boolean form field, spelled as the OpenAPI document says: absent is false, else exactly true or false."""
    if raw is None or raw == "false":
        return False
    if raw == "true":
        return True
    raise ValidationFailed(f"{name} must be the word true or false, got {raw!r}")


def _from_json(request: Request, settings: Settings) -> ClassifyRequest:
    raw = request.get_json(silent=True)
    if not isinstance(raw, dict):
        raise BadRequest('the body is not a JSON object; send {"images": [{"data": "<base64>"}]}')
    images = raw.get("images")
    if isinstance(images, list):
        _check_count(len(images), settings)
    try:
        body = JobCreate.model_validate(raw)
    except ValidationError:
        if not images:
            raise NoImages("no images in the request; send at least one under 'images'") from None
        raise
    uploads = []
    for idx, img in enumerate(body.images):
        if len(img.data) > (settings.max_image_bytes * 4) // 3 + 4:
            raise PayloadTooLarge(_too_big(idx, settings), index=idx)
        try:
            data = b64decode(img.data, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValidationFailed(f"images[{idx}].data is not valid base64", index=idx) from exc
        uploads.append(Upload(filename=img.filename, data=data))
    return ClassifyRequest(uploads, body.model, body.top_k, body.explain, body.deadline_s, body.priority)


def _check_count(n: int, settings: Settings) -> None:
    if n == 0:
        raise NoImages("no images in the request; attach at least one image file")
    if n > settings.max_images_per_job:
        raise TooManyImages(
            f"{n} images sent; one job takes at most {settings.max_images_per_job} (INFERQ_MAX_IMAGES_PER_JOB); "
            "split them over several jobs or use a scoring job for datasets"
        )


def _too_big(idx: int, settings: Settings) -> str:
    return f"image {idx} is larger than {settings.max_image_bytes} bytes (INFERQ_MAX_IMAGE_BYTES)"


def _check_one(idx: int, up: Upload, settings: Settings) -> None:
    if len(up.data) > settings.max_image_bytes:
        raise PayloadTooLarge(_too_big(idx, settings), index=idx)
    try:
        check_image(up.data, max_pixels=settings.max_image_pixels)
    except InferqError as exc:
        exc.detail = f"image {idx}" + (f" ({up.filename})" if up.filename else "") + f": {exc.detail}"
        exc.extra.setdefault("index", idx)
        raise


def read_deadline(request: Request, body_value: float | None, settings: Settings) -> datetime | None:
    """When the job must have started by: `deadline_s` from the body (or form), else the Inferq-Deadline-S
    header, counted from now; None without either. 422 past INFERQ_MAX_DEADLINE_S or for a non-positive value."""
    header = _seconds(request.headers.get(DEADLINE_HEADER), f"the {DEADLINE_HEADER} header")
    for what, value in (("deadline_s", body_value), (DEADLINE_HEADER, header)):  # both checked, even if unused
        if value is not None and value > settings.max_deadline_s:
            raise ValidationFailed(
                f"{what} is {value:g} s; at most {settings.max_deadline_s:g} s (INFERQ_MAX_DEADLINE_S)"
            )
    seconds = body_value if body_value is not None else header
    return None if seconds is None else utcnow() + timedelta(seconds=seconds)


def read_prefer_wait(request: Request, settings: Settings) -> int | None:
    """Seconds the client asked the POST to wait for its job to finish (`Prefer: wait=N`, RFC 7240, as Replicate's
    API takes it; a bare `wait` means INFERQ_MAX_WAIT_S), capped at INFERQ_MAX_WAIT_S; None when it did not ask.
    Other preferences, and a `wait` whose value is not a whole number of seconds, are ignored as RFC 7240 asks."""
    cap = int(settings.max_wait_s)
    for header in request.headers.getlist("Prefer"):
        for token in header.split(","):
            name, _, value = token.split(";")[0].strip().partition("=")
            if name.strip().lower() != "wait":
                continue
            value = value.strip().strip('"')
            if not value:
                return cap or None
            if value.isdigit():
                return min(int(value), cap) or None
    return None
