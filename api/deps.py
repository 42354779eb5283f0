"""Per-app services (settings, sessions, blob store, Celery client) and the per-request session."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery
from flask import Flask, current_app, g
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from shared.config.settings import Settings
from shared.db.engine import make_engine, make_sessionmaker
from shared.inputs.storage import BlobStore, make_store
from shared.jobs.backpressure import LaneGauge
from shared.registry.versions import KnownRefs
from shared.runtime.notify import FinishedWaiter
from shared.tenancy.apikeys import KeyCache


@dataclass
class Services:
    """What a request handler may use; built once per app."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: BlobStore
    celery: Celery
    waiter: FinishedWaiter
    known_refs: KnownRefs
    keys: KeyCache
    lane_gauge: LaneGauge


def register_services(app: Flask, settings: Settings, celery: Celery) -> None:
    """Build the engine, session factory and blob store; close the request session at teardown."""
    engine = make_engine(settings)
    app.extensions["inferq"] = Services(
        settings=settings,
        engine=engine,
        sessions=make_sessionmaker(engine),
        store=make_store(settings),
        celery=celery,
        waiter=FinishedWaiter(settings.broker_url()),
        known_refs=KnownRefs(settings.model_ref_ttl_s),
        keys=KeyCache(settings.api_key_cache_s),
        lane_gauge=LaneGauge(settings),
    )

    @app.teardown_appcontext
    def _close_session(_exc: BaseException | None) -> None:
        session = g.pop("db_session", None)
        if session is not None:
            session.close()


def services() -> Services:
    """The services of the current app."""
    svc: Services = current_app.extensions["inferq"]
    return svc


def db() -> Session:
    """The session of this request (one per request, closed at teardown)."""
    if "db_session" not in g:
        g.db_session = services().sessions()
    session: Session = g.db_session
    return session
