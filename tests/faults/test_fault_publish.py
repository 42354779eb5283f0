"""API faults: the publish after commit fails for 20% of jobs; an exception between the insert and the commit."""

from __future__ import annotations

import contextlib
import io
import random
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa

import api.jobs
from tests.access import use_key
from tests.faults.conftest import FaultStack

pytestmark = [pytest.mark.faults, pytest.mark.timeout(300)]


def post_job(client: Any, image: bytes) -> Any:
    files = [(io.BytesIO(image), "d.png")]
    return client.post("/v1/jobs", data={"images": files, "top_k": "1"}, content_type="multipart/form-data")


def test_rollback_before_commit_leaves_no_row_and_no_message(
    fault_stack: FaultStack, report: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An exception after the insert but before the commit: no job row, no stored input, no message in Redis."""
    from api.app import create_app

    s = fault_stack
    app = create_app(s.settings)
    use_key(app)
    client = app.test_client()

    def boom(*_: Any, **__: Any) -> None:
        raise RuntimeError("injected: after the insert, before the commit")

    monkeypatch.setattr(api.jobs, "attach_job_webhook", boom)
    with contextlib.suppress(RuntimeError):  # if the app propagates exceptions under test: the same outcome
        assert post_job(client, s.image).status_code == 500
    with s.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT (SELECT count(*) FROM jobs) + (SELECT count(*) FROM job_items)")).scalar()
    inputs = list((s.settings.blob_dir / "inputs").rglob("*")) if (s.settings.blob_dir / "inputs").exists() else []
    assert (rows, s.redis.queue_length(), [p for p in inputs if p.is_file()]) == (0, 0, [])
    app.extensions["inferq"].engine.dispose()
    report(s.checker.verdict("exception after insert, before commit (1 refused)", s.accepted, 0.0).line())


def test_publish_fails_for_20_percent(fault_stack: FaultStack, report: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs whose publish failed after commit stay queued and are dispatched by the reconciler; none is lost."""
    from api.app import create_app

    s = fault_stack
    app = create_app(s.settings)
    use_key(app)
    client = app.test_client()
    celery = app.extensions["inferq"].celery
    real, rng, failed = celery.send_task, random.Random(20), []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        if rng.random() < 0.2:
            failed.append(1)
            raise ConnectionError("injected: publish failed after commit")
        return real(*args, **kwargs)

    monkeypatch.setattr(celery, "send_task", flaky)
    s.start_worker()
    t0 = time.monotonic()
    for _ in range(200):
        resp = post_job(client, s.image)
        assert resp.status_code == 202, resp.json
        s.accepted.append(uuid.UUID(resp.json["id"]))
    s.quiesce()
    v = s.checker.verdict(f"publish fails for 20% ({len(failed)} jobs)", s.accepted, time.monotonic() - t0)
    report(v.line())
    app.extensions["inferq"].engine.dispose()
    assert len(failed) > 20
    assert (v.lost, v.duplicates, v.failed) == (0, 0, 0)
