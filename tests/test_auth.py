"""Credentials: API keys and JWTs resolve to a principal, everything forged or stale gets 401,
and roles are enforced per route."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import psycopg
import pytest
import redis.asyncio as aioredis

from api.app import create_app
from core.auth_cache import KeyCache, publish_invalidation
from tests.helpers import JWT_SECRET, serving, until


def _claims(org_id: str, **extra: object) -> dict[str, object]:
    return {"sub": "user-1", "org_id": org_id, "role": "member", "aud": "agentos",
            "exp": int(time.time()) + 300} | extra


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_api_key_resolves_to_its_org_and_role(client, org):
    r = client.get("/v1/me", headers=org.headers)
    assert r.status_code == 200
    me = r.json()
    assert me.pop("org_name").startswith("org A")
    assert me == {"org_id": org.id, "user_id": None, "role": "owner", "scopes": [], "credential": "api_key",
                  "user": None, "orgs": []}


def test_key_is_shown_once_and_only_its_hash_is_stored(client, org, stack):
    created = client.post("/v1/api-keys", json={"name": "ci"}, headers=org.headers).json()
    listed = client.get("/v1/api-keys", headers=org.headers).json()["data"]
    assert all("key" not in k and "secret_hash" not in k for k in listed)
    secret = created["key"].split("_")[2]
    with psycopg.connect(stack.database_url) as conn:
        stored = conn.execute("SELECT secret_hash FROM api_keys WHERE id = %s", (created["id"],)).fetchone()
    assert stored[0] == hashlib.sha256(secret.encode()).hexdigest()
    assert secret not in stored[0]


def test_revoked_key_gets_401(client, org):
    created = client.post("/v1/api-keys", json={"name": "temp"}, headers=org.headers).json()
    assert client.get("/v1/me", headers=_bearer(created["key"])).status_code == 200
    assert client.delete(f"/v1/api-keys/{created['id']}", headers=org.headers).status_code == 200
    r = client.get("/v1/me", headers=_bearer(created["key"]))
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "UNAUTHENTICATED"


def test_expired_key_gets_401(client, org, stack):
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    created = client.post("/v1/api-keys", json={"name": "short", "expires_at": soon}, headers=org.headers).json()
    assert client.get("/v1/me", headers=_bearer(created["key"])).status_code == 200
    with psycopg.connect(stack.database_url) as conn:  # the clock moves on: expire it
        conn.execute("UPDATE api_keys SET expires_at = now() - interval '1 second' WHERE id = %s", (created["id"],))
    # A key changed in SQL behind the API's back is announced like any change (core.auth_cache);
    # a real expiry needs no message, since every cache hit checks the key's own expires_at.
    asyncio.run(_invalidate(stack.redis_url, created["id"]))
    until(lambda: client.get("/v1/me", headers=_bearer(created["key"])).status_code == 401)
    assert client.get("/v1/me", headers=_bearer(created["key"])).status_code == 401


async def _invalidate(redis_url: str, key_id: str) -> None:
    redis = aioredis.from_url(redis_url)
    try:
        await publish_invalidation(redis, key_id=key_id)
    finally:
        await redis.aclose()


def test_a_key_revoked_through_one_api_process_is_refused_by_another_that_cached_it(client, org, settings):
    # A second API process, whose cache would trust a verified key for a minute on its own.
    other = create_app(settings.model_copy(update={"auth": settings.auth.model_copy(update={"key_cache_s": 60})}))
    with serving(other) as served:
        keys = served.state["api"].auth.keys
        until(lambda: keys.enabled)  # subscribed to the invalidations
        assert keys.enabled
        created = client.post("/v1/api-keys", json={"name": "doomed", "role": "member"}, headers=org.headers).json()
        assert httpx.get(f"{served.url}/v1/me", headers=_bearer(created["key"])).status_code == 200
        assert keys.get(created["key"]) is not None  # the other process now trusts it from memory

        assert client.delete(f"/v1/api-keys/{created['id']}", headers=org.headers).status_code == 200

        until(lambda: keys.get(created["key"]) is None, limit_s=10)
        r = httpx.get(f"{served.url}/v1/me", headers=_bearer(created["key"]))
        assert r.status_code == 401 and r.json()["error"]["code"] == "UNAUTHENTICATED"
        # and the key that revoked it still works there
        assert httpx.get(f"{served.url}/v1/me", headers=org.headers).status_code == 200


def test_key_with_wrong_secret_gets_401(client, org):
    prefix = org.key.split("_")[1]
    forged = f"aos_{prefix}_{'A' * 32}"
    assert client.get("/v1/me", headers=_bearer(forged)).status_code == 401


def test_last_used_time_is_recorded(client, org):
    client.get("/v1/me", headers=org.headers)
    keys = client.get("/v1/api-keys", headers=org.headers).json()["data"]
    owner = [k for k in keys if k["role"] == "owner"][0]
    assert owner["last_used_at"] is not None


def test_hs256_jwt_resolves_to_its_claims(client, org):
    token = jwt.encode(_claims(org.id, role="admin", scope="runs:write"), JWT_SECRET, algorithm="HS256")
    r = client.get("/v1/me", headers=_bearer(token))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["org_name"].startswith("org A")
    assert {k: body[k] for k in ("org_id", "user_id", "role", "scopes", "credential")} == {
        "org_id": org.id, "user_id": "user-1", "role": "admin", "scopes": ["runs:write"], "credential": "jwt"}
    assert body["user"]["id"] == "user-1" and [o["org_id"] for o in body["orgs"]] == [org.id]


def test_rs256_jwt_verifies_with_the_configured_public_key(client, org, rsa_keys):
    token = jwt.encode(_claims(org.id), rsa_keys.private_pem, algorithm="RS256")
    r = client.get("/v1/me", headers=_bearer(token))
    assert r.status_code == 200, r.text
    assert r.json()["role"] == "member"


def test_alg_none_is_refused(client, org):
    header = _b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims(org.id, role="owner")).encode())
    r = client.get("/v1/me", headers=_bearer(f"{header}.{payload}."))
    assert r.status_code == 401
    assert r.json()["error"]["code"] == "UNAUTHENTICATED"


def test_hs256_signed_with_the_rsa_public_key_is_refused(client, org, rsa_keys):
    # The classic key-confusion forgery: HMAC keyed with the public key the server trusts.
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = _b64(json.dumps(_claims(org.id, role="owner")).encode())
    signing_input = f"{header}.{payload}".encode()
    sig = _b64(hmac.new(rsa_keys.public_pem.encode(), signing_input, hashlib.sha256).digest())
    assert client.get("/v1/me", headers=_bearer(f"{header}.{payload}.{sig}")).status_code == 401


def test_expired_jwt_is_refused(client, org):
    token = jwt.encode(_claims(org.id, exp=int(time.time()) - 3600), JWT_SECRET, algorithm="HS256")
    r = client.get("/v1/me", headers=_bearer(token))
    assert r.status_code == 401
    assert "expired" in r.json()["error"]["message"]


def test_jwt_for_another_audience_is_refused(client, org):
    token = jwt.encode(_claims(org.id, aud="someone-else"), JWT_SECRET, algorithm="HS256")
    assert client.get("/v1/me", headers=_bearer(token)).status_code == 401


def test_jwt_signed_with_another_secret_is_refused(client, org):
    token = jwt.encode(_claims(org.id), "not-the-server-secret-0123456789abcdef", algorithm="HS256")
    assert client.get("/v1/me", headers=_bearer(token)).status_code == 401


def test_jwt_without_expiry_is_refused(client, org):
    claims = _claims(org.id)
    del claims["exp"]
    assert client.get("/v1/me", headers=_bearer(jwt.encode(claims, JWT_SECRET, algorithm="HS256"))).status_code == 401


@pytest.mark.parametrize("claims", [{"org_id": "org_0000000000000000000000000000"}, {"role": "superuser"}])
def test_jwt_with_unknown_org_or_role_is_refused(client, org, claims):
    token = jwt.encode(_claims(org.id) | claims, JWT_SECRET, algorithm="HS256")
    assert client.get("/v1/me", headers=_bearer(token)).status_code == 401


def test_viewer_can_read_but_not_write(client, org):
    agent = org.create_agent()
    viewer = _bearer(org.key_with_role("viewer"))
    assert client.get("/v1/agents", headers=viewer).status_code == 200
    assert client.get(f"/v1/agents/{agent['id']}", headers=viewer).status_code == 200
    writes = [
        client.post("/v1/agents", json={"name": "x"}, headers=viewer),
        client.patch(f"/v1/agents/{agent['id']}", json={"instructions": "y"}, headers=viewer),
        client.delete(f"/v1/agents/{agent['id']}", headers=viewer),
        client.post("/v1/sessions", json={"agent_id": agent["id"]}, headers=viewer),
        client.post("/v1/api-keys", json={"name": "k"}, headers=viewer),
    ]
    assert [w.status_code for w in writes] == [403] * len(writes)
    assert {w.json()["error"]["code"] for w in writes} == {"FORBIDDEN"}
    assert client.get(f"/v1/agents/{agent['id']}", headers=org.headers).json()["version"] == 1


def test_member_cannot_manage_keys_and_admin_cannot_mint_owner_keys(client, org):
    member = _bearer(org.key_with_role("member"))
    assert client.get("/v1/api-keys", headers=member).status_code == 403
    admin = _bearer(org.key_with_role("admin"))
    assert client.post("/v1/api-keys", json={"name": "k", "role": "owner"}, headers=admin).status_code == 403
    assert client.post("/v1/api-keys", json={"name": "k", "role": "admin"}, headers=admin).status_code == 201


def test_viewer_jwt_cannot_write(client, org):
    token = jwt.encode(_claims(org.id, role="viewer"), JWT_SECRET, algorithm="HS256")
    r = client.post("/v1/agents", json={"name": "nope"}, headers=_bearer(token))
    assert r.status_code == 403


def test_the_key_cache_trusts_nothing_unsubscribed_nor_a_lookup_older_than_an_invalidation(stack):
    row = {"id": "api_key_x", "org_id": "org_x", "created_by": None, "role": "member", "expires_at": None}

    async def story() -> None:
        redis = aioredis.from_url(stack.redis_url)
        keys = KeyCache(redis, ttl_s=60)
        try:
            keys.put("aos_k", row, keys.generation)  # not subscribed yet: nothing is trusted
            assert keys.get("aos_k") is None
            ready = asyncio.Event()
            listener = asyncio.create_task(keys.listen(ready))
            await asyncio.wait_for(ready.wait(), 30)
            keys.put("aos_k", row, keys.generation)
            assert keys.get("aos_k") == row
            started = keys.generation  # a lookup begins...
            await publish_invalidation(redis, key_id="api_key_x")  # ...another process revokes...
            for _ in range(200):
                if keys.generation != started:
                    break
                await asyncio.sleep(0.01)
            assert keys.get("aos_k") is None
            keys.put("aos_k", row, started)  # ...and what the lookup read is not trusted
            assert keys.get("aos_k") is None
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            assert not keys.enabled
        finally:
            await redis.aclose()

    asyncio.run(story())
