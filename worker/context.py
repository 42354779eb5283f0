"""What one worker process holds: settings, DB sessions, blob store, loaded models and their batchers."""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
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
from shared.inputs.storage import make_store
from shared.jobs.lifecycle import ItemResult, settle_jobs, write_results
from shared.registry.versions import parse_ref, resolve
from shared.runtime import metrics
from shared.runtime.notify import FinishedPublisher
from worker.batcher import MicroBatcher, SinkFn
from worker.runtime import LoadedModel, ModelCache, load_model

log = logging.getLogger(__name__)

SinkFactory = Callable[[ModelVersion, LoadedModel], SinkFn]  # makes a version's batcher sink, given its model


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

    def batcher(self, mv: ModelVersion, make_sink: SinkFactory) -> MicroBatcher:
        """The micro-batcher feeding this version's model (one thread per loaded version, LRU-bounded). When it is
        first made, `make_sink(mv, model)` gives the function that records each forward pass's outputs
        (worker/inference.py:classify_sink)."""
        evicted: list[MicroBatcher] = []
        try:
            with self._lock:
                return self._batcher_locked(mv, make_sink, evicted)
        finally:
            for b in evicted:  # outside the lock: close() drains the batcher's queue first
                b.close()

    def _batcher_locked(self, mv: ModelVersion, make_sink: SinkFactory, evicted: list[MicroBatcher]) -> MicroBatcher:
        if mv.id in self._batchers:
            self._batchers.move_to_end(mv.id)
            return self._batchers[mv.id]
        model = self.model(mv)
        self._batchers[mv.id] = MicroBatcher(
            self._bounded(model.predict),
            max_batch=self.settings.max_batch,
            max_wait_s=self.settings.max_batch_wait_ms / 1000.0,
            sink=make_sink(mv, model),
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
            finished = settle_jobs(
                session, sorted(job_ids), version_id, progress_interval_s=self.settings.webhook_progress_interval_s
            )
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
