"""Schemathesis hooks for the OpenAPI fuzz run (loaded through SCHEMATHESIS_HOOKS by test_schemathesis.py)."""

from __future__ import annotations

import os
import re
import uuid
from typing import Any

import schemathesis

VALID_KEY = re.compile(r"[!-~]([ -~]{0,253}[!-~])?")


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """A well-formed Idempotency-Key becomes a fresh UUID, as real clients send one per new request: otherwise
    the generator's favourite keys ('0', 'a') collide across operations and bodies and every later POST is a
    correct but uninformative 422 idempotency-key-reused. Malformed keys (negative cases) are left as they are."""
    headers = case.headers or {}
    for name in list(headers):
        if name.lower() == "idempotency-key" and VALID_KEY.fullmatch(str(headers[name])):
            headers[name] = str(uuid.uuid4())


@schemathesis.hook("before_call")
def keep_the_runs_own_key(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    """The run must not revoke the key it authenticates with (schemathesis reuses ids from earlier answers, and
    GET /v1/keys lists this key): everything after would be a 401, which every check accepts."""
    own = os.environ.get("INFERQ_FUZZ_KEY_ID")
    params = case.path_parameters or {}
    if own and case.method.upper() == "DELETE" and params.get("key_id") == own:
        params["key_id"] = "0" * len(own)
