"""What one worker process holds: settings, DB sessions, blob store, loaded models and their batchers."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import retry, retry_if_exception_type, stop_after_attempt, wait_exponential

from shared.config.settings import Settings
from shared.config.status import JobStatus
from shared.db.engine import make_engine, make_sessionmaker, session_scope
from shared.db.models import ModelVersion
from shared.inputs.imaging import confidence_warnings
from shared.inputs.storage import make_store
from shared.jobs.lifecycle import ItemResult, settle_jobs, write_results
from shared.registry.versions import parse_ref, resolve
from shared.runtime import metrics
from shared.runtime.heap import freeze_startup_heap
from shared.runtime.notify import FinishedPublisher
from worker.batcher import MicroBatcher, Request, SinkFn
from worker.explain import explain_results
from worker.runtime import LoadedModel, ModelCache, load_model

log = logging.getLogger(__name__)


def top_k(probs: np.ndarray, labels: Sequence[str], k: int) -> list[dict[str, Any]]:
    """The k most likely labels of one output row, best first."""
    order = np.argsort(-probs)[:k]
    return [{"label": labels[i] if i < len(labels) else str(i), "confidence": float(probs[i])} for i in order]


class WorkerContext:
    """Built lazily once per worker process (after any fork), shared by its task threads."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine: Engine = make_engine(settings)
        self.sessions: sessionmaker[Session] = make_sessionmaker(self.engine)
        self.store = make_store(settings)
        self.models = ModelCache(settings.model_cache_size)
        self._batchers: OrderedDict[int, MicroBatcher] = OrderedDict()  # LRU, at most model_cache_size
        self._lock = threading.Lock()
        self._resolved: dict[tuple[str, str], tuple[float, ModelVersion]] = {}
        self.finished = FinishedPublisher(settings.broker_url())

    def resolve(self, model_ref: str, tenant_id: str) -> ModelVersion:
        """The version a job's model reference points at, remembered for INFERQ_MODEL_REF_TTL_S (so an alias move
        reaches running workers within that time, and jobs don't pay a registry query each)."""
        key, now = (model_ref, tenant_id), time.monotonic()
        hit = self._resolved.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        with self.sessions() as session:
            mv = resolve(session, parse_ref(model_ref), default_alias=self.settings.default_alias, tenant_id=tenant_id)
        self._resolved[key] = (now + self.settings.model_ref_ttl_s, mv)
        return mv

    def artifact_path(self, mv: ModelVersion) -> Path:
        """The local file of a version's artifact (relative URIs live under data_dir)."""
        path = Path(mv.artifact_uri)
        return path if path.is_absolute() else self.settings.data_dir / path

    def model(self, mv: ModelVersion) -> LoadedModel:
        """The loaded model of a version, from the per-process cache."""
        return self.models.get((mv.name, mv.version, mv.variant), lambda: self._load(mv))

    def _load(self, mv: ModelVersion) -> LoadedModel:
        """Load a version's artifact; with metrics on, its forward passes are timed (inferq_forward_seconds)."""
        model = load_model(self.artifact_path(mv), mv.format)
        if not metrics.enabled:
            return model
        metrics.MODEL_LOADS.inc()
        return TimedModel(model, metrics.FORWARD.labels(mv.name, str(mv.version), mv.format))

    def batcher(self, mv: ModelVersion) -> MicroBatcher:
        """The micro-batcher feeding this version's model (one thread per loaded version, LRU-bounded)."""
        evicted: list[MicroBatcher] = []
        try:
            with self._lock:
                return self._batcher_locked(mv, evicted)
        finally:
            for b in evicted:  # outside the lock: close() drains the batcher's queue first
                b.close()

    def _batcher_locked(self, mv: ModelVersion, evicted: list[MicroBatcher]) -> MicroBatcher:
        if mv.id in self._batchers:
            self._batchers.move_to_end(mv.id)
            return self._batchers[mv.id]
        model = self.model(mv)
        self._batchers[mv.id] = MicroBatcher(
            self._bounded(model.predict),
            max_batch=self.settings.max_batch,
            max_wait_s=self.settings.max_batch_wait_ms / 1000.0,
            sink=self._sink(mv.id, list(mv.labels), model),
            name=f"batcher-{mv.ref}",
        )
        while len(self._batchers) > self.settings.model_cache_size:
            old_id, old = self._batchers.popitem(last=False)
            log.info("closing the batcher of model version id %s (INFERQ_MODEL_CACHE_SIZE)", old_id)
            evicted.append(old)
        return self._batchers[mv.id]

    def _bounded(self, predict: Any) -> Any:
        """The threads pool cannot kill a hung forward pass: past INFERQ_TASK_TIME_LIMIT the process exits, so its
        unacked messages are redelivered (or re-dispatched by the reconciler) and counted as attempts."""
        limit = self.settings.task_time_limit

        def bounded(batch: np.ndarray) -> np.ndarray:
            timer = threading.Timer(limit, _hard_limit_exceeded, args=(limit, len(batch)))
            timer.daemon = True
            timer.start()
            try:
                return predict(batch)
            finally:
                timer.cancel()

        return bounded

    def _sink(self, version_id: int, labels: list[str], model: LoadedModel | None = None) -> SinkFn:
        threshold = self.settings.low_confidence_threshold

        def sink(requests: Sequence[Request], outputs: Sequence[np.ndarray], batch_size: int) -> None:
            results = [
                ItemResult(
                    item_id=item_id,
                    label=t[0]["label"],
                    confidence=t[0]["confidence"],
                    top_k=t,
                    warnings=confidence_warnings(noticed, t[0]["confidence"], threshold),
                    batch_size=batch_size,
                )
                for req, out in zip(requests, outputs, strict=True)
                for item_id, row, noticed in zip(req.tag.item_ids, out, _noticed(req.tag), strict=True)
                for t in [top_k(row, labels, req.tag.top_k)]
            ]
            if model is not None:
                results = explain_results(
                    model, requests, outputs, results, patch=self.settings.explain_occlusion_patch
                )
            finished = self.commit_results(results, version_id, {req.tag.job_id for req in requests})
            for req in requests:
                if req.tag.job_id in finished:
                    req.tag.finished.append(finished[req.tag.job_id].value)

        return sink

    @retry(
        retry=retry_if_exception_type(OperationalError),
        stop=stop_after_attempt(5),
        wait=wait_exponential(multiplier=0.2, max=5),
        reraise=True,
    )
    def commit_results(
        self, results: Sequence[ItemResult], version_id: int | None, job_ids: set[uuid.UUID]
    ) -> dict[uuid.UUID, JobStatus]:
        """Write a batch's results and finish the jobs it completed, in one transaction (retried if the DB blips),
        then wake the long polls waiting for those jobs; returns the jobs that finished."""
        with session_scope(self.sessions) as session:
            write_results(session, results, version_id)
            finished = settle_jobs(session, sorted(job_ids), version_id)
        self.finished.publish(finished)
        return finished

    def close(self) -> None:
        for b in self._batchers.values():
            b.close()
        self.finished.close()
        self.engine.dispose()


class TimedModel:
    """A loaded model whose predict() is timed into a histogram child; everything else is the model's."""

    def __init__(self, model: LoadedModel, forward: Any) -> None:
        self._model, self._forward = model, forward

    def predict(self, batch: np.ndarray) -> np.ndarray:
        with self._forward.time():
            return self._model.predict(batch)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _noticed(tag: Any) -> Sequence[tuple[str, ...]]:
    """Preprocessing's warnings per item of a batcher request (none recorded: nothing noticed)."""
    return getattr(tag, "warnings", None) or [()] * len(tag.item_ids)


def _hard_limit_exceeded(limit: int, size: int) -> None:
    """A forward pass outlived the hard time limit: exit the whole process (its supervisor restarts it)."""
    log.critical("a forward pass of %d images ran over INFERQ_TASK_TIME_LIMIT (%ss); exiting the worker", size, limit)
    logging.shutdown()
    os._exit(70)


_context: WorkerContext | None = None
_context_lock = threading.Lock()
_settings: Settings | None = None


def configure(settings: Settings) -> None:
    """Record the settings this process's context will be built from."""
    global _settings
    _settings = settings


def get_context() -> WorkerContext:
    """This process's context, built on first use (so it is made after the fork, in the child)."""
    global _context
    with _context_lock:
        if _context is None:
            _context = WorkerContext(_settings or Settings())
        return _context


def warm_up() -> None:
    """Load the default model and start its batcher (failures are logged: jobs will report them)."""
    ctx = get_context()
    try:
        with ctx.sessions() as session:
            mv = resolve(session, parse_ref(ctx.settings.default_model), default_alias=ctx.settings.default_alias)
        ctx.batcher(mv)
        log.info("default model %s loaded", mv.ref)
    except Exception as exc:  # no model yet, or a broken artifact: not fatal for the worker
        log.warning("could not preload the default model: %s", exc)
    freeze_startup_heap()  # TensorFlow's objects and the model's, out of every later full collection
