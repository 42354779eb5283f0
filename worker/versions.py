"""What the training queue's jobs share when they make a version: where its artifact goes, its benchmark, the
version it starts from, and registering it together with the job's success (worker.tasks.training and
worker.model_io both use these)."""

from __future__ import annotations

import os
import platform
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from tenacity import retry, retry_if_exception_type, stop_after_attempt

from shared.config.status import JobStatus
from shared.db.models import Job, ModelVersion
from shared.jobs import lifecycle as jobstore
from shared.registry.versions import parse_ref, register_version, resolve
from worker.context import WorkerContext
from worker.optimize import benchmark
from worker.runtime import load_model


def machine() -> dict[str, Any]:
    """Where a benchmark ran (its numbers only compare within one machine)."""
    return {"host": platform.node(), "cpus": os.cpu_count(), "gpu": "none"}


def artifact_location(ctx: WorkerContext, name: str, job_id: uuid.UUID, filename: str) -> tuple[str, Path]:
    """Where a job's new artifact goes: its URI relative to the data dir, and the path (its folder made)."""
    relative = f"models/{name}/{job_id}/{filename}"
    path = ctx.settings.data_dir / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    return relative, path


def benchmark_file(ctx: WorkerContext, path: Path, fmt: str) -> dict[str, Any]:
    """Latency and throughput of the artifact at `path`, and the machine they were measured on."""
    return {**benchmark(load_model(path, fmt), repeats=ctx.settings.benchmark_repeats), **machine()}


@retry(retry=retry_if_exception_type(IntegrityError), stop=stop_after_attempt(3), reraise=True)
def register_and_succeed(
    ctx: WorkerContext, job: Job, result: dict[str, Any], **version: Any
) -> tuple[str, ModelVersion | None]:
    """Register the version and mark the job succeeded in one transaction; nothing if it was canceled meanwhile.
    Retried when another job took the same version number at the same moment (unique name+version)."""
    with ctx.sessions() as session:
        mv = register_version(session, tenant_id=job.tenant_id, **version)
        final = {**result, "model_version": mv.ref, "model_version_links": {"model": f"/v1/models/{mv.name}"}}
        if not jobstore.set_status(session, job.id, JobStatus.SUCCEEDED, model_version_id=mv.id, result=final):
            session.rollback()
            return JobStatus.CANCELED.value, None
        session.commit()
        session.refresh(mv)
        session.expunge(mv)
        return JobStatus.SUCCEEDED.value, mv


def source_version(ctx: WorkerContext, job: Job) -> ModelVersion:
    """The version the job's model reference names now (detached from its session)."""
    with ctx.sessions() as session:
        mv = resolve(
            session, parse_ref(job.model_ref), default_alias=ctx.settings.default_alias, tenant_id=job.tenant_id
        )
        session.expunge(mv)
        return mv
