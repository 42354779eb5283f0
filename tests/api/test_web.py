"""The web app's rules, on the Flask test client: sign-in with a key, server-side session, CSRF, CSP."""

from __future__ import annotations

import io
import re
import uuid
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from api.web_sessions import COOKIE, CSRF_HEADER
from shared.db.engine import session_scope
from shared.db.models import Job
from shared.tenancy import apikeys
from tests.access import make_key
from tests.api.conftest import AppFactory
from tests.factories import assert_problem, png_bytes, post_files, services_of

STATIC = Path(__file__).resolve().parents[2] / "api" / "web" / "static"


@pytest.fixture
def web_app(make_app: AppFactory, redis_url: str) -> Flask:
    """The app on a real Redis (web sessions live there)."""
    return make_app(redis_url=redis_url)


@pytest.fixture
def browser(web_app: Flask) -> FlaskClient:
    """A client like a browser: cookies, and no API key header."""
    return FlaskClient(web_app, web_app.response_class, use_cookies=True)


def csrf_of(resp: TestResponse) -> str:
    found = re.search(r'name="csrf-token" content="([^"]+)"', resp.get_data(as_text=True)) or re.search(
        r'name="csrf_token" value="([^"]+)"', resp.get_data(as_text=True)
    )
    assert found, "the page carries no CSRF token"
    return found.group(1)


def sign_in(browser: FlaskClient, key: str) -> str:
    """Sign in through the form; returns the signed-in page's CSRF token."""
    form = browser.get("/signin")
    resp = browser.post("/signin", data={"csrf_token": csrf_of(form), "api_key": key, "next": "/jobs"})
    assert resp.status_code == 302 and resp.headers["Location"] == "/jobs"
    return csrf_of(browser.get("/classify"))


def test_pages_need_a_session_and_send_a_strict_csp(browser: FlaskClient) -> None:
    """A page without a session redirects to sign-in; every page has a CSP without inline script or style."""
    resp = browser.get("/models")
    assert resp.status_code == 302 and resp.headers["Location"].startswith("/signin?next=/models")
    page = browser.get("/signin")
    csp = page.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    assert page.headers["X-Content-Type-Options"] == "nosniff" and page.headers["Cache-Control"] == "no-store"
    html = page.get_data(as_text=True)
    assert not re.search(r"<script(?![^>]*\bsrc=)", html) and " style=" not in html  # nothing inline


def test_the_session_cookie_is_httponly_strict_and_holds_no_key(web_app: Flask, browser: FlaskClient) -> None:
    """Sign-in replaces the pre-session (new id), and neither the cookie nor any page contains the key."""
    key = make_key(services_of(web_app).sessions)
    pre = browser.get("/signin").headers["Set-Cookie"]
    form = browser.get("/signin")
    resp = browser.post("/signin", data={"csrf_token": csrf_of(form), "api_key": key})
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and key not in cookie
    assert cookie.split(";")[0] != pre.split(";")[0]
    for path in ("/classify", "/jobs", "/models"):
        page = browser.get(path)
        assert page.status_code == 200 and key not in page.get_data(as_text=True)


def test_sign_in_refuses_a_bad_key_and_a_missing_csrf_token(web_app: Flask, browser: FlaskClient) -> None:
    """A wrong key is a 401 page and no session; a form without the CSRF token is a 403."""
    key = make_key(services_of(web_app).sessions)
    form = browser.get("/signin")
    assert browser.post("/signin", data={"api_key": key}).status_code == 403
    bad = browser.post("/signin", data={"csrf_token": csrf_of(form), "api_key": "iq_nope.nope"})
    assert bad.status_code == 401 and "not valid" in bad.get_data(as_text=True)
    assert browser.get("/classify").status_code == 302


def test_after_sign_in_the_api_answers_the_cookie_and_posts_need_the_csrf_token(
    web_app: Flask, browser: FlaskClient
) -> None:
    """GETs pass on the cookie alone; a POST without X-CSRF-Token is a 403 csrf-failed problem, with it a 202."""
    token = sign_in(browser, make_key(services_of(web_app).sessions))
    assert browser.get("/v1/jobs").status_code == 200
    refused = post_files(browser, [png_bytes()])
    assert_problem(refused, 403, "csrf-failed")
    wrong = browser.post(
        "/v1/jobs", data={"images": (io.BytesIO(png_bytes()), "a.png")}, headers={CSRF_HEADER: "x" + token}
    )
    assert_problem(wrong, 403, "csrf-failed")
    ok = browser.post("/v1/jobs", data={"images": (io.BytesIO(png_bytes()), "a.png")}, headers={CSRF_HEADER: token})
    assert ok.status_code == 202


def test_revoking_the_key_ends_its_web_sessions(web_app: Flask, browser: FlaskClient) -> None:
    """The session names the key; once the key is revoked the API answers 401 and pages go to sign-in."""
    svc = services_of(web_app)
    key = make_key(svc.sessions)
    sign_in(browser, key)
    with session_scope(svc.sessions) as session:
        apikeys.revoke_key(session=session, key_id=key.split("_")[1], tenant_id=None)
    assert browser.get("/v1/jobs").status_code == 401
    assert browser.get("/classify").status_code == 302


def test_sign_out_deletes_the_session(web_app: Flask, browser: FlaskClient) -> None:
    """After sign-out the old cookie authenticates nothing, even if the browser kept it."""
    token = sign_in(browser, make_key(services_of(web_app).sessions))
    sid = browser.get_cookie(COOKIE)
    assert sid is not None
    assert browser.post("/signout", data={"csrf_token": token}).status_code == 302
    browser.set_cookie(COOKIE, sid.value)
    assert browser.get("/v1/jobs").status_code == 401


def test_sign_in_goes_only_to_paths_of_this_site(web_app: Flask, browser: FlaskClient) -> None:
    """`next` may not send the browser elsewhere (no open redirect)."""
    key = make_key(services_of(web_app).sessions)
    for target in ("https://evil.example/", "//evil.example/x", "javascript:alert(1)"):
        form = browser.get("/signin")
        resp = browser.post("/signin", data={"csrf_token": csrf_of(form), "api_key": key, "next": target})
        assert resp.headers["Location"] == "/classify"


def test_the_explain_option_is_stored_and_checked(web_app: Flask) -> None:
    """explain=true reaches the job's params; a value that is not a boolean is a 422 with nothing written."""
    client = web_app.test_client()
    resp = post_files(client, [png_bytes()], explain="true")
    assert resp.status_code == 202
    with session_scope(services_of(web_app).sessions) as session:
        job = session.get(Job, uuid.UUID(resp.get_json()["id"]))
        assert job is not None and job.params.get("explain") is True
    for not_the_word in ("maybe", "0", "True", ""):  # the OpenAPI document allows exactly "true" and "false"
        assert_problem(post_files(client, [png_bytes()], explain=not_the_word), 422, "validation-error")


def test_the_front_end_is_light() -> None:
    """All the JavaScript the pages load stays under 150 KB (no framework, nothing from a CDN)."""
    assert sum(p.stat().st_size for p in STATIC.glob("*.js")) < 150 * 1024
