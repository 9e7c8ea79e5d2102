"""Auth settings and claims: an empty value is the one way to disable the HS256 secret or the
platform admin token (in every environment); production still refuses the development secrets;
JWT time claims must be numbers."""

from __future__ import annotations

import base64
import time

import jwt
import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from api.app import create_app
from core.settings import DEV_JWT_SECRET, DEV_PLATFORM_ADMIN_TOKEN, load_settings
from tests.helpers import ADMIN_TOKEN, JWT_SECRET, make_settings, new_org

AUTH_VARS = ("AGENTOS_AUTH__JWT_SECRET", "AGENTOS_AUTH__PLATFORM_ADMIN_TOKEN")


def _claims(org_id: str, **extra: object) -> dict[str, object]:
    return {"sub": "user-1", "org_id": org_id, "role": "member", "aud": "agentos",
            "exp": int(time.time()) + 300} | extra


@pytest.mark.parametrize("env", ["development", "test", "production"])
def test_an_empty_value_disables_the_hs256_secret_and_the_admin_token(monkeypatch, env):
    monkeypatch.setenv("AGENTOS_ENV", env)
    for name in AUTH_VARS:
        monkeypatch.setenv(name, "")
    monkeypatch.setenv("AGENTOS_SECRETS__KEYS", '{"1": "' + base64.b64encode(b"k" * 32).decode() + '"}')
    auth = load_settings().auth
    assert auth.jwt_secret is None and auth.platform_admin_token is None


@pytest.mark.parametrize("env", ["development", "production"])
@pytest.mark.parametrize("value", ["null", "None", "NULL"])
def test_null_is_refused_and_points_at_the_empty_value(monkeypatch, env, value):
    monkeypatch.setenv("AGENTOS_ENV", env)
    monkeypatch.setenv("AGENTOS_AUTH__PLATFORM_ADMIN_TOKEN", "a-real-admin-token-from-a-vault")
    monkeypatch.setenv("AGENTOS_AUTH__JWT_SECRET", value)
    with pytest.raises(ValidationError, match="set it empty"):
        load_settings()


def test_unset_means_the_development_values_in_development(monkeypatch):
    for name in AUTH_VARS:
        monkeypatch.delenv(name, raising=False)
    auth = load_settings().auth
    assert auth.jwt_secret is not None and auth.jwt_secret.get_secret_value() == DEV_JWT_SECRET
    assert auth.platform_admin_token is not None
    assert auth.platform_admin_token.get_secret_value() == DEV_PLATFORM_ADMIN_TOKEN


@pytest.mark.parametrize("name,value", [("AGENTOS_AUTH__JWT_SECRET", DEV_JWT_SECRET),
                                        ("AGENTOS_AUTH__PLATFORM_ADMIN_TOKEN", DEV_PLATFORM_ADMIN_TOKEN)])
def test_production_refuses_a_development_secret_set_explicitly(monkeypatch, name, value):
    monkeypatch.setenv("AGENTOS_ENV", "production")
    for other in AUTH_VARS:
        monkeypatch.setenv(other, "")
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match="development default"):
        load_settings()


def test_production_without_auth_variables_is_refused_and_says_how_to_disable(monkeypatch):
    monkeypatch.setenv("AGENTOS_ENV", "production")
    for name in AUTH_VARS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValidationError, match="empty to disable"):
        load_settings()


def test_a_disabled_secret_and_admin_token_refuse_every_such_credential(stack, rsa_keys, client):
    org = new_org(client)
    settings = make_settings(stack, rsa_keys, auth={"jwt_secret": "", "platform_admin_token": "",
                                                    "jwt_public_key": rsa_keys.public_pem})
    assert settings.auth.jwt_secret is None and settings.auth.platform_admin_token is None
    with TestClient(create_app(settings)) as disabled:
        for token in (ADMIN_TOKEN, DEV_PLATFORM_ADMIN_TOKEN, ""):
            r = disabled.post("/v1/orgs", json={"name": "x"}, headers={"Authorization": f"Bearer {token}"})
            assert r.status_code == 401, r.text
        hs256 = jwt.encode(_claims(org.id), JWT_SECRET, algorithm="HS256")
        r = disabled.get("/v1/me", headers={"Authorization": f"Bearer {hs256}"})
        assert r.status_code == 401 and "HS256" in r.json()["error"]["message"]
        rs256 = jwt.encode(_claims(org.id), rsa_keys.private_pem, algorithm="RS256")
        assert disabled.get("/v1/me", headers={"Authorization": f"Bearer {rs256}"}).status_code == 200


@pytest.mark.parametrize("claim", ["exp", "nbf", "iat"])
@pytest.mark.parametrize("value", ["9999999999", "0", True, None, [1]])
def test_jwt_time_claims_must_be_numbers(client, org, claim, value):
    token = jwt.encode(_claims(org.id, **{claim: value}), JWT_SECRET, algorithm="HS256")
    r = client.get("/v1/me", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 401, (claim, value, r.text)
    assert r.json()["error"]["code"] == "UNAUTHENTICATED"


@pytest.mark.parametrize("claim,value", [("nbf", 1_000_000_000), ("iat", 1_000_000_000.5), ("exp", 9_999_999_999.5)])
def test_numeric_time_claims_are_still_accepted(client, org, claim, value):
    token = jwt.encode(_claims(org.id, **{claim: value}), JWT_SECRET, algorithm="HS256")
    assert client.get("/v1/me", headers={"Authorization": f"Bearer {token}"}).status_code == 200
