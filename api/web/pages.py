"""The web app: pages at / served by the API process, signed in with an API key (see docs/webapp.md).

The pages are shells: their script reads and changes everything through the public REST API (/v1/...) with
the browser's session cookie, so the web app shows nothing an API client could not see.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Flask, Response, abort, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from api.auth import WEB_SESSIONS, principal_of_key
from api.deps import services
from api.web_sessions import COOKIE, SessionStore, WebSession, csrf_matches
from shared.config.settings import Settings
from shared.tenancy import apikeys

bp = Blueprint(
    "web",
    __name__.rsplit(".", 1)[0],
    template_folder="templates",
    static_folder="static",
    static_url_path="/static/web",
)

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)


def register_web(app: Flask, settings: Settings) -> None:
    """Serve the pages (unless INFERQ_WEB_ENABLED=false) with their Redis session store."""
    if not settings.web_enabled:
        return
    app.extensions[WEB_SESSIONS] = SessionStore(settings.broker_url(), settings.web_session_ttl_s)
    app.register_blueprint(bp)


def _store() -> SessionStore:
    from flask import current_app

    store: SessionStore = current_app.extensions[WEB_SESSIONS]
    return store


@bp.after_request
def _security_headers(resp: Response) -> Response:
    """Every page and file: a strict CSP (no inline script or style), no framing, no sniffing, no caching."""
    resp.headers["Content-Security-Policy"] = CSP
    resp.headers["X-Content-Type-Options"] = "nosniff"
    resp.headers["Referrer-Policy"] = "same-origin"
    resp.headers["X-Frame-Options"] = "DENY"
    if resp.mimetype == "text/html":
        resp.headers["Cache-Control"] = "no-store"
    return resp


def _set_cookie(resp: BaseResponse, sid: str) -> BaseResponse:
    settings = services().settings
    resp.set_cookie(
        COOKIE,
        sid,
        max_age=int(settings.web_session_ttl_s),
        httponly=True,
        samesite="Strict",
        secure=settings.web_cookie_secure or request.is_secure,
        path="/",
    )
    return resp


def _current() -> WebSession | None:
    return _store().get(request.cookies.get(COOKIE))


def _safe_next(target: str | None) -> str:
    """Where to go after sign-in: a path on this site only (no open redirect)."""
    parts = urlsplit(target or "")
    if target and target.startswith("/") and not target.startswith("//") and not parts.scheme and not parts.netloc:
        return target
    return url_for("web.page", name="classify")


def _signed_in(view: Callable[..., Any]) -> Callable[..., Any]:
    """Render the page for a signed-in browser (anyone when auth is off); others go to the sign-in page."""

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        web = _current()
        if not services().settings.auth_enabled:
            return view(web, None, *args, **kwargs)
        principal = principal_of_key(web.key_id) if web and web.key_id else None
        if web is None or principal is None:
            return redirect(url_for("web.signin", next=request.full_path.rstrip("?")))
        return view(web, principal.key_id, *args, **kwargs)

    return wrapper


@bp.get("/")
def home() -> BaseResponse:
    """The front door: the Classify page."""
    return redirect(url_for("web.page", name="classify"))


@bp.get("/signin")
def signin() -> BaseResponse:
    """The sign-in form, with a fresh pre-session holding its CSRF token."""
    sid, web = _store().create()
    body = render_template("signin.html", csrf=web.csrf, next=request.args.get("next", ""), error=None)
    return _set_cookie(Response(body, mimetype="text/html"), sid)


@bp.post("/signin")
def signin_post() -> BaseResponse:
    """Check the CSRF token and the API key; on success a new session (new id: no fixation) names the key."""
    store = _store()
    pre = _current()
    if pre is None or not csrf_matches(pre, request.form.get("csrf_token")):
        abort(403, "the sign-in form expired or was not sent by this site; reload the page")
    with services().sessions() as session:
        key = apikeys.authenticate(session=session, token=request.form.get("api_key", "").strip())
        key_id = key.id if key is not None else None
    if key_id is None:
        body = render_template(
            "signin.html", csrf=pre.csrf, next=request.form.get("next", ""), error="That API key is not valid."
        )
        return Response(body, status=401, mimetype="text/html")
    store.delete(request.cookies.get(COOKIE))
    sid, _ = store.create(key_id)
    return _set_cookie(redirect(_safe_next(request.form.get("next"))), sid)


@bp.post("/signout")
def signout() -> BaseResponse:
    """End the session (CSRF-checked) and forget the cookie."""
    web = _current()
    if web is not None and not csrf_matches(web, request.form.get("csrf_token")):
        abort(403, "the sign-out form was not sent by this site")
    _store().delete(request.cookies.get(COOKIE))
    resp = redirect(url_for("web.signin"))
    resp.delete_cookie(COOKIE, path="/", samesite="Strict", httponly=True)
    return resp


@bp.get("/jobs/<job_id>")
@_signed_in
def job_page(web: WebSession | None, key_id: str | None, job_id: str) -> str:
    """One job: its inputs, predictions, timings and webhook deliveries (read from /v1 by the page)."""
    return render_template("job.html", page="jobs", csrf=web.csrf if web else "", key_id=key_id, job_id=job_id)


@bp.get("/<any(classify, jobs, datasets, models, webhooks):name>")
@_signed_in
def page(web: WebSession | None, key_id: str | None, name: str) -> str:
    """A page of the nav."""
    return render_template(f"{name}.html", page=name, csrf=web.csrf if web else "", key_id=key_id)
