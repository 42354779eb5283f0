"""Compare the jobs a fault test accepted with what PostgreSQL holds: lost jobs, duplicate or rewritten results."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy import Engine

TERMINAL = ("succeeded", "failed", "canceled")


@dataclass(frozen=True)
class Verdict:
    """One fault test's outcome, printed as one line."""

    fault: str
    accepted: int
    terminal: int
    lost: int
    duplicates: int
    failed: int
    recovery_s: float
    reasons: str = ""

    def line(self) -> str:
        return (
            f"fault={self.fault:<34} accepted={self.accepted:<5} terminal={self.terminal:<5} lost={self.lost} "
            f"duplicates={self.duplicates} failed={self.failed} worst_recovery_s={self.recovery_s:.1f}"
            + (f" ({self.reasons})" if self.reasons else "")
        )


class Checker:
    """Reads the database directly (never through the code under test)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.snapshots: list[dict[int, datetime]] = []

    def is_terminal(self, job_id: uuid.UUID) -> bool:
        with self.engine.connect() as conn:
            status = conn.execute(sa.text("SELECT status FROM jobs WHERE id = :j"), {"j": job_id}).scalar()
        return status in TERMINAL

    def nonterminal(self, job_ids: Sequence[uuid.UUID]) -> int:
        with self.engine.connect() as conn:
            done = conn.execute(
                sa.text("SELECT count(*) FROM jobs WHERE id = ANY(:ids) AND status IN :t").bindparams(
                    sa.bindparam("t", expanding=True)
                ),
                {"ids": list(job_ids), "t": list(TERMINAL)},
            ).scalar_one()
        return len(set(job_ids)) - int(done)

    def snapshot(self) -> None:
        """Remember every written result's completed_at: a later rewrite of one counts as a duplicate."""
        with self.engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT id, completed_at FROM job_items WHERE status <> 'pending'"))
            self.snapshots.append({r.id: r.completed_at for r in rows})

    def verdict(self, fault: str, accepted: Sequence[uuid.UUID], recovery_s: float) -> Verdict:
        """lost = accepted jobs not terminal + items of finished jobs left pending or without a row (score jobs
        write their rows per chunk) + succeeded training jobs without their version; duplicates = extra item rows
        + results whose completed_at changed after a snapshot + extra versions registered by one training job."""
        ids = list(set(accepted))
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT id, kind, status, total_items, attempts, error_type FROM jobs WHERE id = ANY(:ids)"),
                {"ids": ids},
            )
            jobs = {r.id: r for r in rows}
            items = list(
                conn.execute(
                    sa.text("SELECT id, job_id, idx, status, completed_at FROM job_items WHERE job_id = ANY(:ids)"),
                    {"ids": ids},
                )
            )
            versions = dict(
                conn.execute(  # type: ignore[arg-type]
                    sa.text(
                        "SELECT CAST(params->>'job_id' AS uuid), count(*) FROM model_versions "
                        "WHERE params->>'job_id' = ANY(:ids) GROUP BY 1"
                    ),
                    {"ids": [str(j) for j in ids]},
                ).all()
            )
        terminal = sum(1 for j in jobs.values() if j.status in TERMINAL)
        finished = ("succeeded", "failed")
        pending_in_done = sum(1 for i in items if i.status == "pending" and jobs[i.job_id].status in finished)
        per_job: dict[uuid.UUID, int] = {}
        for i in items:
            per_job[i.job_id] = per_job.get(i.job_id, 0) + 1
        distinct = {(i.job_id, i.idx) for i in items}
        indices: dict[uuid.UUID, int] = {}
        for job_id, _ in distinct:
            indices[job_id] = indices.get(job_id, 0) + 1
        rowless = sum(max(0, j.total_items - indices.get(j.id, 0)) for j in jobs.values() if j.status in finished)
        trains = [j for j in jobs.values() if j.kind == "train"]
        unregistered = sum(1 for j in trains if j.status == "succeeded" and versions.get(j.id, 0) == 0)
        extra_rows = sum(max(0, n - jobs[j].total_items) for j, n in per_job.items())
        extra_rows += len(items) - len(distinct)
        extra_rows += sum(max(0, versions.get(j.id, 0) - 1) for j in trains)
        now = {i.id: i.completed_at for i in items}
        rewritten = sum(1 for snap in self.snapshots for k, at in snap.items() if k in now and now[k] != at)
        failed_jobs = [j for j in jobs.values() if j.status == "failed"]
        reasons: dict[str, int] = {}
        for j in failed_jobs:
            key = f"{j.error_type}@{j.attempts}"
            reasons[key] = reasons.get(key, 0) + 1
        return Verdict(
            fault=fault,
            accepted=len(ids),
            terminal=terminal,
            lost=len(ids) - terminal + pending_in_done + rowless + unregistered,
            duplicates=extra_rows + rewritten,
            failed=len(failed_jobs),
            recovery_s=recovery_s,
            reasons=", ".join(f"{k} x{n}" for k, n in sorted(reasons.items())),
        )
