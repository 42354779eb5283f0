"""`inferq classify --deadline` and `--priority`: both go with the job, and an expired job is reported as such."""

from __future__ import annotations

from pathlib import Path

import pytest
import responses
from click.testing import CliRunner

from inferq.cli import main
from tests.factories import png_bytes

API = "http://127.0.0.1:9"
EXPIRED = {
    "id": "j1",
    "status": "expired",
    "model": "mnist-cnn",
    "error": {"type": "deadline-expired", "detail": "the job's deadline (deadline_s) passed before it started"},
    "predictions": [{"index": 0, "filename": "a.png", "status": "pending", "label": None}],
}


@responses.activate
def test_a_deadline_is_sent_and_an_expired_job_says_so(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes())
    responses.post(f"{API}/v1/jobs", json={**EXPIRED, "status": "queued"}, status=202)
    responses.get(f"{API}/v1/jobs/j1", json=EXPIRED)
    result = CliRunner().invoke(main, ["classify", str(image), "--deadline", "0.5", "--api-url", API])
    assert result.exit_code == 1, result.output
    assert b'name="deadline_s"\r\n\r\n0.5' in responses.calls[0].request.body
    assert "expired" in result.output and "passed before it started" in result.output


@pytest.mark.parametrize("bad", ["0", "-1", "soon"])
def test_a_bad_deadline_is_refused_before_anything_is_sent(tmp_path: Path, bad: str) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes())
    result = CliRunner().invoke(main, ["classify", str(image), "--deadline", bad, "--api-url", API])
    assert result.exit_code == 2 and "--deadline" in result.output


@responses.activate
def test_a_priority_is_sent_as_the_form_field(tmp_path: Path) -> None:
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes())
    done = {**EXPIRED, "status": "succeeded", "error": None, "predictions": []}
    responses.post(f"{API}/v1/jobs", json={**done, "status": "queued"}, status=202)
    responses.get(f"{API}/v1/jobs/j1", json=done)
    result = CliRunner().invoke(main, ["classify", str(image), "--priority", "2", "--api-url", API])
    assert result.exit_code == 0, result.output
    assert b'name="priority"\r\n\r\n2' in responses.calls[0].request.body
    refused = CliRunner().invoke(main, ["classify", str(image), "--priority", "3", "--api-url", API])
    assert refused.exit_code == 2 and "--priority" in refused.output


@responses.activate
def test_a_job_finished_within_the_posts_wait_needs_no_poll(tmp_path: Path) -> None:
    """The CLI asks `Prefer: wait`; a 201 with the finished job is printed without a GET."""
    image = tmp_path / "a.png"
    image.write_bytes(png_bytes())
    prediction = {"index": 0, "filename": "a.png", "status": "succeeded", "label": "7", "confidence": 0.98}
    done = {**EXPIRED, "status": "succeeded", "error": None, "predictions": [{**prediction, "top_k": []}]}
    responses.post(f"{API}/v1/jobs", json=done, status=201)
    result = CliRunner().invoke(main, ["classify", str(image), "--api-url", API])
    assert result.exit_code == 0, result.output
    assert [c.request.method for c in responses.calls] == ["POST"]
    assert responses.calls[0].request.headers["Prefer"] == "wait=20"
    assert "0.9800" in result.output
