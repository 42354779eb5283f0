"""Lanes on the real stack (PostgreSQL, Redis, worker subprocesses): a worker serves only the lanes it is given,
and a worker of the interactive lane drains messages an older version left on the pre-lanes `inference` queue."""

from __future__ import annotations

import signal
from typing import Any

import pytest
import redis

from shared.config.settings import Settings
from shared.runtime.celery_app import INFERENCE_QUEUE
from tests.integration.conftest import WorkerProcess, wait_until
from tests.integration.test_metrics_e2e import finished, submit_score
from tests.integration.test_pipeline import png_of, submit

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def status(client: Any, job_id: str) -> str:
    return str(client.get(f"/v1/jobs/{job_id}").get_json()["status"])


def test_a_bulk_worker_never_takes_interactive_work_and_an_interactive_one_drains_the_old_queue(
    stack_settings: Settings, api_client: Any, start_worker: Any
) -> None:
    """With only a `--lanes bulk` worker, a score job finishes while a classify job (in the interactive lane) and
    one published as before lanes (on `inference`) stay queued, their messages untouched; a `--lanes interactive`
    worker then runs both."""
    broker = redis.Redis.from_url(stack_settings.broker_url())
    try:
        start_worker("--lanes", "bulk")
        old = submit(api_client, [png_of(3)])
        broker.rename(stack_settings.queue_interactive, INFERENCE_QUEUE)  # as an older API published it
        new = submit(api_client, [png_of(7)])
        score = submit_score(api_client)
        wait_until(lambda: finished(api_client, [score]), 120, "the score job on the bulk worker")
        assert (status(api_client, old), status(api_client, new)) == ("queued", "queued")
        assert broker.llen(stack_settings.queue_interactive) == 1 == broker.llen(INFERENCE_QUEUE)

        start_worker("--lanes", "interactive")
        wait_until(lambda: finished(api_client, [old, new]), 120, "both classify jobs on the interactive worker")
        assert broker.llen(stack_settings.queue_interactive) == 0 == broker.llen(INFERENCE_QUEUE)
    finally:
        broker.close()


def test_the_bulk_lane_as_a_child_process_at_a_lower_priority(stack_settings: Settings, api_client: Any) -> None:
    """INFERQ_BULK_PROCESS: `inferq worker --lanes interactive,bulk,ops` starts `inferq worker --lanes bulk` as its
    child at INFERQ_BULK_NICE; a score job runs there and a classify job in the parent. A SIGTERM to the parent alone
    stops both; a parent killed -9 alone leaves no orphan (the child stops itself). The child's /metrics
    (INFERQ_BULK_METRICS_PORT) counts the score job's images."""
    import psutil
    import requests

    from shared.runtime.embedded import free_port

    port = free_port()
    settings = stack_settings.model_copy(update={"bulk_process": True, "bulk_nice": 7, "bulk_metrics_port": port})
    for end in ("term", "kill"):
        parent = WorkerProcess(settings)
        try:
            parent.wait_ready()
            root = psutil.Process(parent.proc.pid)
            child = wait_until(lambda root=root: next(iter(root.children()), None), 60, "the bulk child process")
            assert "--lanes" in child.cmdline() and child.cmdline()[child.cmdline().index("--lanes") + 1] == "bulk"
            assert child.nice() == root.nice() + 7
            jobs = [submit_score(api_client), submit(api_client, [png_of(4)])]
            wait_until(lambda jobs=jobs: finished(api_client, jobs), 120, "the score and classify jobs")
            child_metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
            assert 'inferq_batch_size_count{kind="score"}' in child_metrics, child_metrics[-2000:]
            if end == "term":
                root.send_signal(signal.SIGTERM)  # the parent only, not its process group
            else:
                root.kill()
            psutil.wait_procs([child], timeout=60)
            assert not child.is_running(), f"the bulk child outlived its parent ({end}):\n{parent.output()[-2000:]}"
        finally:
            parent.stop()
