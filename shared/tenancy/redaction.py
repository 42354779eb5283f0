"""Keep secrets out of logs: API keys, webhook secrets, bearer tokens and image bytes are masked in every record.

Installed as a LogRecord factory (not a handler filter), so it covers every logger and every handler, including
ones added later (Celery's, gunicorn's, pytest's caplog): a record is masked when it is made.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from typing import Any

MASK = "[redacted]"
_PATTERNS: list[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]] = [
    # an inferq API key keeps its visible prefix (the key id), never its secret
    (re.compile(r"\b(iq_[0-9a-f]{12}_)[A-Za-z0-9_-]{8,}"), r"\1" + MASK),
    # Standard Webhooks secrets
    (re.compile(r"\bwhsec_[A-Za-z0-9+/=]{8,}"), "whsec_" + MASK),
    # Authorization / X-API-Key header values, however a library prints them
    (re.compile(r"(?i)\b(bearer\s+)[A-Za-z0-9._~+/=-]{8,}"), r"\1" + MASK),
    (re.compile(r"(?i)(x-api-key['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"), r"\1" + MASK),
    # raw bytes as Python prints them (image data in a repr) and long base64 runs (image data in JSON)
    (re.compile(r"(?<![\w])b'(?:\\.|[^'\\]){64,}'?"), f"<bytes {MASK}>"),
    (re.compile(r'(?<![\w])b"(?:\\.|[^"\\]){64,}"?'), f"<bytes {MASK}>"),
    (re.compile(r"[A-Za-z0-9+/]{200,}={0,2}"), lambda m: f"<{len(m.group(0))} base64 chars {MASK}>"),
]


def redact(text: str) -> str:
    """`text` with every API key, webhook secret, bearer token, bytes repr and long base64 run masked."""
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redacted_record(factory: Callable[..., logging.LogRecord], *args: Any, **kwargs: Any) -> logging.LogRecord:
    record = factory(*args, **kwargs)
    try:
        message = record.getMessage()
    except Exception:  # a malformed log call: leave it to the handler, which reports it
        return record
    masked = redact(message)
    if masked != message:
        record.msg, record.args = masked, None
    if record.exc_info and record.exc_info[0] is not None:
        record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
    return record


_installed = False
_lock = threading.Lock()


def install_log_redaction() -> None:
    """Mask secrets in every log record of this process from now on (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(lambda *a, **kw: _redacted_record(factory, *a, **kw))
        _installed = True
