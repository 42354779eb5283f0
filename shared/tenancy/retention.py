"""Deleting a client's data: one job (its stored inputs and results), and the periodic retention purge."""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, false, func, not_, or_, select, true
from sqlalchemy.orm import Session, sessionmaker

from shared.config.errors import DatasetInUse, JobNotFinished
from shared.config.settings import Settings
from shared.config.status import JobStatus
from shared.db.models import Dataset, Job, JobItem, utcnow
from shared.db.tenancy_models import TenantRetention
from shared.db.webhook_models import WebhookAttempt, WebhookDelivery
from shared.inputs import datasets as datastore
from shared.inputs.storage import BlobStore

log = logging.getLogger(__name__)
TERMINAL = [s.value for s in JobStatus if s.is_terminal()]


def set_retention(*, session: Session, tenant_id: str, days: float | None) -> None:
    """Give a tenant its own retention period in days, or back to the default when `days` is None."""
    row = session.get(TenantRetention, tenant_id)
    if days is None:
        if row is not None:
            session.delete(row)
    elif row is None:
        session.add(TenantRetention(tenant_id=tenant_id, retention_days=days))
    else:
        row.retention_days = days
    session.flush()


def retention_overrides(session: Session) -> dict[str, float]:
    """tenant -> retention days, for the tenants that have their own."""
    return {t: d for t, d in session.execute(select(TenantRetention.tenant_id, TenantRetention.retention_days))}


# --- deleting one object ------------------------------------------------------------------------------------


def delete_job(*, session: Session, store: BlobStore, settings: Settings, job: Job) -> None:
    """Delete a finished job: its stored inputs and files first, then its rows (items, webhook deliveries and
    attempts, the job); the caller commits. JobNotFinished (409) while it is queued or running: cancel it first."""
    if not JobStatus(job.status).is_terminal():
        raise JobNotFinished(f"job {job.id} is {job.status}; cancel it (POST /v1/jobs/{job.id}/cancel), then delete it")
    for key in session.scalars(select(JobItem.input_key).where(JobItem.job_id == job.id)):
        if key:
            store.delete(key)
    store.delete_prefix(f"inputs/{job.id}")
    store.delete_prefix(f"model-uploads/{job.id}")
    shutil.rmtree(settings.data_dir / "tensorboard" / str(job.id), ignore_errors=True)
    deliveries = select(WebhookDelivery.id).where(WebhookDelivery.job_id == job.id)
    session.execute(delete(WebhookAttempt).where(WebhookAttempt.delivery_id.in_(deliveries)))
    session.execute(delete(WebhookDelivery).where(WebhookDelivery.job_id == job.id))
    session.execute(delete(JobItem).where(JobItem.job_id == job.id))
    session.execute(delete(Job).where(Job.id == job.id).execution_options(synchronize_session=False))
    session.expunge(job)


# --- the periodic purge -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PurgeReport:
    """What one retention run deleted."""

    jobs: int
    datasets: int
    errors: int

    def as_dict(self) -> dict[str, int]:
        """The report as a task result."""
        return {"jobs": self.jobs, "datasets": self.datasets, "errors": self.errors}


def _expired(column: Any, tenant: Any, settings: Settings, overrides: dict[str, float], now: datetime) -> Any:
    """SQL: the row is older than its tenant's retention period (a period of 0 never expires)."""
    clauses = [and_(tenant == t, column < now - timedelta(days=days)) for t, days in overrides.items() if days > 0]
    if settings.retention_days > 0:
        others = not_(tenant.in_(list(overrides))) if overrides else true()
        clauses.append(and_(others, column < now - timedelta(days=settings.retention_days)))
    return or_(*clauses) if clauses else false()


def purge_expired(
    *, sessions: sessionmaker[Session], store: BlobStore, settings: Settings, now: datetime | None = None
) -> PurgeReport:
    """Delete finished jobs and unused datasets older than their tenant's retention (each in its own transaction,
    at most INFERQ_RETENTION_BATCH of each per run); running jobs are left to finish."""
    now = now or utcnow()
    with sessions() as session:
        overrides = retention_overrides(session)
        finished = func.coalesce(Job.finished_at, Job.created_at)
        job_ids = list(
            session.scalars(
                select(Job.id)
                .where(Job.status.in_(TERMINAL), _expired(finished, Job.tenant_id, settings, overrides, now))
                .order_by(finished)
                .limit(settings.retention_batch)
            )
        )
        ds_ids = list(
            session.scalars(
                select(Dataset.id)
                .where(_expired(Dataset.created_at, Dataset.tenant_id, settings, overrides, now))
                .order_by(Dataset.created_at)
                .limit(settings.retention_batch)
            )
        )
    jobs = datasets = errors = 0
    for job_id in job_ids:
        try:
            with sessions.begin() as session:
                job = session.get(Job, job_id)
                if job is not None:
                    delete_job(session=session, store=store, settings=settings, job=job)
                    jobs += 1
        except Exception:  # one bad row must not stop the purge; it is retried next run
            errors += 1
            log.warning("retention: deleting job %s failed", job_id, exc_info=True)
    for ds_id in ds_ids:
        try:
            with sessions.begin() as session:
                ds = session.get(Dataset, ds_id)
                if ds is None:
                    continue
                datastore.delete_dataset(session=session, dataset_id=ds_id, tenant_id=ds.tenant_id)
            datastore.remove_files(settings, ds_id)
            datasets += 1
        except DatasetInUse:  # a job still reads it: it expires once that job is done
            continue
        except Exception:
            errors += 1
            log.warning("retention: deleting dataset %s failed", ds_id, exc_info=True)
    if jobs or datasets or errors:
        log.info("retention: deleted %d jobs and %d datasets (%d errors)", jobs, datasets, errors)
    return PurgeReport(jobs=jobs, datasets=datasets, errors=errors)
