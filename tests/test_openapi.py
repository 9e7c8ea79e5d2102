"""`/openapi.json` is a valid OpenAPI 3.1 document that declares every answer the API gives:
each operation's statuses, bodies, headers and security, the SSE event union; `/docs` renders it
offline. The suite's client judges every response against it (tests/conformance.py); the story
here drives every operation once, success and error paths, and checks that nothing it was
answered is undeclared."""

from __future__ import annotations

import re
import secrets

from openapi_spec_validator import validate

from core import events
from tests.helpers import ADMIN_TOKEN, PASSWORD, error_of, join, new_org, open_loopback
from tests.sse import read_events

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def test_the_document_is_valid_openapi_3_1(client):
    doc = client.get("/openapi.json").json()
    assert doc["openapi"] == "3.1.0"
    validate(doc)


def test_every_operation_declares_its_answers(client):
    doc = client.get("/openapi.json").json()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            where = f"{method.upper()} {path}"
            answers = op["responses"]
            successes = [s for s in answers if s.startswith("2")]
            assert successes, where
            for status in successes:
                assert status == "204" or answers[status].get("content"), f"{where} {status} has no schema"
            if op["security"]:
                assert {"401", "503"} <= set(answers), where
            if {"apiKey": []} in op["security"]:
                assert op["security"] == [{"apiKey": []}, {"jwt": []}], where
                assert "429" in answers and "Retry-After" in answers["429"]["headers"], where
                assert "RateLimit-Remaining" in answers[successes[0]]["headers"], where
            if "requestBody" in op:
                assert {"400", "413", "415", "422"} <= set(answers), where
            if "{" in path:
                assert "404" in answers, where
            for status, answer in answers.items():
                if not status.startswith("2") and (where, status) != ("GET /readyz", "503"):
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (where, status)


def test_headers_and_security_schemes_are_documented(client):
    doc = client.get("/openapi.json").json()
    assert set(doc["components"]["securitySchemes"]) == {"apiKey", "jwt", "platformAdmin"}
    create_run = doc["paths"]["/v1/sessions/{session_id}/runs"]["post"]
    assert {"name": "Idempotency-Key", "in": "header"}.items() <= next(
        p for p in create_run["parameters"] if p["name"] == "Idempotency-Key").items()
    assert {"Location", "Idempotent-Replayed"} <= set(create_run["responses"]["202"]["headers"])
    assert {"409", "422", "429"} <= set(create_run["responses"])
    assert "SESSION_BUSY" in create_run["responses"]["409"]["description"]
    assert "QUOTA_EXCEEDED" in create_run["responses"]["429"]["description"]
    wait = doc["paths"]["/v1/runs/{run_id}/wait"]["get"]["responses"]
    assert "AgentOS-Wait" in wait["202"]["headers"]
    assert doc["paths"]["/healthz"]["get"]["security"] == []
    assert doc["paths"]["/v1/orgs"]["post"]["security"] == [{"platformAdmin": []}]


def test_event_streams_document_the_event_union(client):
    doc = client.get("/openapi.json").json()
    schemas = doc["components"]["schemas"]
    for path in ("/v1/runs/{run_id}/events", "/v1/sessions/{session_id}/events"):
        op = doc["paths"][path]["get"]
        assert op["responses"]["200"]["content"] == {
            "text/event-stream": {"schema": {"$ref": "#/components/schemas/RunEvent"}}}
        assert {"Last-Event-ID", "after"} <= {p["name"] for p in op["parameters"]}
    union = schemas["RunEvent"]
    assert union["discriminator"]["propertyName"] == "type"
    types = {schemas[ref.split("/")[-1]]["properties"]["type"]["const"] for ref in union["discriminator"]["mapping"]
             .values()}
    assert types == events.EVENT_TYPES
    payload = schemas["ToolCallEvent"]["properties"]["data"]["$ref"].split("/")[-1]
    assert {"tool_call_id", "name", "args", "agent_id"} <= set(schemas[payload]["required"])


def test_docs_page_renders_the_document_from_local_assets(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    links = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert links and not [link for link in links if "//" in link or link.startswith("/")]  # nothing from elsewhere
    assert 'url: "openapi.json"' in page.text
    for link in links:
        asset = client.get(f"/{link}")
        assert asset.status_code == 200 and len(asset.content) > 100, link
    assert b"SwaggerUIBundle" in client.get("/docs/assets/swagger-ui-bundle.js").content


def test_every_operation_answers_as_documented(client, conformance, stack, openai_server):
    doc = client.get("/openapi.json").json()
    org = new_org(client, "conformance")
    h = org.headers
    viewer = {"Authorization": f"Bearer {org.key_with_role('viewer')}"}
    c = client

    assert c.get("/healthz").status_code == 200 and c.get("/readyz").status_code == 200
    error_of(c.get("/metrics"), 404, "NOT_FOUND")  # no metrics token in the tests' settings
    assert c.get("/v1/me", headers=h).status_code == 200
    error_of(c.get("/v1/me"), 401, "UNAUTHENTICATED")
    assert c.get(f"/v1/orgs/{org.id}", headers=ADMIN).status_code == 200
    assert c.patch(f"/v1/orgs/{org.id}", json={"limits": {"burst": 1000}}, headers=ADMIN).status_code == 200
    error_of(c.patch(f"/v1/orgs/{org.id}", json={"limits": {"burst": 0}}, headers=ADMIN), 422, "VALIDATION_FAILED")

    key = c.post("/v1/api-keys", json={"name": "k"}, headers=h).json()
    assert c.get("/v1/api-keys", headers=h).status_code == 200
    assert c.delete(f"/v1/api-keys/{key['id']}", headers=h).status_code == 200

    agent = org.create_agent()
    error_of(c.post("/v1/agents", json={"name": agent["name"]}, headers=h), 409, "CONFLICT")
    error_of(c.post("/v1/agents", json={"name": "x"}, headers=viewer), 403, "FORBIDDEN")
    error_of(c.post("/v1/agents", content=b"name=x", headers=h | {"Content-Type": "text/plain"}), 415,
             "UNSUPPORTED_MEDIA_TYPE")
    error_of(c.post("/v1/agents", content=b"{", headers=h), 400, "BAD_REQUEST")
    error_of(c.post("/v1/agents", json={"name": "x" * 70_000}, headers=h), 413, "PAYLOAD_TOO_LARGE")
    assert c.get("/v1/agents?limit=1", headers=h).status_code == 200
    assert c.get(f"/v1/agents/{agent['id']}", headers=h).status_code == 200
    assert c.patch(f"/v1/agents/{agent['id']}", json={"instructions": "new"}, headers=h).status_code == 200
    assert c.get(f"/v1/agents/{agent['id']}/versions", headers=h).status_code == 200
    error_of(c.get("/v1/agents/agt_nope", headers=h), 404, "NOT_FOUND")

    session = org.create_session(agent["id"], title="t", metadata={"k": [1, {"x": None}]})
    assert c.get("/v1/sessions", headers=h).status_code == 200
    assert c.get(f"/v1/sessions/{session['id']}", headers=h).status_code == 200
    assert c.get(f"/v1/sessions/{session['id']}/messages?order=desc", headers=h).status_code == 200
    runs_path = f"/v1/sessions/{session['id']}/runs"
    run = c.post(runs_path, json={"input": "hi"}, headers=h | {"Idempotency-Key": "k1"})
    assert run.status_code == 202 and run.headers["Location"] == f"/v1/runs/{run.json()['id']}"
    replay = c.post(runs_path, json={"input": "hi"}, headers=h | {"Idempotency-Key": "k1"})
    assert replay.headers["Idempotent-Replayed"] == "true"
    error_of(c.post(runs_path, json={"input": "other"}, headers=h | {"Idempotency-Key": "k1"}), 422,
             "IDEMPOTENCY_MISMATCH")
    run_id = run.json()["id"]
    assert c.get(runs_path, headers=h).status_code == 200
    assert c.get(f"/v1/runs/{run_id}", headers=h).status_code == 200
    waited = c.get(f"/v1/runs/{run_id}/wait?timeout=0", headers=h)
    assert waited.status_code in (200, 202)
    # The suite's worker may have run it already (the story runs with or without one).
    assert c.post(f"/v1/runs/{run_id}/cancel", headers=h).status_code in (202, 409)
    assert c.get(f"/v1/runs/{run_id}/wait?timeout=30", headers=h).status_code == 200
    error_of(c.post(f"/v1/runs/{run_id}/cancel", headers=h), 409, "CONFLICT")
    assert read_events(c, f"/v1/runs/{run_id}/events", h)[-1]["type"] in events.TERMINAL_TYPES
    assert read_events(c, f"/v1/sessions/{session['id']}/events?after=0", h, limit=2)
    error_of(c.get(f"/v1/runs/{run_id}/events", headers=h | {"Last-Event-ID": "x"}), 400, "BAD_REQUEST")
    assert c.get(f"/v1/runs/{run_id}/tool-calls", headers=h).status_code == 200
    assert c.get("/v1/tool-calls?status=pending", headers=h).status_code == 200
    error_of(c.post("/v1/tool-calls/tc_nope/approve", json={}, headers=h), 404, "NOT_FOUND")
    error_of(c.post("/v1/tool-calls/tc_nope/reject", json={"reason": "no"}, headers=h), 404, "NOT_FOUND")

    memory = {"content": f"likes tea {secrets.token_hex(4)}", "scope": "user", "user_id": "u1"}
    created = c.post("/v1/memories", json=memory, headers=h)
    assert created.status_code == 201
    assert c.post("/v1/memories", json=memory, headers=h).headers["AgentOS-Deduplicated"] == "true"
    assert c.get("/v1/memories?kind=fact,preference", headers=h).status_code == 200
    assert c.get("/v1/memories?query=tea", headers=h).json()["data"][0]["score"] is not None
    assert c.get(f"/v1/memories/{created.json()['id']}", headers=h).status_code == 200
    assert c.delete(f"/v1/memories/{created.json()['id']}", headers=h).status_code == 204
    assert c.delete("/v1/memories?user=u1", headers=h).json() == {"deleted": 0}

    doc_json = c.post("/v1/knowledge", json={"content": "# Guide\nhello"}, headers=h)
    assert doc_json.status_code == 202
    raw = c.post("/v1/knowledge?title=Raw", content=b"plain words", headers=h | {"Content-Type": "text/plain"})
    assert raw.status_code == 202 and raw.json()["title"] == "Raw"
    assert c.get("/v1/knowledge?status=pending", headers=h).status_code == 200
    assert c.get(f"/v1/knowledge/{raw.json()['id']}", headers=h).json()["content_preview"] == "plain words"
    assert c.delete(f"/v1/knowledge/{raw.json()['id']}", headers=h).status_code == 204
    search = {"query": "hello", "limit": 3, "filter": {"team": "hr"}, "mode": "hybrid"}
    found = c.post("/v1/knowledge/search", json=search, headers=h)
    assert found.status_code == 200 and found.json()["data"] == []
    assert c.get('/v1/memories?query=tea&metadata={"k":"v"}', headers=h).status_code == 200

    assert c.put("/v1/secrets/hook_key", json={"value": "whsec_abc"}, headers=h).json()["created"] is True
    assert c.put("/v1/secrets/db_url", json={"value": "postgresql://u:p@10.9.9.9/other"}, headers=h).status_code == 200
    assert c.get("/v1/secrets", headers=h).status_code == 200
    skill = {"name": "lookup", "description": "Look up.", "url": "https://example.invalid/hook",
             "signing_secret": {"secret": "hook_key"}, "headers": {"X-Key": {"secret": "hook_key"}}}
    assert c.post("/v1/skills", json=skill, headers=h).status_code == 201
    assert c.patch("/v1/skills/lookup", json={"timeout_s": 5}, headers=h).json()["version"] == 2
    assert c.get("/v1/skills", headers=h).status_code == 200
    assert c.get("/v1/skills/lookup", headers=h).status_code == 200
    assert c.get("/v1/skills/web_fetch", headers=h).json()["kind"] == "builtin"
    assert c.get("/v1/skills/lookup/versions", headers=h).status_code == 200
    assert c.get("/v1/skills/lookup/versions/1", headers=h).status_code == 200
    error_of(c.delete("/v1/skills/web_fetch", headers=h), 409, "CONFLICT")
    assert c.delete("/v1/skills/lookup", headers=h).status_code == 204

    source = {"name": "warehouse", "url": {"secret": "db_url"}}
    assert c.post("/v1/data-sources", json=source, headers=h).status_code == 201
    assert c.get("/v1/data-sources", headers=h).status_code == 200
    assert c.get("/v1/data-sources/warehouse", headers=h).status_code == 200
    assert c.delete("/v1/data-sources/warehouse", headers=h).status_code == 204
    assert c.delete("/v1/secrets/db_url", headers=h).status_code == 204

    server = {"name": "tools", "url": "http://127.0.0.1:9/mcp", "timeout_s": 1}
    assert c.post("/v1/mcp-servers", json=server, headers=h).json()["last_error"]
    assert c.get("/v1/mcp-servers", headers=h).status_code == 200
    assert c.get("/v1/mcp-servers/tools", headers=h).status_code == 200
    assert c.post("/v1/mcp-servers/tools/refresh", headers=h).status_code == 200
    assert c.delete("/v1/mcp-servers/tools", headers=h).status_code == 204

    token = c.post("/v1/stream-tokens", json={"run_id": run_id}, headers=viewer)
    assert token.status_code == 200 and token.json()["url"].endswith(f"?token={token.json()['token']}")
    error_of(c.post("/v1/stream-tokens", json={"run_id": run_id, "session_id": session["id"]}, headers=h), 422,
             "VALIDATION_FAILED")
    error_of(c.post("/v1/stream-tokens", json={"run_id": "run_nope"}, headers=h), 404, "NOT_FOUND")
    usage = c.get("/v1/usage?group_by=agent", headers=h)
    assert usage.status_code == 200 and {"from", "to", "totals"} <= set(usage.json())
    error_of(c.get("/v1/usage?group_by=week", headers=h), 422, "VALIDATION_FAILED")
    error_of(c.get("/v1/usage", headers=viewer), 403, "FORBIDDEN")
    assert c.patch("/v1/budgets", json={"monthly_tokens": 1_000_000}, headers=h).status_code == 200
    budgets = c.get("/v1/budgets", headers=h).json()
    assert budgets["budget_overrides"]["monthly_tokens"] == 1_000_000 and budgets["usage"][0]["used"] >= 0
    assert c.get(f"/v1/orgs/{org.id}", headers=ADMIN).json()["budgets"]["monthly_tokens"] == 1_000_000
    assert c.get("/v1/audit-logs?action=agent.*&limit=2", headers=h).json()["data"][0]["action"].startswith("agent.")
    error_of(c.get("/v1/audit-logs?from=yesterday", headers=h), 422, "VALIDATION_FAILED")

    assert c.put("/v1/outbound-allowlist", json={"allow": ["10.1.0.0/16"]}, headers=h).status_code == 200
    assert c.get("/v1/outbound-allowlist", headers=h).json() == {"allow": ["10.1.0.0/16"]}
    uploaded = c.post("/v1/files", files={"file": ("../notes.txt", b"hello", "text/plain")}, headers=h)
    assert uploaded.status_code == 201 and uploaded.json()["name"] == "notes.txt"
    file_id = uploaded.json()["id"]
    error_of(c.post("/v1/files", json={"file": "x"}, headers=h), 415, "UNSUPPORTED_MEDIA_TYPE")
    assert c.get("/v1/files", headers=h).status_code == 200
    assert c.get(f"/v1/files/{file_id}", headers=h).json()["size_bytes"] == 5
    assert c.get(f"/v1/files/{file_id}/content", headers=h).content == b"hello"
    error_of(c.get("/v1/files/file_nope", headers=h), 404, "NOT_FOUND")
    files_path = f"/v1/sessions/{session['id']}/files"
    assert c.post(files_path, json={"file_id": file_id}, headers=h).json()["path"] == "files/notes.txt"
    assert c.get(files_path, headers=h).json()["data"][0]["file_id"] == file_id
    assert c.delete(f"{files_path}/{file_id}", headers=h).status_code == 204
    assert c.delete(f"/v1/files/{file_id}", headers=h).status_code == 204

    # A public address, never called: no run of this org ends while the webhook exists.
    hook = c.post("/v1/webhooks", json={"url": "http://93.184.215.14/hooks", "events": ["run.succeeded"]}, headers=h)
    assert hook.status_code == 201 and hook.json()["secret"].startswith("whsec_")
    hook_path = f"/v1/webhooks/{hook.json()['id']}"
    error_of(c.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/x", "events": ["run.succeeded"]}, headers=h),
             422, "WEBHOOK_URL_REFUSED")
    assert c.get("/v1/webhooks", headers=h).status_code == 200
    assert c.get(hook_path, headers=h).json()["enabled"] is True
    assert c.patch(hook_path, json={"description": "ops"}, headers=h).json()["description"] == "ops"
    assert c.post(f"{hook_path}/rotate-secret", json={}, headers=h).json()["secret"].startswith("whsec_")
    assert c.get(f"{hook_path}/deliveries?status=pending", headers=h).json()["data"] == []
    error_of(c.post(f"{hook_path}/deliveries/whd_nope/retry", headers=h), 404, "NOT_FOUND")
    assert c.delete(hook_path, headers=h).status_code == 204

    runner = c.post("/v1/runners", json={"name": "laptop", "labels": {"os": "linux"}}, headers=h)
    assert runner.status_code == 201 and runner.json()["token"].startswith("aosr_")
    error_of(c.post("/v1/runners", json={"name": "laptop"}, headers=h), 409, "CONFLICT")
    runner_h = {"Authorization": f"Bearer {runner.json()['token']}"}
    assert c.get("/v1/runners", headers=h).json()["data"][0]["name"] == "laptop"
    with c.stream("GET", "/v1/runner/calls", headers=runner_h) as stream:
        assert stream.status_code == 200 and next(stream.iter_lines()).startswith("event: heartbeat")
    error_of(c.get("/v1/runner/calls", headers=h), 401, "UNAUTHENTICATED")
    error_of(c.post("/v1/runner/calls/tc_0123456789abcdef0123456789ab/result", json={"output": "x"},
                    headers=runner_h), 404, "NOT_FOUND")
    assert c.get(f"/v1/runners/{runner.json()['id']}", headers=h).status_code == 200
    assert c.get(f"/v1/runs/{run_id}/workspaces", headers=h).json()["data"] == []
    error_of(c.post(f"/v1/runner/runs/{run_id}/workspace", json={"diff_stat": ""}, headers=runner_h), 404,
             "NOT_FOUND")
    assert c.delete(f"/v1/runners/{runner.json()['id']}", headers=h).json()["revoked_at"] is not None
    error_of(c.post("/v1/providers", json={"name": "local", "kind": "openai_compatible",
                                           "base_url": openai_server.base_url}, headers=h), 422, "PROVIDER_URL_REFUSED")
    open_loopback(stack, org.id)
    provider = c.post("/v1/providers", json={"name": "local", "kind": "openai_compatible",
                                             "base_url": openai_server.base_url}, headers=h)
    assert provider.status_code == 201
    provider_path = f"/v1/providers/{provider.json()['id']}"
    assert c.get("/v1/providers", headers=h).json()["data"][0]["name"] == "local"
    assert c.get(provider_path, headers=viewer).json()["kind"] == "openai_compatible"
    assert c.patch(provider_path, json={"default_model": "test-model"}, headers=h).status_code == 200
    assert c.post(f"{provider_path}/test", headers=h).json()["ok"] is True
    assert "test-model" in [m["id"] for m in c.get(f"{provider_path}/models", headers=h).json()["data"]]
    assert c.delete(provider_path, headers=h).status_code == 204

    assert c.delete(f"/v1/sessions/{session['id']}", headers=h).status_code == 204
    assert c.delete(f"/v1/agents/{agent['id']}", headers=h).status_code == 204

    exported = c.post(f"/v1/orgs/{org.id}/exports", headers=h)
    assert exported.status_code == 202 and c.get(exported.headers["location"], headers=h).status_code == 200
    error_of(c.get(exported.headers["location"] + "/download?expires=1&sig=00"), 403, "FORBIDDEN")
    assert c.delete("/v1/users-data?user=nobody", headers=h).json()["sessions"] == 0
    error_of(c.delete("/v1/users-data", headers=h), 422, "VALIDATION_FAILED")
    org_name = c.get(f"/v1/orgs/{org.id}", headers=ADMIN).json()["name"]
    error_of(c.post(f"/v1/orgs/{org.id}/restore", headers=h), 409, "CONFLICT")
    error_of(c.request("DELETE", f"/v1/orgs/{org.id}", json={"confirm": "not it"}, headers=h), 422,
             "VALIDATION_FAILED")
    deleting = c.request("DELETE", f"/v1/orgs/{org.id}", json={"confirm": org_name}, headers=h)
    assert deleting.status_code == 202 and deleting.json()["status"] == "scheduled"
    assert c.post(f"/v1/orgs/{org.id}/restore", headers=h).json()["status"] == "restored"
    # People: invite, accept, sign in, members, refresh, switch, reset, logout.
    email = f"story-{secrets.token_hex(4)}@example.com"
    invite = c.post("/v1/invitations", json={"email": email, "role": "admin"}, headers=h)
    assert invite.status_code == 201
    assert c.post(f"/v1/invitations/{invite.json()['id']}/resend", headers=h).status_code == 201
    assert c.get("/v1/invitations", headers=h).status_code == 200
    assert c.delete(f"/v1/invitations/{invite.json()['id']}", headers=h).status_code == 200
    error_of(c.post("/v1/invitations/accept", json={"token": "aosi_nope", "password": PASSWORD}), 404, "NOT_FOUND")
    tokens = join(org, email, "admin")
    signed_in = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert c.get("/v1/members", headers=h).status_code == 200
    assert c.patch(f"/v1/members/{tokens['user']['id']}", json={"role": "member"}, headers=h).status_code == 200
    error_of(c.post("/v1/auth/login", json={"email": email, "password": "wrong password!!"}), 401, "UNAUTHENTICATED")
    tokens = c.post("/v1/auth/refresh", json={"refresh_token": tokens["refresh_token"]}).json()
    signed_in = {"Authorization": f"Bearer {tokens['access_token']}"}
    assert c.post("/v1/auth/switch-org", json={"org_id": org.id}, headers=signed_in).status_code == 200
    assert c.post("/v1/auth/password-reset", json={"email": email}).status_code == 204
    error_of(c.post("/v1/auth/password-reset/confirm", json={"token": "aosp_nope", "password": PASSWORD}),
             404, "NOT_FOUND")
    assert c.post("/v1/auth/logout", headers=signed_in).status_code == 204
    # Open sign-up is off in the suite's settings (tests/test_people_signup.py turns it on).
    error_of(c.post("/v1/auth/register", json={"email": f"new-{email}", "password": PASSWORD}), 403,
             "SIGNUP_DISABLED")
    error_of(c.post("/v1/auth/verify-email", json={"token": "aosv_nope"}), 404, "NOT_FOUND")
    # No identity provider in the suite's settings (tests/test_sso.py has them).
    assert c.get("/v1/auth/providers").json() == {"providers": [], "open_signup": False}
    error_of(c.post("/v1/auth/oidc/start", json={}), 404, "NOT_FOUND")
    error_of(c.post("/v1/auth/github/callback", json={"code": "c", "state": "s"}), 404, "NOT_FOUND")
    assert c.delete(f"/v1/members/{tokens['user']['id']}", headers=h).status_code == 200

    operations = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    exercised = {(path, method) for path, method, _ in conformance.covered}
    assert operations <= exercised, sorted(operations - exercised)
    assert not conformance.problems, "\n".join(conformance.problems)
