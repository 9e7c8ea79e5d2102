"""The audit API: every change is there with who made it and from where, admins read it with
filters and cursor pages, and the application cannot rewrite or erase it."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import psycopg
import pytest
from starlette.testclient import TestClient

from core.db import open_pool
from core.settings import Settings
from core.tenancy import tenant_tx
from tests.helpers import JWT_SECRET, Org, error_of, start_run


def _jwt(org_id: str, sub: str, role: str = "admin") -> dict[str, str]:
    claims = {"sub": sub, "org_id": org_id, "role": role, "aud": "agentos", "exp": int(time.time()) + 300}
    return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET, algorithm='HS256')}"}


def _logs(client: TestClient, org: Org, query: str = "") -> list[dict[str, Any]]:
    r = client.get(f"/v1/audit-logs?limit=200{query}", headers=org.headers)
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


def test_changes_are_logged_with_actor_origin_and_request_id(client: TestClient, org: Org):
    headers = org.headers | {"X-Request-Id": "req-from-client-1", "User-Agent": "audit-test/1.0"}
    r = client.post("/v1/agents", json={"name": "audited", "instructions": "x"}, headers=headers)
    assert r.status_code == 201 and r.headers["X-Request-Id"] == "req-from-client-1"
    agent_id = r.json()["id"]
    assert client.patch(f"/v1/agents/{agent_id}", json={"instructions": "y"}, headers=org.headers).status_code == 200
    session = org.create_session(agent_id)
    run = start_run(org, str(session["id"]), "hello")
    key = client.post("/v1/api-keys", json={"name": "k", "role": "member"}, headers=org.headers).json()
    assert client.delete(f"/v1/api-keys/{key['id']}", headers=org.headers).status_code in (200, 204)
    assert client.put("/v1/secrets/token", json={"value": "s3cret"}, headers=org.headers).status_code in (200, 201)
    assert client.delete("/v1/secrets/token", headers=org.headers).status_code in (200, 204)

    logs = _logs(client, org)
    actions = [e["action"] for e in reversed(logs)]
    assert actions == ["org.create", "agent.create", "agent.update", "session.create", "run.create",
                       "api_key.create", "api_key.revoke", "secret.create", "secret.delete"]
    created = next(e for e in logs if e["action"] == "agent.create")
    assert created["actor"].startswith("api_key:") and created["resource_type"] == "agent"
    assert created["resource_id"] == agent_id
    assert created["request_id"] == "req-from-client-1" and created["user_agent"] == "audit-test/1.0"
    assert created["ip"] == "testclient"  # the address the server saw (Starlette's test client)
    generated = next(e for e in logs if e["action"] == "agent.update")["request_id"]
    assert generated.startswith("req_") and generated != "req-from-client-1"
    started = next(e for e in logs if e["action"] == "run.create")
    assert started["resource_id"] == run["id"] and started["trace_id"] == run["trace_id"]
    assert "s3cret" not in str(logs)  # a secret's value is never logged
    # An id that is not printable ASCII (or too long) is replaced, never stored as sent.
    r = client.get("/v1/agents", headers=org.headers | {"X-Request-Id": "x" * 129})
    assert r.headers["X-Request-Id"].startswith("req_")


def test_a_jwt_subjects_first_request_is_its_login(client: TestClient, org: Org):
    alice = _jwt(org.id, "alice")
    for _ in range(3):
        assert client.get("/v1/agents", headers=alice).status_code == 200
    client.post("/v1/agents", json={"name": "by-alice", "instructions": "x"}, headers=alice)
    logins = _logs(client, org, "&action=auth.login")
    assert [(e["actor"], e["resource_type"], e["resource_id"]) for e in logins] == [("user:alice", "user", "alice")]
    assert logins[0]["details"]["first_seen"] is True
    mine = _logs(client, org, "&actor=user:alice")
    assert [e["action"] for e in mine] == ["agent.create", "auth.login"]


def test_filters_and_cursor_pages(client: TestClient, org: Org):
    ids = [org.create_agent(name=f"a{i}")["id"] for i in range(5)]
    client.delete(f"/v1/agents/{ids[0]}", headers=org.headers)
    org.create_session(str(ids[1]))

    assert [e["action"] for e in _logs(client, org, "&action=agent.*")] == ["agent.delete"] + ["agent.create"] * 5
    only = _logs(client, org, f"&resource_type=agent&resource_id={ids[0]}")
    assert [e["action"] for e in only] == ["agent.delete", "agent.create"]
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert _logs(client, org, f"&from={future.replace('+', '%2B')}") == []
    everything = _logs(client, org)
    assert _logs(client, org, f"&to={future.replace('+', '%2B')}") == everything
    assert _logs(client, org, "&actor=user:nobody") == []

    seen: list[str] = []
    cursor = ""
    while True:
        r = client.get(f"/v1/audit-logs?limit=2{cursor}", headers=org.headers)
        page = r.json()
        assert len(page["data"]) <= 2
        seen += [e["id"] for e in page["data"]]
        if not page["next_cursor"]:
            break
        cursor = f"&cursor={page['next_cursor']}"
    assert seen == [e["id"] for e in everything] and len(seen) == len(set(seen)) == 8  # org.create + 7

    error_of(client.get("/v1/audit-logs?from=yesterday", headers=org.headers), 422, "VALIDATION_FAILED")
    error_of(client.get("/v1/audit-logs?cursor=bogus!", headers=org.headers), 422, "VALIDATION_FAILED")
    member = {"Authorization": f"Bearer {org.key_with_role('member')}"}
    error_of(client.get("/v1/audit-logs", headers=member), 403, "FORBIDDEN")


def test_another_orgs_audit_log_is_invisible(client: TestClient, org: Org, other_org: Org):
    other_org.create_agent(name="theirs")
    assert all(e["action"] != "agent.create" for e in _logs(client, org))


@pytest.mark.parametrize("statement", ["UPDATE audit_logs SET action = 'nothing happened'",
                                       "DELETE FROM audit_logs", "TRUNCATE audit_logs"])
def test_the_application_role_cannot_rewrite_or_erase_the_audit_log(org: Org, settings: Settings, statement: str):
    org.create_agent()

    async def attempt() -> None:
        pool = await open_pool(settings.database)  # connections act as the application role
        try:
            async with tenant_tx(pool, org.id) as conn:
                await conn.execute(statement)
        finally:
            await pool.close()

    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        asyncio.run(attempt())
    assert [e["action"] for e in _logs(org.client, org)][-1] == "org.create"
