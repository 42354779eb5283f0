"""Log redaction: API keys, webhook secrets, bearer tokens and image bytes are masked in every log record."""

from __future__ import annotations

import base64
import logging
import os

import pytest

from shared.tenancy.redaction import MASK, install_log_redaction, redact

KEY = "iq_0123456789ab_" + "Zx9-_" * 8 + "abc"
# Fixed, not random: xdist workers must collect the same test ids.
WHSEC = "whsec_" + base64.b64encode(bytes(range(7, 31))).decode()


@pytest.mark.parametrize(
    ("text", "kept", "gone"),
    [
        (f"key={KEY}", "iq_0123456789ab_", KEY),
        (f"signing with {WHSEC}", "whsec_", WHSEC[6:]),
        ("Authorization: Bearer abcdefgh12345678", "Bearer ", "abcdefgh12345678"),
        ("{'X-API-Key': 'sekrit-value-123'}", "X-API-Key", "sekrit-value-123"),
        ("x-api-key=sekrit-value-123", "x-api-key", "sekrit-value-123"),
    ],
)
def test_secrets_are_masked(text: str, kept: str, gone: str) -> None:
    """The secret part goes; what identifies it (the key prefix, the header name) stays."""
    out = redact(text)
    assert gone not in out and kept in out and MASK in out


def test_image_bytes_and_base64_are_masked() -> None:
    """A bytes repr of 64+ characters and a base64 run of 200+ characters are replaced; short ones stay."""
    raw = os.urandom(300)
    b64 = base64.b64encode(raw).decode()
    out = redact(f"got {raw!r} and {b64} and {b'short'!r} in the job's inputs")
    assert repr(raw) not in out and b64 not in out
    assert "b'short'" in out and "the job's inputs" in out


def test_ordinary_messages_are_unchanged() -> None:
    """Job ids, URLs and sentences pass through untouched."""
    text = "job 6f1c2c1e-8f0e-4c43-9d7e-0d6c2b9b3a11 finished; POST https://hooks.example.com/x answered 200"
    assert redact(text) == text


def test_installed_redaction_masks_records_messages_args_and_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    """After install_log_redaction, any logger's records are masked: message, %-args and exception text."""
    install_log_redaction()
    install_log_redaction()  # idempotent
    log = logging.getLogger("some.library")
    with caplog.at_level(logging.DEBUG):
        log.debug("headers %s", {"Authorization": f"Bearer {KEY}"})
        try:
            raise RuntimeError(f"failed with {WHSEC}")
        except RuntimeError:
            log.exception("oops")
    assert KEY not in caplog.text and KEY[16:] not in caplog.text and WHSEC not in caplog.text
    assert caplog.text.count(MASK) >= 2
