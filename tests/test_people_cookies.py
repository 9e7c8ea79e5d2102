"""The console's cookie session: HttpOnly cookies instead of tokens in the body, a CSRF token bound to
the sign-in on every write signed in by cookie, bearer credentials untouched, refresh and logout by
cookie. Each test has a client (and cookie jar) of its own: the suite's shared client never holds
a session cookie."""

from __future__ import annotations

import secrets
from typing import Any

from starlette.testclient import TestClient

from api import cookies
from tests.helpers import PASSWORD, error_of, join, new_org, people_api


def _email() -> str:
    return f"c-{secrets.token_hex(4)}@example.com"


def _cookie_sign_in(c: TestClient, email: str, **extra: Any) -> dict[str, Any]:
    r = c.post("/v1/auth/login", json={"email": email, "password": PASSWORD, "cookie": True} | extra)
    assert r.status_code == 200, r.text
    body = dict(r.json())
    body["set_cookie"] = r.headers.get_list("set-cookie")
    return body


def _attrs(set_cookie: list[str], name: str) -> str:
    return next(h for h in set_cookie if h.startswith(f"{name}=")).lower()


def test_cookie_sign_in_puts_the_session_in_httponly_cookies(settings):
    with people_api(settings) as c:
        org, email = new_org(c, "cookies"), _email()
        join(org, email)
        signed = _cookie_sign_in(c, email)
        # The tokens are not in the body: a script that reads it learns nothing to carry off.
        assert signed["access_token"] is None and signed["refresh_token"] is None
        assert signed["csrf_token"] == c.cookies.get(cookies.CSRF_COOKIE)
        access = _attrs(signed["set_cookie"], cookies.ACCESS_COOKIE)
        refresh = _attrs(signed["set_cookie"], cookies.REFRESH_COOKIE)
        csrf = _attrs(signed["set_cookie"], cookies.CSRF_COOKIE)
        assert "httponly" in access and "samesite=strict" in access and "path=/;" in access
        assert "httponly" in refresh and "path=/v1/auth/refresh" in refresh
        assert "httponly" not in csrf and "samesite=strict" in csrf
        assert "secure" not in access  # AGENTOS_ENV=test
        me = c.get("/v1/me")
        assert me.status_code == 200 and me.json()["credential"] == "jwt" and me.json()["org_id"] == org.id


def test_a_write_signed_in_by_cookie_needs_the_csrf_header(settings):
    with people_api(settings) as c:
        org, other, email = new_org(c, "csrf"), new_org(c, "csrf other"), _email()
        join(org, email, "admin")
        csrf = _cookie_sign_in(c, email)["csrf_token"]
        body = {"name": "cookie-agent", "instructions": "x"}
        # Without the header: refused, nothing made.
        error_of(c.post("/v1/agents", json=body), 403, "CSRF_FAILED")
        # A header that matches a cookie the attacker planted, but not this sign-in: refused.
        c.cookies.set(cookies.CSRF_COOKIE, "planted")
        error_of(c.post("/v1/agents", json=body, headers={"X-CSRF-Token": "planted"}), 403, "CSRF_FAILED")
        c.cookies.set(cookies.CSRF_COOKIE, csrf)
        # The right token from another origin: refused.
        error_of(c.post("/v1/agents", json=body, headers={"X-CSRF-Token": csrf, "Origin": "https://evil.example"}),
                 403, "CSRF_FAILED")
        assert c.get("/v1/agents").status_code == 200  # reads need no header
        made = c.post("/v1/agents", json=body, headers={"X-CSRF-Token": csrf, "Origin": "http://testserver"})
        assert made.status_code == 201, made.text
        # Still this org only.
        theirs = other.create_agent()
        error_of(c.get(f"/v1/agents/{theirs['id']}"), 404, "NOT_FOUND")
        error_of(c.delete(f"/v1/agents/{theirs['id']}", headers={"X-CSRF-Token": csrf}), 404, "NOT_FOUND")
        error_of(c.post("/v1/auth/switch-org", json={"org_id": other.id}, headers={"X-CSRF-Token": csrf}),
                 403, "FORBIDDEN")
        # An API key beside the cookies is judged alone: no CSRF header needed.
        assert c.post("/v1/agents", json={"name": "key-agent", "instructions": "x"},
                      headers=org.headers).status_code == 201


def test_refresh_and_logout_by_cookie(settings):
    with people_api(settings) as c:
        org, email = new_org(c, "refresh"), _email()
        join(org, email)
        csrf = _cookie_sign_in(c, email)["csrf_token"]
        old_access = c.cookies.get(cookies.ACCESS_COOKIE)
        error_of(c.post("/v1/auth/refresh", json={}), 403, "CSRF_FAILED")
        r = c.post("/v1/auth/refresh", json={}, headers={"X-CSRF-Token": csrf})
        assert r.status_code == 200, r.text
        assert r.json()["access_token"] is None and r.json()["csrf_token"] == csrf  # the same sign-in
        assert c.cookies.get(cookies.ACCESS_COOKIE) != old_access
        assert c.get("/v1/me").status_code == 200
        error_of(c.post("/v1/auth/logout"), 403, "CSRF_FAILED")
        out = c.post("/v1/auth/logout", headers={"X-CSRF-Token": csrf})
        assert out.status_code == 204
        assert all("max-age=0" in h.lower() for h in out.headers.get_list("set-cookie"))
        assert cookies.ACCESS_COOKIE not in c.cookies
        error_of(c.get("/v1/me"), 401, "UNAUTHENTICATED")
        # The old access token (say, copied before) no longer works either: the sign-in ended.
        error_of(c.get("/v1/me", headers={"Authorization": f"Bearer {old_access}"}), 401, "UNAUTHENTICATED")


def test_cookies_are_secure_outside_development(settings):
    with people_api(settings, cookie_secure=True) as c:
        org, email = new_org(c, "secure"), _email()
        join(org, email)
        signed = _cookie_sign_in(c, email)
        assert all("; secure" in h.lower() for h in signed["set_cookie"])
    assert cookies._secure(settings.model_copy(update={"env": "production"})) is True
    assert cookies._secure(settings) is False
