"""`Idempotency-Key` on every POST: one before/after-request pair, no per-route code (stored by
shared.tenancy.idempotency).

A POST carrying the header claims (tenant, key). The first request runs; its answer is stored when it succeeded
or when its effect was committed, and replayed (with `Idempotent-Replayed: true`) to any later request with the
same key and the same method, path, query, media type and body. The same key with another request is a 422; while
the first is still running a duplicate is a 409. A request that fails without committing anything releases its key.

The body is fingerprinted as it is read (the routes stream uploads, so nothing is buffered twice): the raw bytes,
or for multipart/form-data each field and file (name, filename, content digest) so that a retry with another
random boundary is still the same request. Secrets in an answer (`key`, `secret`) are not stored: a replay shows
them as null, since a secret is shown once.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from flask import Flask, Response, g, has_request_context, request
from sqlalchemy import event
from sqlalchemy.orm import Session

from api.auth import current_principal
from api.deps import services
from api.problems import problem_response
from shared.config.errors import IdempotencyKeyInUse, IdempotencyKeyInvalid, IdempotencyKeyReused
from shared.db.tenancy_models import COMMITTED, DONE, MAX_KEY_LENGTH
from shared.tenancy.idempotency import Claim, Stored, claim_key, fingerprint, finish_key, mark_committed, release_key

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
KEPT_HEADERS = ("Location", "Content-Type")
SECRET_FIELDS = ("key", "secret")  # shown once: never stored for a replay
CHUNK = 64 * 1024
UPLOAD_SLACK = 64 * 1024


class HashingInput:
    """The WSGI input, hashed as the request reads it; `finish()` reads (and hashes) whatever it left."""

    def __init__(self, stream: Any, length: int | None, terminated: bool) -> None:
        self._stream, self._hash, self.consumed = stream, hashlib.sha256(), 0
        self._left = length if length is not None else (None if terminated else 0)  # None: read to EOF

    def read(self, size: int | None = -1) -> bytes:
        if self._left is not None:
            size = self._left if size is None or size < 0 else min(size, self._left)
        data: bytes = self._stream.read() if size is None or size < 0 else self._stream.read(size)
        return self._count(data)

    def readline(self, size: int | None = -1) -> bytes:
        if self._left is not None:
            size = self._left if size is None or size < 0 else min(size, self._left)
        data: bytes = self._stream.readline() if size is None or size < 0 else self._stream.readline(size)
        return self._count(data)

    def _count(self, data: bytes) -> bytes:
        self._hash.update(data)
        self.consumed += len(data)
        if self._left is not None:
            self._left -= len(data)
        return data

    def finish(self, limit: int) -> str:
        """Read the rest (at most `limit` bytes in all) and return the body's sha256."""
        while self.consumed <= limit and self.read(min(CHUNK, limit + 1 - self.consumed)):
            pass
        return self._hash.hexdigest()


def register_idempotency(app: Flask) -> None:
    """Honour Idempotency-Key on every POST of `app` (call after register_auth: keys belong to a tenant)."""
    app.before_request(_claim_or_replay)
    app.after_request(_remember)
    app.teardown_request(_release_abandoned)
    sessions = app.extensions["inferq"].sessions

    @event.listens_for(sessions, "before_commit")
    def _mark(session: Session) -> None:
        claim = _own_claim(session)
        if claim is not None and not claim.committed:
            mark_committed(session=session, claim=claim)

    @event.listens_for(sessions, "after_commit")
    def _committed(session: Session) -> None:
        claim = _own_claim(session)
        if claim is not None:
            claim.committed = True


def _own_claim(session: Session) -> Claim | None:
    """The request's claim, if `session` is the request's own session (where its effects are committed)."""
    if not has_request_context() or session is not g.get("db_session"):
        return None
    claim = g.get("idempotency_claim")
    return claim if isinstance(claim, Claim) else None


def _claim_or_replay() -> Response | None:
    raw = request.headers.get(HEADER)
    if request.method != "POST" or raw is None or request.url_rule is None:
        return None
    key = _valid_key(raw)
    settings = services().settings
    environ = request.environ
    body = HashingInput(environ["wsgi.input"], request.content_length, "wsgi.input_terminated" in environ)
    environ["wsgi.input"] = body  # before anything reads the body: request.stream is built from it lazily
    g.idempotency_body = body
    result = claim_key(
        sessions=services().sessions,
        tenant_id=current_principal().tenant_id,
        key=key,
        method=request.method,
        path=request.path,
        lease_s=settings.idempotency_lease_s,
    )
    if isinstance(result, Claim):
        g.idempotency_claim = result
        return None
    return _answer_for(result, key)


def _valid_key(raw: str) -> str:
    key = raw.strip()
    if not key or len(key) > MAX_KEY_LENGTH or not key.isascii() or not key.isprintable():
        raise IdempotencyKeyInvalid(
            f"the {HEADER} header must be 1 to {MAX_KEY_LENGTH} printable ASCII characters (a UUID is a good key)"
        )
    return key


def _answer_for(stored: Stored, key: str) -> Response:
    """Replay a finished key's answer to the same request; 422 for another request; 409 while it runs."""
    if stored.status != DONE:
        detail = f"a request with {HEADER} {key!r} is still in progress; retry after it has finished"
        if stored.status == COMMITTED:
            detail = f"the request with {HEADER} {key!r} has been carried out, but its answer is still being recorded"
        return problem_response(IdempotencyKeyInUse(detail).to_problem(request.path), {"Retry-After": "1"})
    request.max_content_length = _largest_upload()  # the route will not run: stream the body into the hash
    if _request_fingerprint() != stored.fingerprint:
        raise IdempotencyKeyReused(
            f"{HEADER} {key!r} was already used for a different request (method, path or body); "
            "use a new key for a new request"
        )
    resp = Response(stored.response_body, status=stored.response_status or 200)
    for name, value in stored.response_headers.items():
        resp.headers[name] = value
    resp.headers[REPLAYED] = "true"
    return resp


def _remember(resp: Response) -> Response:
    claim = g.pop("idempotency_claim", None)
    if not isinstance(claim, Claim):
        return resp
    _end_request_transaction()
    sessions = services().sessions
    if not (200 <= resp.status_code < 300 or claim.committed):  # nothing happened: the client may retry the key
        release_key(sessions=sessions, claim=claim)
        return resp
    try:
        stored = finish_key(
            sessions=sessions,
            claim=claim,
            fingerprint=_request_fingerprint(),
            status=resp.status_code,
            headers={h: resp.headers[h] for h in KEPT_HEADERS if h in resp.headers},
            body=_without_secrets(resp),
        )
    except Exception:  # the answer stands; a retry gets 409 until the lease passes (or the row stays committed)
        log.exception("storing the answer of %s %r failed", HEADER, claim.key)
        return resp
    if not stored:
        log.warning("the claim of %s %r was taken over before its answer was stored", HEADER, claim.key)
    return resp


def _release_abandoned(_exc: BaseException | None) -> None:
    """A request that ended without an answer (an exception past every handler) frees a claim it did not commit."""
    claim = g.pop("idempotency_claim", None)
    if isinstance(claim, Claim) and not claim.committed:
        _end_request_transaction()
        try:
            release_key(sessions=services().sessions, claim=claim)
        except Exception:
            log.exception("releasing %s %r failed; it frees itself after the lease", HEADER, claim.key)


def _end_request_transaction() -> None:
    """Roll back what the request left uncommitted (teardown would): on SQLite an open write transaction of the
    request's own session would lock out the key's update below, on another connection of the same request."""
    session = g.get("db_session")
    if session is not None:
        session.rollback()


def _request_fingerprint() -> str:
    """This request's fingerprint; reads whatever of the body the route has not read."""
    return fingerprint(
        method=request.method,
        path=request.path,
        query=request.query_string,
        content_type=request.mimetype,
        body_digest=_body_digest(),
    )


def _body_digest() -> str:
    if request.mimetype == "multipart/form-data":
        return _multipart_digest()
    body: HashingInput = g.idempotency_body
    return body.finish(request.max_content_length or _largest_upload())


def _multipart_digest() -> str:
    """Fields and files in order, by name, filename and content (not the random boundary or part headers)."""
    h = hashlib.sha256()
    for name, value in request.form.items(multi=True):
        h.update(b"F" + _framed(name) + _framed(hashlib.sha256(value.encode()).hexdigest()))
    for name, upload in request.files.items(multi=True):
        stream = upload.stream
        stream.seek(0)
        content = hashlib.sha256()
        while chunk := stream.read(CHUNK):
            content.update(chunk)
        stream.seek(0)
        h.update(b"P" + _framed(name) + _framed(upload.filename or "") + _framed(content.hexdigest()))
    return h.hexdigest()


def _framed(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(8, "big") + data


def _largest_upload() -> int:
    settings = services().settings
    largest = max(settings.max_request_bytes, settings.dataset_max_upload_bytes, settings.model_upload_max_bytes)
    return largest + UPLOAD_SLACK


def _without_secrets(resp: Response) -> bytes:
    """The answer's body, with secrets shown once (`key`, `secret`) blanked in a JSON object."""
    body = resp.get_data()
    if not resp.is_json:
        return body
    try:
        doc = json.loads(body)
    except ValueError:
        return body
    if isinstance(doc, dict) and any(doc.get(f) is not None for f in SECRET_FIELDS):
        doc.update({f: None for f in SECRET_FIELDS if f in doc})
        return json.dumps(doc).encode()
    return body


# --- the OpenAPI document ------------------------------------------------------------------------------------

_PARAM = {
    "name": HEADER,
    "in": "header",
    "required": False,
    "description": "Makes a retry safe: the same key with the same request replays the first answer "
    f"(`{REPLAYED}: true`); with another request it is a 422, while the first still runs a 409. Keys are "
    "kept at least 24 hours (INFERQ_IDEMPOTENCY_TTL_S).",
    "schema": {
        "type": "string",
        "minLength": 1,
        "maxLength": MAX_KEY_LENGTH,
        "pattern": "^[!-~]([ -~]*[!-~])?$",
    },
}
_PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}


def document_idempotency(spec: dict[str, Any]) -> dict[str, Any]:
    """The spec with the Idempotency-Key header and its 400/409/422 answers on every POST, and the secrets of
    POST answers nullable (a replay shows them as null)."""
    schemas = spec.get("components", {}).get("schemas", {})
    for item in spec.get("paths", {}).values():
        op = item.get("post")
        if not isinstance(op, dict):
            continue
        _nullable_secrets(op, schemas)
        op.setdefault("parameters", []).append(dict(_PARAM))
        responses = op.setdefault("responses", {})
        responses.setdefault("400", {"description": f"A malformed {HEADER}.", "content": _PROBLEM})
        responses.setdefault(
            "409", {"description": f"A request with this {HEADER} is in progress.", "content": _PROBLEM}
        )
        responses.setdefault("422", {"description": f"The {HEADER} was used for another request.", "content": _PROBLEM})
    return spec


def _nullable_secrets(op: dict[str, Any], schemas: dict[str, Any]) -> None:
    for code, resp in op.get("responses", {}).items():
        ref = resp.get("content", {}).get("application/json", {}).get("schema", {}).get("$ref", "")
        props = schemas.get(ref.rsplit("/", 1)[-1], {}).get("properties", {}) if code.startswith("2") else {}
        for field in SECRET_FIELDS:
            prop = props.get(field)
            if isinstance(prop, dict) and prop.get("type") == "string":
                prop["type"] = ["string", "null"]
                prop["description"] = prop.get("description", "") + f" Null in a replay ({REPLAYED}: true)."
