"""Bulk scoring as plain functions: read one chunk of a dataset from storage, predict in full batches, and
write the chunk's rows in one transaction (insert-or-ignore per (job_id, idx), so redelivery changes nothing)."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import numpy as np
from PIL import Image
from sqlalchemy import Exists, func, select, text, update
from sqlalchemy.orm import Session

from shared.config.errors import InferqError, ModelNotFound, ValidationFailed
from shared.config.settings import Settings
from shared.config.status import ItemStatus, JobStatus
from shared.db.engine import session_scope
from shared.db.models import Dataset, Job, JobItem, ModelVersion, utcnow
from shared.inputs.datasets import DIGIT_SHAPE, ArrayItems, StoredItem, iter_index, read_items
from shared.inputs.imaging import NO_INK, Prepared, confidence_warnings, prepare, prepare_image
from shared.jobs import lifecycle as jobstore
from shared.registry.versions import parse_ref, resolve
from shared.runtime import metrics
from worker.context import WorkerContext
from worker.runtime import LoadedModel

log = logging.getLogger(__name__)
_SLOTS: threading.BoundedSemaphore | None = None
_SLOTS_LOCK = threading.Lock()
_PASSES: threading.BoundedSemaphore | None = None  # bulk forward passes at once, when classify jobs share the model


def share_compute_with_interactive(passes: int) -> None:
    """Let at most `passes` bulk forward passes run at once in this process (0: no limit), because it serves
    classify jobs too (INFERQ_BULK_SHARED_PASSES).

    TensorFlow runs every op of every thread's forward pass on one pool of compute threads per process, first come
    first served. A classify job's batch-1 pass (2 ms alone) queued behind three 256-image bulk passes took 18 ms at
    the median and 44 ms at p90 on 2 cores; behind one at a time, 3.7 ms and 7.3 ms. The chunks' reading and
    writing still overlap: only their forward passes take turns."""
    global _PASSES
    _PASSES = threading.BoundedSemaphore(passes) if passes > 0 else None


def _forward(model: LoadedModel, x: np.ndarray) -> np.ndarray:
    """One bulk forward pass, taking its turn when this process shares the model with classify jobs."""
    gate = _PASSES
    if gate is None:
        return model.predict(x)
    with gate:
        return model.predict(x)


@dataclass(frozen=True)
class ChunkOutcome:
    """What one chunk task did (small, for Flower)."""

    job_id: str
    chunk: int
    status: str
    items: int = 0

    def as_dict(self) -> dict[str, str | int]:
        return {"job_id": self.job_id, "chunk": self.chunk, "status": self.status, "items": self.items}


def chunk_bounds(total: int, chunk_size: int, chunk_index: int) -> tuple[int, int]:
    """Item indices [lo, hi) of one chunk."""
    lo = chunk_index * chunk_size
    return lo, min(total, lo + chunk_size)


def chunk_count(total: int, chunk_size: int) -> int:
    """How many chunk tasks a dataset of `total` items needs."""
    return (total + chunk_size - 1) // chunk_size


def run_chunk(ctx: WorkerContext, job_id: uuid.UUID, chunk_index: int) -> ChunkOutcome:
    """Score one chunk of a score job; skipped when the job is terminal (e.g. canceled) or the chunk is done."""
    with _slots(ctx.settings.score_parallel_chunks):
        return _run_chunk(ctx, job_id, chunk_index)


def _slots(n: int) -> threading.BoundedSemaphore:
    """The per-process limit on chunks in progress, forward passes included (two overlap well: one pass leaves
    gaps the other fills; more threads only contend for the GIL and the cores)."""
    global _SLOTS
    with _SLOTS_LOCK:
        if _SLOTS is None:
            _SLOTS = threading.BoundedSemaphore(n)
        return _SLOTS


def _run_chunk(ctx: WorkerContext, job_id: uuid.UUID, chunk_index: int) -> ChunkOutcome:
    t0 = time.perf_counter()
    started = _start(ctx, job_id, chunk_index)
    if isinstance(started, ChunkOutcome):
        return started
    plan, lo, hi = started
    t1 = time.perf_counter()
    items = read_items(ctx.settings, plan.ds.id, plan.ds.layout, lo, hi)
    t2 = time.perf_counter()
    timings: dict[str, float] = {}
    rows = score_items(
        ctx.model(plan.mv),
        items,
        labels=list(plan.mv.labels),
        top_k=plan.top_k,
        batch=ctx.settings.score_batch,
        settings=ctx.settings,
        version_id=plan.mv.id,
        job_id=job_id,
        timings=timings,
    )
    t3 = time.perf_counter()
    with session_scope(ctx.sessions) as session:
        status = write_chunk(session, ctx.settings, job_id, rows)
    log.info(
        "job %s chunk %d: %d items; start %.3fs, read %.3fs, score %.3fs (forward passes %.3fs), write %.3fs",
        job_id,
        chunk_index,
        len(rows),
        t1 - t0,
        t2 - t1,
        t3 - t2,
        timings.get("predict", 0.0),
        time.perf_counter() - t3,
    )
    return ChunkOutcome(str(job_id), chunk_index, status, len(rows))


@dataclass(frozen=True)
class _JobPlan:
    """What every chunk of one job needs, resolved once per process (the model and dataset of a job never change)."""

    job_id: uuid.UUID
    total: int
    chunk_size: int
    top_k: int
    mv: ModelVersion
    ds: Dataset


_PLANS: dict[uuid.UUID, _JobPlan] = {}
_PLANS_MAX = 64


def _start(ctx: WorkerContext, job_id: uuid.UUID, chunk_index: int) -> tuple[_JobPlan, int, int] | ChunkOutcome:
    """Check the job first (terminal: skip) and whether the chunk is done; resolve model and dataset once per job."""
    with session_scope(ctx.sessions) as session:
        known = _PLANS.get(job_id)
        # once the job's plan is known, the done check rides along with the status read (one round trip)
        lo_known = chunk_bounds(known.total, known.chunk_size, chunk_index)[0] if known else -1
        found = session.execute(
            select(Job.status, _has_row(job_id, lo_known), Job.deadline_at).where(Job.id == job_id)
        ).one_or_none()
        if found is None:
            return ChunkOutcome(str(job_id), chunk_index, "missing")
        status, done, deadline_at = found
        if not JobStatus(status).is_terminal() and deadline_at is not None and deadline_at <= utcnow():
            status = JobStatus.EXPIRED.value if jobstore.expire_overdue(session, [job_id]) else status
        if JobStatus(status).is_terminal():
            return ChunkOutcome(str(job_id), chunk_index, f"skipped-{status}")
        plan = known or _plan(ctx, session, job_id)
        if isinstance(plan, ChunkOutcome):
            return ChunkOutcome(str(job_id), chunk_index, plan.status)
        lo, hi = chunk_bounds(plan.total, plan.chunk_size, chunk_index)
        if known is None:
            done = bool(session.scalar(select(_has_row(job_id, lo))))
        if hi <= lo or done:
            return ChunkOutcome(str(job_id), chunk_index, "already-done")
        if status == JobStatus.QUEUED.value:
            jobstore.set_status(session, job_id, JobStatus.RUNNING, model_version_id=plan.mv.id, started_at=utcnow())
        return plan, lo, hi


def _has_row(job_id: uuid.UUID, idx: int) -> Exists:
    """Whether item `idx` of the job has its row: a chunk's rows are written all at once, so its first row tells
    whether the chunk is done (a redelivery)."""
    return select(JobItem.id).where(JobItem.job_id == job_id, JobItem.idx == idx).exists()


def _plan(ctx: WorkerContext, session: Session, job_id: uuid.UUID) -> _JobPlan | ChunkOutcome:
    """Resolve a job's model version and dataset (failing the job if either is gone) and remember them."""
    job = jobstore.get_job(session, job_id)
    ds = session.get(Dataset, uuid.UUID(job.params["dataset_id"]))
    try:
        if ds is None:
            raise ValidationFailed(f"dataset {job.params['dataset_id']} no longer exists")
        mv = resolve(
            session, parse_ref(job.model_ref), default_alias=ctx.settings.default_alias, tenant_id=job.tenant_id
        )
    except (ModelNotFound, ValidationFailed) as exc:
        jobstore.fail_job(session, job_id, exc.type_slug, exc.detail)
        return ChunkOutcome(str(job_id), -1, JobStatus.FAILED.value)
    session.expunge(mv)
    session.expunge(ds)
    plan = _JobPlan(job_id, job.total_items, int(job.params["chunk_size"]), int(job.params.get("top_k", 1)), mv, ds)
    if len(_PLANS) >= _PLANS_MAX:
        _PLANS.pop(next(iter(_PLANS)))
    _PLANS[job_id] = plan
    return plan


def to_input(item: StoredItem, settings: Settings) -> Prepared:
    """One item as a float32 (28, 28) model input with what was noticed; raises an InferqError if it cannot be
    decoded. A 28x28 array item is taken as MNIST-shaped already: nothing lit is `no-ink`."""
    if item.pixels is not None:
        px = item.pixels
        if px.shape == DIGIT_SHAPE:
            return Prepared(px.astype(np.float32) / 255.0, () if px.any() else (NO_INK,))
        return prepare_image(Image.fromarray(px, mode="L"))
    if item.data is None:
        raise InvalidInput("the stored bytes of this item are missing")
    return prepare(item.data, max_pixels=settings.max_image_pixels)


@dataclass(frozen=True)
class ChunkInputs:
    """A chunk's items sorted by what happens to them: model inputs, nothing to read, or undecodable."""

    x: np.ndarray  # (N, 28, 28) float32: the readable items' inputs
    items: list[StoredItem]  # the readable items, aligned with x
    warnings: list[tuple[str, ...]]  # preprocessing's warnings of the readable items, aligned with x
    unreadable: list[tuple[StoredItem, tuple[str, ...]]]  # succeed with a null label and these warnings
    bad: list[tuple[StoredItem, InferqError]]


def to_inputs(items: Sequence[StoredItem], settings: Settings) -> ChunkInputs:
    """A chunk's model inputs, and its items that have nothing to read or could not be decoded.

    A chunk of an array dataset of 28x28 digits is scaled in one operation (all-zero items are `no-ink`); anything
    else goes item by item."""
    whole = items.block if isinstance(items, ArrayItems) else None  # the chunk's pixels as read, items are views
    if whole is not None and whole.shape[1:] == DIGIT_SHAPE:
        block = whole
    elif items and all(it.pixels is not None and it.pixels.shape == DIGIT_SHAPE for it in items):
        block = np.stack([it.pixels for it in items])  # type: ignore[misc]  # checked just above
    else:
        block = None
    if block is not None:
        lit = np.asarray(block.reshape(len(block), -1).any(axis=1), dtype=bool)
        blank: list[tuple[StoredItem, tuple[str, ...]]] = []
        if not lit.all():  # rare: sort out the blank items, still without a per-item loop over pixels
            on: list[bool] = lit.tolist()
            blank = [(item, (NO_INK,)) for item, keep in zip(items, on, strict=True) if not keep]
            items, block = [item for item, keep in zip(items, on, strict=True) if keep], block[lit]
        x = block.astype(np.float32) * np.float32(1 / 255.0)
        return ChunkInputs(x, list(items), [()] * len(items), blank, [])
    arrays, ok, noticed, unreadable, bad = [], [], [], [], []
    for item in items:
        try:
            prepared = to_input(item, settings)
        except InferqError as exc:
            bad.append((item, exc))
            continue
        if not prepared.readable:
            unreadable.append((item, prepared.warnings))
            continue
        arrays.append(prepared.image)
        ok.append(item)
        noticed.append(prepared.warnings)
    x = np.stack(arrays) if arrays else np.zeros((0, *DIGIT_SHAPE), np.float32)
    return ChunkInputs(x, ok, noticed, unreadable, bad)


class InvalidInput(InferqError):
    type_slug, title, status = "input-missing", "The stored input is gone", 422


@dataclass(frozen=True)
class _Pass:
    """One forward pass's readable items and their top-k, kept as columns: a dict per row (and a dict per ranked
    label) cost more than the forward pass of its image."""

    items: Sequence[StoredItem]
    noticed: Sequence[tuple[str, ...]]  # preprocessing's warnings, aligned with items
    order: list[list[int]]  # the top-k output indices of each item, best first
    confidences: list[list[float]]  # their probabilities (Python floats, as json would write them)
    width: int  # the model's outputs (labels) per item


class ChunkRows:
    """A chunk's item rows: a few as dicts (undecodable and unreadable items), the predictions as the columns of
    their forward passes. `copy_text()` writes them as COPY text straight from the columns; `dicts()` gives every
    row as a dict (insert-or-ignore off PostgreSQL, and tests); both say the same thing."""

    def __init__(
        self,
        job_id: uuid.UUID,
        now: Any,
        *,
        version_id: int | None,
        labels: Sequence[str] = (),
        threshold: float = 0.0,
        other: Sequence[dict[str, Any]] = (),
    ) -> None:
        self.job_id, self.now, self.version_id = job_id, now, version_id
        self.labels, self.threshold = list(labels), threshold
        self.other = list(other)
        self.passes: list[_Pass] = []

    @classmethod
    def of(cls, job_id: uuid.UUID, rows: Sequence[dict[str, Any]]) -> ChunkRows:
        """Rows built as dicts already (each with its own model_version_id)."""
        out = cls(job_id, None, version_id=None)
        out.other = list(rows)
        return out

    def add_pass(
        self, items: Sequence[StoredItem], noticed: Sequence[tuple[str, ...]], probs: np.ndarray, k: int
    ) -> None:
        """Record one forward pass's outputs (their top k) for its items."""
        order = np.argsort(-probs, axis=1)[:, :k]
        confidences = np.take_along_axis(probs, order, axis=1).tolist()
        self.passes.append(_Pass(items, noticed, order.tolist(), confidences, int(probs.shape[1])))

    def __len__(self) -> int:
        return len(self.other) + sum(len(p.items) for p in self.passes)

    @property
    def idxs(self) -> list[int]:
        return [int(r["idx"]) for r in self.other] + [int(it.idx) for p in self.passes for it in p.items]

    @property
    def failed(self) -> int:
        """Rows that record an error (undecodable items)."""
        return sum(1 for r in self.other if r["error_type"])

    def _names(self, p: _Pass) -> list[str]:
        return [_name(self.labels, i) for i in range(p.width)]

    def dicts(self) -> list[dict[str, Any]]:
        """Every row as the dict `_row` makes (the dict rows first, then each pass's in order)."""
        rows = list(self.other)
        for p in self.passes:
            names = self._names(p)
            for item, noticed, o, c in zip(p.items, p.noticed, p.order, p.confidences, strict=True):
                ranked = [{"label": names[i], "confidence": conf} for i, conf in zip(o, c, strict=True)]
                row = _row(
                    self.job_id,
                    item,
                    self.now,
                    label=ranked[0]["label"],
                    confidence=ranked[0]["confidence"],
                    top_k=ranked,
                    warnings=confidence_warnings(noticed, c[0], self.threshold),
                    batch_size=len(p.items),
                )
                row["model_version_id"] = self.version_id
                rows.append(row)
        return rows

    def copy_text(self) -> str:
        """Every row as COPY text, as copy_payload(self.dicts()) writes it, without building the dicts."""
        out = [copy_payload(self.other)] if self.other else []
        if not self.passes:
            return "".join(out)
        job_text = str(self.job_id)
        version = _NULL if self.version_id is None else str(int(self.version_id))
        at = _NULL if self.now is None else self.now.isoformat()
        warned: dict[tuple[tuple[str, ...], bool], str] = {}  # (noticed, low confidence) -> the warnings' JSON
        json_cache: dict[tuple[str, ...], str] = {}
        succeeded = _copy_text(ItemStatus.SUCCEEDED.value)
        for p in self.passes:
            names = self._names(p)
            labels = [_copy_text(n) for n in names]
            entries = [f'{{"label": {_copy_text(json.dumps(n))}, "confidence": ' for n in names]
            tail = f"\t\\N\t\\N\t{version}\t{len(p.items)}\t{at}\n"
            k = len(p.order[0]) if p.order else 0
            reprs = list(map(repr, chain.from_iterable(p.confidences)))  # each confidence as json writes it
            tops = [
                "[" + ", ".join([f"{entries[i]}{r}}}" for i, r in zip(o, reprs[n * k : n * k + k], strict=True)]) + "]"
                for n, o in enumerate(p.order)
            ]
            lines = []
            for n, (item, noticed, o) in enumerate(zip(p.items, p.noticed, p.order, strict=True)):
                first = p.confidences[n][0]
                key = (noticed, first < self.threshold)
                warn = warned.get(key)
                if warn is None:
                    warn = warned[key] = _warnings_text(confidence_warnings(noticed, first, self.threshold), json_cache)
                lines.append(
                    f"{job_text}\t{int(item.idx)}\t{_copy_text(item.custom_id[:255])}\t{succeeded}\t{labels[o[0]]}\t"
                    f"{reprs[n * k]}\t{tops[n]}\t{warn}{tail}"
                )
            out.append("".join(lines))
        return "".join(out)


def score_items(
    model: LoadedModel,
    items: Sequence[StoredItem],
    *,
    labels: list[str],
    top_k: int,
    batch: int,
    settings: Settings,
    version_id: int | None,
    job_id: uuid.UUID,
    timings: dict[str, float] | None = None,
) -> ChunkRows:
    """One JobItem row per item: a prediction with its warnings (a null label, and no forward pass, when there is
    nothing to read), or the reason it could not be decoded.

    `timings`, if given, receives the seconds spent in forward passes ("predict")."""
    spent = timings if timings is not None else {}
    now = utcnow()
    chunk = to_inputs(items, settings)
    x, ok_items = chunk.x, chunk.items
    rows = [_row(job_id, item, now, error_type=exc.type_slug, error=exc.detail[:1000]) for item, exc in chunk.bad]
    rows.extend(_row(job_id, item, now, warnings=list(noticed)) for item, noticed in chunk.unreadable)
    for r in rows:
        r["model_version_id"] = version_id
    out = ChunkRows(
        job_id, now, version_id=version_id, labels=labels, threshold=settings.low_confidence_threshold, other=rows
    )
    for start in range(0, len(ok_items), batch):
        began = time.perf_counter()
        probs = _forward(model, x[start : start + batch])
        spent["predict"] = spent.get("predict", 0.0) + time.perf_counter() - began
        if metrics.enabled:
            metrics.BATCH_SIZE.labels("score").observe(len(probs))
        out.add_pass(ok_items[start : start + batch], chunk.warnings[start : start + batch], probs, top_k)
    return out


def _name(labels: list[str], i: int) -> str:
    return labels[i] if i < len(labels) else str(i)


def _row(job_id: uuid.UUID, item: StoredItem, now: Any, **fields: Any) -> dict[str, Any]:
    status = ItemStatus.FAILED if fields.get("error_type") else ItemStatus.SUCCEEDED
    base: dict[str, Any] = {
        "job_id": job_id,
        "idx": item.idx,
        "filename": item.custom_id[:255],
        "input_key": None,
        "status": status.value,
        "label": None,
        "confidence": None,
        "top_k": None,
        "warnings": None if status is ItemStatus.FAILED else [],  # every prediction has a list
        "error_type": None,
        "error": None,
        "batch_size": None,
        "completed_at": now,
    }
    base.update(fields)
    return base


ROW_COLUMNS = (
    "job_id",
    "idx",
    "filename",
    "status",
    "label",
    "confidence",
    "top_k",
    "warnings",
    "error_type",
    "error",
    "model_version_id",
    "batch_size",
    "completed_at",
)
# COPY's text format: backslash, tab, newline and carriage return are escaped; NUL cannot be stored in text at all
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r", "\x00": "\ufffd"})


_NULL = "\\N"


def _copy_text(value: object) -> str:
    """One field of a COPY text row; None is NULL."""
    if value is None:
        return _NULL
    return str(value).translate(_COPY_ESCAPES)


def _warnings_text(warnings: Sequence[str] | None, known: dict[tuple[str, ...], str]) -> str:
    """A row's warnings as a COPY field of JSON text, as json.dumps would write them (a chunk has a handful of
    distinct lists, each serialized once); None is NULL."""
    if warnings is None:
        return _NULL
    key = tuple(warnings)
    text = known.get(key)
    if text is None:
        text = known[key] = _copy_text(json.dumps(list(key)))
    return text


def copy_payload(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as COPY text (one string, one write), with top_k and warnings serialized as json.dumps would.

    Per-row psycopg `write_row` plus `json.dumps` cost ~25 us a row, more than the forward pass of an image."""
    entries: dict[str, str] = {}  # label -> '{"label": <its JSON, COPY-escaped>, "confidence": ', once a chunk
    texts: dict[object, str] = {}  # job id and timestamp: the same object for every row of a chunk
    warned: dict[tuple[str, ...], str] = {}  # warnings list -> its JSON, COPY-escaped, once a chunk
    lines = []
    for r in rows:
        job, at = r["job_id"], r["completed_at"]
        job_text = texts.get(job) or texts.setdefault(job, str(job))
        at_text = _NULL if at is None else (texts.get(at) or texts.setdefault(at, at.isoformat()))
        top = r["top_k"]
        if top is None:
            top_json = _NULL
        else:
            parts = []
            for t in top:
                entry = entries.get(t["label"])
                if entry is None:
                    entry = entries[t["label"]] = f'{{"label": {_copy_text(json.dumps(t["label"]))}, "confidence": '
                parts.append(f"{entry}{float(t['confidence'])!r}}}")
            top_json = f"[{', '.join(parts)}]"
        confidence, version, size = r["confidence"], r["model_version_id"], r["batch_size"]
        lines.append(
            f"{job_text}\t{int(r['idx'])}\t{_copy_text(r['filename'])}\t{_copy_text(r['status'])}\t"
            f"{_copy_text(r['label'])}\t{_NULL if confidence is None else repr(float(confidence))}\t{top_json}\t"
            f"{_warnings_text(r.get('warnings'), warned)}\t{_copy_text(r['error_type'])}\t{_copy_text(r['error'])}\t"
            f"{_NULL if version is None else int(version)}\t{_NULL if size is None else int(size)}\t"
            f"{at_text}\n"
        )
    return "".join(lines)


def insert_rows(session: Session, rows: ChunkRows | Sequence[dict[str, Any]]) -> None:
    """Insert a chunk's item rows: one COPY on PostgreSQL (the fast path), insert-or-ignore elsewhere."""
    if not rows:
        return
    if session.get_bind().dialect.name != "postgresql":
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(JobItem).on_conflict_do_nothing(index_elements=["job_id", "idx"])
        session.execute(stmt, rows.dicts() if isinstance(rows, ChunkRows) else list(rows))
        return
    payload = rows.copy_text() if isinstance(rows, ChunkRows) else copy_payload(rows)
    raw: Any = session.connection().connection.driver_connection
    with raw.cursor() as cur, cur.copy(f"COPY job_items ({', '.join(ROW_COLUMNS)}) FROM STDIN") as copy:
        copy.write(payload.encode())


def _wait_for_wal(session: Session, wait: bool) -> None:
    """PostgreSQL's synchronous_commit for this transaction only.

    Off for a chunk that does not finish its job: the commit returns before its WAL reaches the disk, so bulk rows do
    not hold up the fsyncs of interactive jobs' commits. What it risks is narrow and repaired: if PostgreSQL itself
    crashes within ~3 x wal_writer_delay, the last chunks' rows and counts are lost together (never torn), and the
    reconciler publishes the job's chunks without rows again once its running lease passes. The transaction that
    finishes a job always waits: a finished job is never un-finished by a crash."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL synchronous_commit TO {'on' if wait else 'off'}"))


def write_chunk(
    session: Session, settings: Settings, job_id: uuid.UUID, rows: ChunkRows | Sequence[dict[str, Any]]
) -> str:
    """In one transaction: lock the job row; unless the chunk's rows exist already, insert them and add them to
    the counts; finish the job with its summary when every item has a row.

    Every write of a job's rows holds the job's row lock and a chunk's rows are written all at once, so the
    existence check cannot race; the (job_id, idx) unique key stays as the backstop."""
    status, total = session.execute(select(Job.status, Job.total_items).where(Job.id == job_id).with_for_update()).one()
    counted = None
    if rows and settings.bulk_async_commit:
        _wait_for_wal(session, False)  # a chunk's rows: its commit does not wait for the disk (see _wait_for_wal)
    if rows:
        chunk = rows if isinstance(rows, ChunkRows) else ChunkRows.of(job_id, rows)
        idxs = chunk.idxs
        present = session.scalar(
            select(JobItem.id)
            .where(JobItem.job_id == job_id, JobItem.idx >= min(idxs), JobItem.idx <= max(idxs))
            .limit(1)
        )
        if present is None:
            insert_rows(session, chunk)
            failed = chunk.failed
            if metrics.enabled:
                metrics.IMAGES.labels("succeeded").inc(len(rows) - failed)
                metrics.IMAGES.labels("failed").inc(failed)
            counted = session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(
                    completed_items=Job.completed_items + len(rows) - failed, failed_items=Job.failed_items + failed
                )
                .returning(Job.completed_items, Job.failed_items)
                .execution_options(synchronize_session=False)
            ).one()
    if counted is None:
        counted = session.execute(select(Job.completed_items, Job.failed_items).where(Job.id == job_id)).one()
    ok, bad = counted
    if ok + bad < total or JobStatus(status).is_terminal():
        return str(status)
    _wait_for_wal(session, True)  # the job finishes: a client may see it at once, so this commit is durable first
    if ok == 0:
        jobstore.set_status(
            session,
            job_id,
            JobStatus.FAILED,
            error_type="all-items-failed",
            error=f"none of the {bad} items could be scored; see the job's error file",
        )
        return JobStatus.FAILED.value
    summary = summarize(session, settings, jobstore.get_job(session, job_id))
    jobstore.set_status(session, job_id, JobStatus.SUCCEEDED, result=summary)
    return JobStatus.SUCCEEDED.value


def _predicted(session: Session, job_id: uuid.UUID, page: int = 2000) -> Iterator[tuple[int, str, str | None]]:
    """(idx, status, predicted label) of every item row, in index order, paged."""
    after = -1
    while True:
        q = (
            select(JobItem.idx, JobItem.status, JobItem.label)
            .where(JobItem.job_id == job_id, JobItem.idx > after)
            .order_by(JobItem.idx)
            .limit(page)
        )
        batch = session.execute(q).all()
        if not batch:
            return
        yield from ((int(i), str(s), lbl) for i, s, lbl in batch)
        after = int(batch[-1][0])


def summarize(session: Session, settings: Settings, job: Job) -> dict[str, Any]:
    """The job's summary: items with nothing to read (null label), and accuracy plus a confusion matrix over the
    items that got a label when the dataset is labelled."""
    ds = session.get(Dataset, uuid.UUID(job.params["dataset_id"]))
    unreadable = select(func.count()).where(
        JobItem.job_id == job.id, JobItem.status == ItemStatus.SUCCEEDED.value, JobItem.label.is_(None)
    )
    summary: dict[str, Any] = {"dataset_id": job.params["dataset_id"], "unreadable_items": session.scalar(unreadable)}
    if ds is None or not ds.labelled:
        return summary
    truth = iter_index(settings, ds.id, ds.layout)  # merge-joined in index order: memory stays flat
    pending: tuple[int, str, str | None] = (-1, "", None)
    matrix: dict[str, dict[str, int]] = {}
    correct = scored = 0
    for idx, status, pred in _predicted(session, job.id):
        while pending[0] < idx:
            pending = next(truth, (1 << 62, "", None))
        true = pending[2] if pending[0] == idx else None
        if status != ItemStatus.SUCCEEDED.value or true is None or pred is None:
            continue
        scored += 1
        correct += int(true == pred)
        row = matrix.setdefault(true, {})
        row[pred] = row.get(pred, 0) + 1
    names = sorted(set(matrix) | {p for r in matrix.values() for p in r})
    summary.update(
        accuracy=correct / scored if scored else None,
        labelled_items=scored,
        confusion_matrix={"labels": names, "matrix": [[matrix.get(t, {}).get(p, 0) for p in names] for t in names]},
    )
    return summary


def fail_chunk(
    ctx: WorkerContext, job_id: uuid.UUID, chunk_index: int, detail: str, *, error_type: str = "worker-error"
) -> None:
    """Record every item of a chunk that kept failing as an error row (the job can still finish)."""
    with session_scope(ctx.sessions) as session:
        job = session.get(Job, job_id)
        if job is None:
            return
        lo, hi = chunk_bounds(job.total_items, int(job.params["chunk_size"]), chunk_index)
        now = utcnow()
        rows = [
            _row(job_id, StoredItem(i, str(i), None), now, error_type=error_type, error=detail[:1000])
            for i in range(lo, hi)
        ]
        for r in rows:
            r["model_version_id"] = None
        write_chunk(session, ctx.settings, job_id, rows)
