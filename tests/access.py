"""API keys for tests: make one in an app's database and a Flask test client that sends it on every request."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session, sessionmaker

from shared.db.engine import session_scope
from shared.tenancy import apikeys

if TYPE_CHECKING:
    from flask import Flask
    from flask.testing import FlaskClient

ALL_SCOPES: tuple[str, ...] = apikeys.SCOPES


def make_key(
    sessions: sessionmaker[Session], tenant_id: str = "default", scopes: Sequence[str] = ALL_SCOPES, name: str = "test"
) -> str:
    """A new API key (the full secret) of `tenant_id` with `scopes`, committed."""
    with session_scope(sessions) as session:
        _, key = apikeys.create_key(session=session, tenant_id=tenant_id, scopes=list(scopes), name=name)
    return key


def auth_headers(key: str) -> dict[str, str]:
    """The header that authenticates a request with `key`."""
    return {"Authorization": f"Bearer {key}"}


def keyed_client_class(key: str) -> type[FlaskClient]:
    """A FlaskClient class whose clients send `key` on every request (a request's own headers still win)."""
    from flask.testing import FlaskClient

    class KeyedClient(FlaskClient):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {key}"

    return KeyedClient


def use_key(app: Flask, tenant_id: str = "default", scopes: Sequence[str] = ALL_SCOPES) -> str:
    """Make a key in the app's database and have every `app.test_client()` send it; returns the key."""
    key = make_key(app.extensions["inferq"].sessions, tenant_id, scopes)
    app.test_client_class = keyed_client_class(key)
    return key


def client_for(app: Flask, tenant_id: str = "default", scopes: Sequence[str] = ALL_SCOPES) -> FlaskClient:
    """A test client of the app that authenticates as a new key of `tenant_id` with `scopes`."""
    key = make_key(app.extensions["inferq"].sessions, tenant_id, scopes)
    client: FlaskClient = keyed_client_class(key)(app, app.response_class, use_cookies=True)
    return client
