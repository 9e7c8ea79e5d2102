"""Sign-in with OIDC and GitHub, end to end against a fake provider on 127.0.0.1 (tests/fake_idp.py):
the happy paths, and a tampered state, a wrong nonce, an unverified email and an expired code refused."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from tests.fake_idp import CLIENT_ID, CLIENT_SECRET, Behaviour, fake_idp
from tests.helpers import PASSWORD, bearer, error_of, mailed_token, make_settings, new_org, serving

REDIRECT = "http://127.0.0.1:9/console/{provider}/callback"  # never fetched: the test reads the redirect


@pytest.fixture
def idp() -> Iterator[Behaviour]:
    behaviour = Behaviour()
    with serving(fake_idp(behaviour)) as served:
        behaviour.issuer = served.url
        yield behaviour


@pytest.fixture
def sso(stack, rsa_keys, idp: Behaviour) -> Iterator[TestClient]:
    settings = make_settings(stack, rsa_keys, people={
        "oidc_issuer": idp.issuer, "oidc_client_id": CLIENT_ID, "oidc_client_secret": CLIENT_SECRET,
        "github_client_id": CLIENT_ID, "github_client_secret": CLIENT_SECRET,
        "github_authorize_url": f"{idp.issuer}/authorize", "github_token_url": f"{idp.issuer}/login/oauth/access_token",
        "github_api_url": idp.issuer, "oauth_redirect_url": REDIRECT, "open_signup": True})
    with TestClient(create_app(settings)) as client:
        yield client


def _member(client: TestClient, email: str) -> str:
    """A member of a new org with `email` and no password (invited, accepted): the org id."""
    org = new_org(client, "sso")
    client.post("/v1/invitations", json={"email": email, "role": "member"}, headers=org.headers)
    r = client.post("/v1/invitations/accept", json={"token": mailed_token(client, email, "aosi_")})
    assert r.status_code == 200, r.text
    return org.id


def _authorize(client: TestClient, provider: str) -> dict[str, str]:
    """Start, then let the fake provider 'sign the user in': the code and state it redirects with."""
    r = client.post(f"/v1/auth/{provider}/start", json={})
    assert r.status_code == 200, r.text
    url = r.json()["authorize_url"]
    query = parse_qs(urlsplit(url).query)
    assert query["code_challenge_method"] == ["S256"] and query["redirect_uri"] == [REDIRECT.format(provider=provider)]
    back = httpx.get(url, follow_redirects=False)
    assert back.status_code == 302
    got = parse_qs(urlsplit(back.headers["location"]).query)
    return {"code": got["code"][0], "state": got["state"][0]}


@pytest.mark.parametrize("provider", ["oidc", "github"])
def test_sign_in_with_a_provider_matches_the_verified_email(sso, idp, provider):
    idp.email = f"sso-{secrets.token_hex(4)}@example.com"
    org_id = _member(sso, idp.email)
    assert sso.get("/v1/auth/providers").json()["providers"] == ["oidc", "github"]  # the console's button
    got = _authorize(sso, provider)
    r = sso.post(f"/v1/auth/{provider}/callback", json=got)
    assert r.status_code == 200, r.text
    tokens: dict[str, Any] = r.json()
    assert tokens["org_id"] == org_id and tokens["user"]["email"] == idp.email
    assert sso.get("/v1/me", headers=bearer(tokens)).json()["user"]["email"] == idp.email
    # The same code and state again: the state is used up.
    error_of(sso.post(f"/v1/auth/{provider}/callback", json=got), 401, "UNAUTHENTICATED")
    # A fresh state with a code the provider did not issue: the provider refuses it.
    error_of(sso.post(f"/v1/auth/{provider}/callback", json=_authorize(sso, provider) | {"code": "forged"}),
             401, "UNAUTHENTICATED")


@pytest.mark.parametrize("provider", ["oidc", "github"])
def test_a_tampered_state_is_refused(sso, idp, provider):
    idp.email = f"sso-{secrets.token_hex(4)}@example.com"
    _member(sso, idp.email)
    got = _authorize(sso, provider)
    error_of(sso.post(f"/v1/auth/{provider}/callback", json=got | {"state": got["state"] + "x"}),
             401, "UNAUTHENTICATED")
    # A state drawn for the other provider does not open this one either.
    other = "github" if provider == "oidc" else "oidc"
    error_of(sso.post(f"/v1/auth/{other}/callback", json=got), 401, "UNAUTHENTICATED")


def test_a_wrong_nonce_is_refused(sso, idp):
    idp.email = f"sso-{secrets.token_hex(4)}@example.com"
    _member(sso, idp.email)
    idp.nonce = "not-the-one-we-sent"
    r = sso.post("/v1/auth/oidc/callback", json=_authorize(sso, "oidc"))
    assert "nonce" in error_of(r, 401, "UNAUTHENTICATED")["message"]


@pytest.mark.parametrize("provider", ["oidc", "github"])
def test_an_unverified_email_is_refused(sso, idp, provider):
    idp.email = f"sso-{secrets.token_hex(4)}@example.com"
    _member(sso, idp.email)
    idp.email_verified = False
    r = sso.post(f"/v1/auth/{provider}/callback", json=_authorize(sso, provider))
    assert "verified" in error_of(r, 401, "UNAUTHENTICATED")["message"]


@pytest.mark.parametrize("provider", ["oidc", "github"])
def test_an_expired_code_is_refused(sso, idp, provider):
    idp.email = f"sso-{secrets.token_hex(4)}@example.com"
    _member(sso, idp.email)
    idp.code_ttl_s = 0.0
    error_of(sso.post(f"/v1/auth/{provider}/callback", json=_authorize(sso, provider)), 401, "UNAUTHENTICATED")


def test_no_account_no_sign_in_and_unconfigured_providers_are_404(sso, client, idp):
    idp.email = f"stranger-{secrets.token_hex(4)}@example.com"
    error_of(sso.post("/v1/auth/oidc/callback", json=_authorize(sso, "oidc")), 403, "FORBIDDEN")
    error_of(sso.post("/v1/auth/saml/start", json={}), 404, "NOT_FOUND")
    error_of(client.post("/v1/auth/oidc/start", json={}), 404, "NOT_FOUND")  # the suite's settings: none


def test_a_provider_takes_over_an_unverified_registration_into_a_cookie_session(sso, idp):
    idp.email = f"sso-{secrets.token_hex(4)}@example.com"
    # Someone registered the address first (open sign-up) and never verified it.
    squatter = sso.post("/v1/auth/register", json={"email": idp.email, "password": PASSWORD})
    assert squatter.status_code == 201, squatter.text
    r = sso.post("/v1/auth/oidc/callback", json=_authorize(sso, "oidc") | {"cookie": True})
    assert r.status_code == 200, r.text
    assert r.json()["access_token"] is None and r.json()["csrf_token"]  # the console's cookie session
    assert sso.get("/v1/me").json()["user"]["email_verified"] is True
    # The registrant's sign-in and password are gone with the takeover.
    error_of(sso.get("/v1/me", headers=bearer(squatter.json())), 401, "UNAUTHENTICATED")
    error_of(sso.post("/v1/auth/login", json={"email": idp.email, "password": PASSWORD}), 401, "UNAUTHENTICATED")
