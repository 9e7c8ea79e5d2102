"""Happy paths of every route in docs/api.md that this release serves."""

from __future__ import annotations

import asyncio

from core.db import open_pool
from core.store import sessions as session_store
from core.tenancy import tenant_tx
from tests.helpers import new_org


def test_health_and_readiness(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "checks": {"postgres": "ok", "redis": "ok"}}


def test_org_sign_up_returns_a_working_owner_key(client):
    org = new_org(client, "Acme")
    assert client.get("/v1/me", headers=org.headers).json()["role"] == "owner"


def test_api_key_lifecycle(client, org):
    created = client.post("/v1/api-keys", json={"name": "deploy bot", "role": "member"}, headers=org.headers)
    assert created.status_code == 201
    body = created.json()
    assert body["key"].startswith(f"aos_{body['prefix']}_")
    assert {"id", "name", "prefix", "role", "created_at"} <= body.keys()
    listed = client.get("/v1/api-keys", headers=org.headers).json()
    assert body["id"] in [k["id"] for k in listed["data"]]
    revoked = client.delete(f"/v1/api-keys/{body['id']}", headers=org.headers)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None


def test_agent_create_read_list(client, org):
    agent = org.create_agent(name="researcher", model="openai:gpt-4o-mini", skills=["file_manager"],
                             limits={"max_steps": 5})
    assert agent["version"] == 1
    assert agent["limits"] == {"max_steps": 5, "max_tokens": 100000, "timeout_s": 600}
    assert agent["mode"] == "agent" and agent["confirm"] == []
    got = client.get(f"/v1/agents/{agent['id']}", headers=org.headers).json()
    assert got == agent
    listed = client.get("/v1/agents", headers=org.headers).json()
    assert [a["id"] for a in listed["data"]] == [agent["id"]]
    assert listed["next_cursor"] is None


def test_agent_patch_bumps_version_and_keeps_history(client, org):
    helper = org.create_agent(name="helper")
    agent = org.create_agent(name="boss", instructions="v1")
    r = client.patch(f"/v1/agents/{agent['id']}", json={"instructions": "v2", "subagents": [helper["id"]]},
                     headers=org.headers)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2 and r.json()["instructions"] == "v2"
    assert r.json()["subagents"] == [helper["id"]]
    r = client.patch(f"/v1/agents/{agent['id']}", json={"name": "chief"}, headers=org.headers)
    assert r.json()["version"] == 3 and r.json()["name"] == "chief" and r.json()["instructions"] == "v2"
    history = client.get(f"/v1/agents/{agent['id']}/versions", headers=org.headers).json()["data"]
    assert [(v["version"], v["name"], v["instructions"]) for v in history] == [
        (3, "chief", "v2"), (2, "boss", "v2"), (1, "boss", "v1")]


def test_agent_delete_hides_it_and_frees_the_name(client, org):
    agent = org.create_agent(name="temp")
    assert client.delete(f"/v1/agents/{agent['id']}", headers=org.headers).status_code == 204
    assert client.get(f"/v1/agents/{agent['id']}", headers=org.headers).status_code == 404
    assert client.delete(f"/v1/agents/{agent['id']}", headers=org.headers).status_code == 404
    org.create_agent(name="temp")


def test_pagination_walks_every_item_once(client, org):
    made = [org.create_agent(name=f"a{i}")["id"] for i in range(7)]
    seen, cursor = [], None
    while True:
        params = {"limit": 3} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/agents", params=params, headers=org.headers).json()
        assert len(page["data"]) <= 3
        seen += [a["id"] for a in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == list(reversed(made))


def test_session_lifecycle(client, org):
    agent = org.create_agent()
    session = org.create_session(agent["id"], title="first chat", metadata={"ticket": 42}, user_id="end-user-7")
    assert session["agent_id"] == agent["id"] and session["user_id"] == "end-user-7"
    assert client.get(f"/v1/sessions/{session['id']}", headers=org.headers).json() == session
    assert [s["id"] for s in client.get("/v1/sessions", headers=org.headers).json()["data"]] == [session["id"]]
    filtered = client.get("/v1/sessions", params={"agent_id": "agt_0000000000000000000000000000"},
                          headers=org.headers).json()
    assert filtered["data"] == []
    assert client.delete(f"/v1/sessions/{session['id']}", headers=org.headers).status_code == 204
    assert client.get(f"/v1/sessions/{session['id']}", headers=org.headers).status_code == 404


def test_session_messages_are_listed_in_order(client, org, settings):
    session = org.create_session(org.create_agent()["id"])

    async def add_messages():
        pool = await open_pool(settings.database)
        try:
            async with tenant_tx(pool, org.id) as conn:
                for i, role in enumerate(["user", "assistant", "user"]):
                    await session_store.add_message(conn, session["id"], role, f"message {i}")
        finally:
            await pool.close()

    asyncio.run(add_messages())
    r = client.get(f"/v1/sessions/{session['id']}/messages", headers=org.headers).json()
    assert [(m["role"], m["content"]) for m in r["data"]] == [
        ("user", "message 0"), ("assistant", "message 1"), ("user", "message 2")]
    newest = client.get(f"/v1/sessions/{session['id']}/messages", params={"order": "desc", "limit": 1},
                        headers=org.headers).json()
    assert newest["data"][0]["content"] == "message 2" and newest["next_cursor"]


def test_writes_are_audited(client, org, stack):
    import psycopg

    agent = org.create_agent()
    client.patch(f"/v1/agents/{agent['id']}", json={"instructions": "x"}, headers=org.headers)
    with psycopg.connect(stack.database_url) as conn:
        actions = [r[0] for r in conn.execute(
            "SELECT action FROM audit_logs WHERE org_id = %s ORDER BY id", (org.id,)).fetchall()]
    assert actions == ["org.create", "agent.create", "agent.update"]


def test_openapi_describes_every_route(client):
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    expected = {
        ("/v1/me", "get"), ("/v1/orgs", "post"), ("/v1/api-keys", "post"), ("/v1/api-keys", "get"),
        ("/v1/api-keys/{key_id}", "delete"), ("/v1/agents", "post"), ("/v1/agents", "get"),
        ("/v1/agents/{agent_id}", "get"), ("/v1/agents/{agent_id}", "patch"), ("/v1/agents/{agent_id}", "delete"),
        ("/v1/agents/{agent_id}/versions", "get"), ("/v1/sessions", "post"), ("/v1/sessions", "get"),
        ("/v1/sessions/{session_id}", "get"), ("/v1/sessions/{session_id}", "delete"),
        ("/v1/sessions/{session_id}/messages", "get"), ("/healthz", "get"), ("/readyz", "get"),
        ("/v1/sessions/{session_id}/runs", "post"), ("/v1/sessions/{session_id}/runs", "get"),
        ("/v1/runs/{run_id}", "get"), ("/v1/runs/{run_id}/wait", "get"), ("/v1/runs/{run_id}/cancel", "post"),
        ("/v1/runs/{run_id}/events", "get"), ("/v1/sessions/{session_id}/events", "get"),
        ("/v1/runs/{run_id}/tool-calls", "get"), ("/v1/tool-calls", "get"),
        ("/v1/tool-calls/{tool_call_id}/approve", "post"), ("/v1/tool-calls/{tool_call_id}/reject", "post"),
        ("/v1/orgs/{org_id}", "get"), ("/v1/orgs/{org_id}", "patch"), ("/v1/orgs/{org_id}", "delete"),
        ("/v1/orgs/{org_id}/restore", "post"), ("/v1/users-data", "delete"),
        ("/v1/orgs/{org_id}/exports", "post"), ("/v1/orgs/{org_id}/exports/{export_id}", "get"),
        ("/v1/orgs/{org_id}/exports/{export_id}/download", "get"),
        ("/v1/memories", "post"), ("/v1/memories", "get"), ("/v1/memories", "delete"),
        ("/v1/memories/{memory_id}", "get"), ("/v1/memories/{memory_id}", "delete"),
        ("/v1/knowledge", "post"), ("/v1/knowledge", "get"),
        ("/v1/knowledge/search", "post"),
        ("/v1/knowledge/{document_id}", "get"), ("/v1/knowledge/{document_id}", "delete"),
        ("/v1/skills", "get"), ("/v1/skills", "post"), ("/v1/skills/{name}", "get"), ("/v1/skills/{name}", "patch"),
        ("/v1/skills/{name}", "delete"), ("/v1/skills/{name}/versions", "get"),
        ("/v1/skills/{name}/versions/{version}", "get"),
        ("/v1/secrets", "get"), ("/v1/secrets/{name}", "put"), ("/v1/secrets/{name}", "delete"),
        ("/v1/data-sources", "get"), ("/v1/data-sources", "post"), ("/v1/data-sources/{name}", "get"),
        ("/v1/data-sources/{name}", "delete"),
        ("/v1/mcp-servers", "get"), ("/v1/mcp-servers", "post"), ("/v1/mcp-servers/{name}", "get"),
        ("/v1/mcp-servers/{name}", "delete"), ("/v1/mcp-servers/{name}/refresh", "post"),
        ("/v1/outbound-allowlist", "get"), ("/v1/outbound-allowlist", "put"),
        ("/v1/usage", "get"), ("/v1/budgets", "get"), ("/v1/budgets", "patch"), ("/v1/audit-logs", "get"),
        ("/v1/stream-tokens", "post"),
        ("/v1/webhooks", "get"), ("/v1/webhooks", "post"), ("/v1/webhooks/{webhook_id}", "get"),
        ("/v1/webhooks/{webhook_id}", "patch"), ("/v1/webhooks/{webhook_id}", "delete"),
        ("/v1/webhooks/{webhook_id}/rotate-secret", "post"), ("/v1/webhooks/{webhook_id}/deliveries", "get"),
        ("/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry", "post"),
        ("/v1/files", "get"), ("/v1/files", "post"), ("/v1/files/{file_id}", "get"), ("/v1/files/{file_id}", "delete"),
        ("/v1/files/{file_id}/content", "get"), ("/v1/sessions/{session_id}/files", "get"),
        ("/v1/runners", "get"), ("/v1/runners", "post"), ("/v1/runners/{runner_id}", "get"),
        ("/v1/runners/{runner_id}", "delete"), ("/v1/runner/calls", "get"),
        ("/v1/runner/calls/{call_id}/result", "post"),
        ("/v1/runner/runs/{run_id}/workspace", "post"), ("/v1/runs/{run_id}/workspaces", "get"),
        ("/v1/sessions/{session_id}/files", "post"), ("/v1/sessions/{session_id}/files/{file_id}", "delete"),
        ("/v1/providers", "get"), ("/v1/providers", "post"), ("/v1/providers/{provider_id}", "get"),
        ("/v1/providers/{provider_id}", "patch"), ("/v1/providers/{provider_id}", "delete"),
        ("/v1/providers/{provider_id}/test", "post"), ("/v1/providers/{provider_id}/models", "get"),
        ("/metrics", "get"),
        ("/v1/members", "get"), ("/v1/members/{user_id}", "patch"), ("/v1/members/{user_id}", "delete"),
        ("/v1/invitations", "post"), ("/v1/invitations", "get"), ("/v1/invitations/accept", "post"),
        ("/v1/invitations/{invitation_id}", "delete"), ("/v1/invitations/{invitation_id}/resend", "post"),
        ("/v1/auth/login", "post"), ("/v1/auth/refresh", "post"), ("/v1/auth/logout", "post"),
        ("/v1/auth/switch-org", "post"), ("/v1/auth/password-reset", "post"),
        ("/v1/auth/password-reset/confirm", "post"), ("/v1/auth/register", "post"), ("/v1/auth/verify-email", "post"),
        ("/v1/auth/providers", "get"),
        ("/v1/auth/{provider}/start", "post"), ("/v1/auth/{provider}/callback", "post"),
    }
    served = {(path, method) for path, ops in doc["paths"].items() for method in ops}
    assert served == expected
    events = doc["paths"]["/v1/runs/{run_id}/events"]["get"]
    assert "text/event-stream" in events["responses"]["200"]["content"]
    assert {"Last-Event-ID", "after"} <= {p["name"] for p in events["parameters"]}
    agent_create = doc["paths"]["/v1/agents"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert agent_create["$ref"].split("/")[-1] in doc["components"]["schemas"]


def test_openapi_has_no_served_route_missing(client):
    from starlette.routing import Route

    doc = client.get("/openapi.json").json()
    for route in client.app.routes:
        if isinstance(route, Route) and route.path not in ("/openapi.json", "/docs", "/console", "/console/"):
            for method in route.methods - {"HEAD"}:
                assert method.lower() in doc["paths"].get(route.path, {}), (route.path, method)
