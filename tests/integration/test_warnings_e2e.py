"""No confident answer to a picture with no digit, on the real stack: PostgreSQL, Redis, a worker subprocess."""

from __future__ import annotations

import io
import uuid
from typing import Any

import pytest
from PIL import Image

from shared.config.settings import Settings
from tests.integration.test_pipeline import db_rows, png_of, submit

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def white_page() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (120, 160), (255, 255, 255)).save(buf, format="PNG")
    return buf.getvalue()


def test_a_white_page_gets_no_label_while_its_batch_mate_does(
    stack_settings: Settings, api_client: Any, start_worker: Any
) -> None:
    """A white page and a digit in one job: the page succeeds with a null label and `no-ink`, the digit gets a
    label, and the job succeeds; the warnings are stored in PostgreSQL."""
    start_worker()
    job_id = submit(api_client, [white_page(), png_of(7)])
    job = api_client.get(f"/v1/jobs/{job_id}?wait=60").json
    assert job["status"] == "succeeded", job
    assert job["counts"] == {"total": 2, "completed": 2, "failed": 0, "expired": 0}
    page, digit = job["predictions"]
    assert (page["status"], page["label"], page["confidence"], page["top_k"]) == ("succeeded", None, None, None)
    assert page["warnings"] == ["no-ink"] and page["error"] is None
    assert digit["status"] == "succeeded" and digit["label"] in list("0123456789")
    assert 0 < digit["confidence"] <= 1 and len(digit["top_k"]) == 3
    assert isinstance(digit["warnings"], list) and "no-ink" not in digit["warnings"]
    assert api_client.get(f"/v1/jobs/{job_id}/results").json["data"] == job["predictions"]
    rows = db_rows(
        stack_settings,
        "SELECT idx, label, warnings, batch_size FROM job_items WHERE job_id = :j ORDER BY idx",
        j=uuid.UUID(job_id),
    )
    assert [(r.idx, r.label, r.warnings) for r in rows][0] == (0, None, ["no-ink"])
    assert rows[0].batch_size is None and rows[1].batch_size == 1  # the page never reached the model
