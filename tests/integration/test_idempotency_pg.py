"""Idempotency under load on PostgreSQL: 500 POSTs, each retried 3 times, a fifth of them all at once, through a
real threaded HTTP server: exactly one job per key."""

from __future__ import annotations

import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from sqlalchemy import func, select
from werkzeug.serving import make_server

from api.app import create_app
from shared.db.engine import session_scope, upgrade_database
from shared.db.models import Job
from shared.db.tenancy_models import DONE, IdempotencyKey
from tests.access import auth_headers, make_key
from tests.factories import SentTasks, add_model_version, make_settings, png_bytes, services_of

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

KEYS, RETRIES, CONCURRENT_EVERY = 500, 3, 5  # every 5th key sends its 4 attempts at the same instant


@dataclass(frozen=True)
class Outcome:
    key: str
    status: int
    job_id: str | None
    replayed: bool
    problem: str | None


@pytest.fixture
def server(tmp_path: Path, pg_url: str) -> Iterator[tuple[str, dict[str, str], object]]:
    """The API on PostgreSQL behind a threaded werkzeug server; its base URL, auth headers and app."""
    settings = make_settings(tmp_path, database_url=pg_url, rate_limit_enabled=False)
    upgrade_database(settings)
    app = create_app(settings)
    svc = services_of(app)
    svc.celery = SentTasks()
    with session_scope(svc.sessions) as session:
        add_model_version(session)
    headers = auth_headers(make_key(svc.sessions))
    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}", headers, app
    httpd.shutdown()
    thread.join(10)
    svc.engine.dispose()


def test_500_keys_retried_3_times_make_exactly_one_job_each(server: tuple[str, dict[str, str], object]) -> None:
    """Every attempt is the job's 202 (first or replayed) or a 409 while a twin is in flight; each key made
    exactly one job and one message; a last retry of every key replays the same job."""
    base, headers, app = server
    image = png_bytes(size=(28, 28))
    local = threading.local()

    def post(key: str) -> Outcome:
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        resp = session.post(
            f"{base}/v1/jobs",
            files=[("images", ("d.png", image, "image/png"))],  # requests picks a new boundary every time
            headers={**headers, "Idempotency-Key": key},
            timeout=60,
        )
        body = resp.json()
        return Outcome(
            key,
            resp.status_code,
            body.get("id") if resp.status_code == 202 else None,
            resp.headers.get("Idempotent-Replayed") == "true",
            body.get("type", "").rsplit("/", 1)[-1] if resp.status_code != 202 else None,
        )

    def sequential(key: str) -> list[Outcome]:
        return [post(key) for _ in range(1 + RETRIES)]

    def simultaneous(key: str) -> list[Outcome]:
        start = threading.Barrier(1 + RETRIES)

        def attempt(_: int) -> Outcome:
            start.wait(timeout=60)
            return post(key)

        with ThreadPoolExecutor(1 + RETRIES) as burst:
            return list(burst.map(attempt, range(1 + RETRIES)))

    keys = [f"load-{uuid.uuid4()}" for _ in range(KEYS)]
    concurrent = {k for i, k in enumerate(keys) if i % CONCURRENT_EVERY == 0}
    with ThreadPoolExecutor(8) as pool:
        batches = pool.map(lambda k: simultaneous(k) if k in concurrent else sequential(k), keys)
        outcomes = [o for batch in batches for o in batch]

    assert len(outcomes) == KEYS * (1 + RETRIES)
    statuses = Counter((o.status, o.problem) for o in outcomes)
    print(f"attempts by answer: {dict(statuses)}; replayed: {sum(o.replayed for o in outcomes)}")  # shown with -s
    assert set(statuses) <= {(202, None), (409, "idempotency-key-in-use")}, statuses
    by_key: dict[str, set[str]] = defaultdict(set)
    for o in outcomes:
        if o.job_id:
            by_key[o.key].add(o.job_id)
    assert all(len(by_key[k]) == 1 for k in keys), "a key answered with more than one job"
    assert not [o for o in outcomes if o.status == 409 and o.key not in concurrent], "a sequential retry got 409"
    assert statuses[(409, "idempotency-key-in-use")] > 0, "no attempt ever met its twin in flight"
    assert sum(o.replayed for o in outcomes) >= KEYS - len(concurrent)  # every sequential key replayed 3 times

    svc = services_of(app)  # type: ignore[arg-type]
    with svc.sessions() as s:
        jobs = set(map(str, s.scalars(select(Job.id))))
        done = s.scalar(select(func.count()).select_from(IdempotencyKey).where(IdempotencyKey.status == DONE))
    assert jobs == {next(iter(ids)) for ids in by_key.values()} and len(jobs) == KEYS
    assert done == KEYS
    assert len(svc.celery.sent) == KEYS  # type: ignore[attr-defined]

    with ThreadPoolExecutor(8) as pool:
        last = list(pool.map(post, keys))
    assert all(o.status == 202 and o.replayed and {o.job_id} == by_key[o.key] for o in last)
