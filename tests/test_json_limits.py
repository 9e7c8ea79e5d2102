"""Nested JSON: every write route bounds how deep a client's JSON nests (422 naming the field,
never 500, whatever the depth), and reads render whatever is stored, even past what orjson can
render, without failing for the whole org."""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
import psycopg
import pytest

from agentos.stack.local import StackUrls
from api import json_limits, responses
from api.app import create_app
from api.endpoint import Endpoint, Resource
from core import ids
from tests.helpers import ADMIN_TOKEN, Org, error_of, open_loopback
from tests.openai_server import OpenAIServer

DEPTHS = [10, 100, 1_000, 10_000]
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


def nested(depth: int) -> str:
    """JSON text of arrays and objects nested `depth` levels, built as text (no recursion)."""
    pairs = (depth - 1) // 2
    core = "{}" if depth - 2 * pairs == 1 else '{"k":[]}'
    return '{"k":[' * pairs + core + "]}" * pairs


# Every write route that reads a JSON body: (method, path, body with NESTED where the deep
# value goes, statuses a depth-10 value may get). A typed field answers 422 to any object.
WRITES: dict[tuple[str, str], tuple[str, set[int]]] = {
    ("POST", "/v1/orgs"): ('{"name": NESTED}', {422}),
    ("PATCH", "/v1/orgs/{org_id}"): ('{"limits": NESTED}', {422}),
    ("DELETE", "/v1/orgs/{org_id}"): ('{"confirm": NESTED}', {422}),
    ("POST", "/v1/api-keys"): ('{"name": "k", "role": NESTED}', {422}),
    ("POST", "/v1/agents"): ('{"name": "deep-agent", "limits": NESTED}', {422}),
    ("PATCH", "/v1/agents/{agent_id}"): ('{"memory": NESTED}', {422}),
    ("POST", "/v1/sessions"): ('{"agent_id": "{agent_id}", "metadata": {"deep": NESTED}}', {201}),
    ("POST", "/v1/sessions/{session_id}/runs"): ('{"input": "hi", "metadata": {"deep": NESTED}}', {202}),
    ("POST", "/v1/tool-calls/{tool_call_id}/approve"): ('{"args": {"deep": NESTED}}', {404}),
    ("POST", "/v1/tool-calls/{tool_call_id}/reject"): ('{"reason": NESTED}', {422}),
    ("POST", "/v1/memories"): ('{"content": "deep fact", "metadata": {"deep": NESTED}}', {201}),
    ("POST", "/v1/knowledge"): ('{"content": "deep doc", "metadata": {"deep": NESTED}}', {202}),
    ("POST", "/v1/knowledge/search"): ('{"query": "deep", "filter": {"deep": NESTED}}', {200}),
    ("PUT", "/v1/secrets/{name}"): ('{"value": NESTED}', {422}),
    ("POST", "/v1/skills"): ('{"name": "deep", "description": "d", "url": "http://example.com", '
                             '"signing_secret": {"secret": "s"}, "headers": NESTED}', {422}),
    ("PATCH", "/v1/skills/{name}"): ('{"headers": NESTED}', {422}),
    ("POST", "/v1/data-sources"): ('{"name": "deep", "url": NESTED}', {422}),
    ("POST", "/v1/mcp-servers"): ('{"name": "deep", "url": "http://example.com", "headers": NESTED}', {422}),
    ("POST", "/v1/mcp-servers/{name}/refresh"): ('{"x": NESTED}', {200}),
    ("PUT", "/v1/outbound-allowlist"): ('{"allow": NESTED}', {422}),
    ("PATCH", "/v1/budgets"): ('{"monthly_tokens": NESTED}', {422}),
    ("POST", "/v1/stream-tokens"): ('{"run_id": NESTED}', {422}),
    ("POST", "/v1/webhooks"): ('{"url": "http://93.184.215.14/hooks", "events": NESTED}', {422}),
    ("PATCH", "/v1/webhooks/{webhook_id}"): ('{"events": NESTED}', {422}),
    ("POST", "/v1/webhooks/{webhook_id}/rotate-secret"): ('{"secret": NESTED}', {422}),
    ("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry"): ('{"x": NESTED}', {404}),
    ("POST", "/v1/sessions/{session_id}/files"): ('{"file_id": NESTED}', {422}),
    ("POST", "/v1/runners"): ('{"name": "r", "labels": NESTED}', {422}),
    # A runner's route: an org key is no runner token (the body is read first, like every route's).
    ("POST", "/v1/runner/calls/{call_id}/result"): ('{"output": NESTED}', {401}),
    ("POST", "/v1/runner/runs/{run_id}/workspace"): ('{"diff_stat": NESTED}', {422}),
    ("POST", "/v1/providers"): ('{"name": "deep", "kind": "openai_compatible", "headers": NESTED}', {422}),
    ("PATCH", "/v1/providers/{provider_id}"): ('{"headers": NESTED}', {422}),
    ("POST", "/v1/providers/{provider_id}/test"): ('{"x": NESTED}', {200}),
    ("PATCH", "/v1/members/{user_id}"): ('{"role": NESTED}', {422}),
    ("POST", "/v1/invitations"): ('{"email": NESTED}', {422}),
    ("POST", "/v1/invitations/accept"): ('{"token": NESTED}', {422}),
    ("POST", "/v1/auth/login"): ('{"email": NESTED}', {422}),
    ("POST", "/v1/auth/refresh"): ('{"refresh_token": NESTED}', {422}),
    ("POST", "/v1/auth/switch-org"): ('{"org_id": NESTED}', {422}),
    ("POST", "/v1/auth/password-reset"): ('{"email": NESTED}', {422}),
    ("POST", "/v1/auth/password-reset/confirm"): ('{"token": NESTED}', {422}),
    ("POST", "/v1/auth/register"): ('{"email": NESTED}', {422}),
    ("POST", "/v1/auth/verify-email"): ('{"token": NESTED}', {422}),
    ("POST", "/v1/auth/{provider}/start"): ('{"org_id": NESTED}', {422}),
    ("POST", "/v1/auth/{provider}/callback"): ('{"code": NESTED}', {422}),
}



def read_routes(app: Any) -> list[tuple[str, Endpoint]]:
    """Every GET route that answers JSON at once (not the SSE streams, nor the long poll, nor raw
    bytes such as a file's content or /metrics)."""
    return [(route.path, route.handlers["GET"]) for route in app.routes
            if isinstance(route, Resource) and "GET" in route.handlers
            and not route.handlers["GET"].spec.stream and not route.handlers["GET"].spec.download
            and not route.path.endswith("/wait")]


def test_the_table_names_every_write_route_that_reads_json(settings):
    served = set()
    for route in create_app(settings).routes:
        if isinstance(route, Resource):
            for method, handler in route.handlers.items():
                assert isinstance(handler, Endpoint)
                if method in ("POST", "PATCH", "PUT", "DELETE") and handler.spec.body is not None:
                    served.add((method, route.path))
    # The knowledge route parses its JSON body itself (it also takes raw text).
    assert served | {("POST", "/v1/knowledge")} == set(WRITES)


def _fill(path: str, org: Org, made: dict[str, Any]) -> str:
    """`path` with its {name_id} parameters filled from `made` (a new tool call id if absent)."""
    for name in re.findall(r"{(\w+)}", path):
        value = org.id if name == "org_id" else made.get(name) or ids.new_id("tool_call")
        path = path.replace("{" + name + "}", str(value))
    return path


def _make_one_of_each(client, org: Org, stack: StackUrls, openai_server: OpenAIServer) -> dict[str, Any]:
    """An agent, session, run, memory and document with plain data, so every read has something."""
    agent = org.create_agent()
    session = org.create_session(str(agent["id"]))
    run = client.post(f"/v1/sessions/{session['id']}/runs", json={"input": "hi"}, headers=org.headers).json()
    memory = client.post("/v1/memories", json={"content": "a plain fact"}, headers=org.headers).json()
    document = client.post("/v1/knowledge", json={"content": "a plain doc"}, headers=org.headers).json()
    # A skill, a data source and an MCP server all named "thing" (their routes share `{name}`);
    # 192.0.2.1 (TEST-NET) is never connected to: the guard refuses it.
    client.put("/v1/secrets/thing_url", json={"value": "postgresql://u@192.0.2.1/x"}, headers=org.headers)
    for path, body in [("/v1/skills", {"name": "thing", "description": "d", "url": "http://192.0.2.1/",
                                       "signing_secret": {"secret": "thing_url"}}),
                       ("/v1/data-sources", {"name": "thing", "url": {"secret": "thing_url"}}),
                       ("/v1/mcp-servers", {"name": "thing", "url": "http://192.0.2.1/mcp"})]:
        assert client.post(path, json=body, headers=org.headers).status_code == 201
    # A public literal address passes the guard at creation without a lookup; it is sent nothing.
    webhook = client.post("/v1/webhooks", json={"url": "http://93.184.215.14/hooks", "events": ["run.timed_out"]},
                          headers=org.headers).json()
    file = client.post("/v1/files", files={"file": ("plain.txt", b"plain")}, headers=org.headers).json()
    runner = client.post("/v1/runners", json={"name": "runner-" + ids.new_id("tool_call")[-8:]},
                         headers=org.headers).json()
    export = client.post(f"/v1/orgs/{org.id}/exports", headers=org.headers).json()
    open_loopback(stack, org.id)  # the provider's models come from the suite's local OpenAI server
    provider = client.post("/v1/providers", json={"name": "thing", "kind": "openai_compatible",
                                                  "base_url": openai_server.base_url}, headers=org.headers).json()
    return {"runner_id": runner["id"], "export_id": export["id"], "agent_id": agent["id"],
            "session_id": session["id"], "run_id": run["id"],
            "memory_id": memory["id"], "document_id": document["id"], "name": "thing", "version": 1,
            "webhook_id": webhook["id"], "file_id": file["id"], "provider_id": provider["id"]}


@pytest.mark.parametrize("depth", DEPTHS)
def test_nested_json_on_every_write_route_is_accepted_or_422_and_reads_still_answer(client, org, depth, stack,
                                                                                  openai_server):
    made = _make_one_of_each(client, org, stack, openai_server)
    for (method, path), (template, shallow_statuses) in WRITES.items():
        url = _fill(path, org, made)
        body = _fill(template, org, made).replace("NESTED", nested(depth)).encode()
        # The platform admin signs orgs up and changes them; only their owner deletes one.
        headers = (ADMIN if "/v1/orgs" in path and method != "DELETE" else org.headers) | {
            "Content-Type": "application/json"}
        r = client.request(method, url, content=body, headers=headers)
        if depth <= 10:
            assert r.status_code in shallow_statuses, (method, path, r.status_code, r.text[:300])
        else:
            error = error_of(r, 422, "VALIDATION_FAILED")
            field = error["details"]["fields"][0]
            assert field["type"] == "too_deep", (method, path, field)
            # The path names where the body went too deep, from its top-level field down.
            top = orjson.loads(template.replace("{agent_id}", "x").replace("NESTED", "null"))
            assert field["field"].split(".")[0] in top, (method, path, field)
    reads = read_routes(client.app)
    assert len(reads) >= 15
    for path, handler in reads:
        headers = ADMIN if handler.spec.role == "platform_admin" else org.headers
        r = client.get(_fill(path, org, made), headers=headers)
        assert r.status_code == 200, (path, r.text[:300])


def test_the_field_path_and_the_limit_are_in_the_error(client, org):
    agent = org.create_agent()
    body = f'{{"agent_id": "{agent["id"]}", "metadata": {{"a": [1, {nested(40)}]}}}}'
    r = client.post("/v1/sessions", content=body, headers=org.headers | {"Content-Type": "application/json"})
    error = error_of(r, 422, "VALIDATION_FAILED")
    # Level 1 is the body, 2 metadata, 3 "a", 4 the nested value at a.1: 32 levels end at k.0 x 14.
    assert error["details"]["fields"][0]["field"] == "metadata.a.1" + ".k.0" * 14 + ".k"
    assert "deeper than 32 levels" in error["message"]


def test_a_body_exactly_at_the_limit_is_accepted(client, org):
    agent = org.create_agent()
    body = f'{{"agent_id": "{agent["id"]}", "metadata": {{"deep": {nested(30)}}}}}'  # 2 + 30 = 32 levels
    r = client.post("/v1/sessions", content=body, headers=org.headers | {"Content-Type": "application/json"})
    assert r.status_code == 201, r.text
    assert json_limits.too_deep(body.encode(), 32) is None
    assert json_limits.too_deep(body.encode(), 31) is not None


def test_past_the_parsers_limit_the_path_is_found_after_non_ascii_keys(client, org):
    body = '{"métadonnées €": ' + nested(5_000) + "}"
    r = client.post("/v1/agents", content=body.encode(), headers=org.headers | {"Content-Type": "application/json"})
    field = error_of(r, 422, "VALIDATION_FAILED")["details"]["fields"][0]
    assert field["type"] == "too_deep" and field["field"].startswith("métadonnées €.k.0.k")


def test_invalid_json_after_many_brackets_is_400_not_a_slow_scan(client, org):
    """An unterminated string full of escaped quotes is refused by the parser; the depth scan,
    which needs well-formed strings to stay linear, never sees it."""
    body = b"[" * 40 + b'"' + b'\\"' * 30_000  # 60 KB, under the test app's body limit
    r = client.post("/v1/agents", content=body, headers=org.headers | {"Content-Type": "application/json"})
    assert "not valid JSON" in error_of(r, 400, "BAD_REQUEST")["message"]


def _deep_text(depth: int) -> str:
    return '{"deep": ' + nested(depth - 1) + "}"


@pytest.mark.parametrize("depth", [300, 900])
def test_rows_stored_with_deep_json_still_render_on_every_read(client, org, stack, depth, openai_server):
    """Rows written around the API (older versions, other writers) render with the too-deep
    parts replaced by a marker; every read of the org keeps answering 200."""
    made = _make_one_of_each(client, org, stack, openai_server)
    deep = _deep_text(depth)
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        conn.execute("UPDATE sessions SET metadata = %s::jsonb WHERE id = %s", (deep, made["session_id"]))
        conn.execute("UPDATE runs SET metadata = %s::jsonb, output = %s::jsonb WHERE id = %s",
                     (deep, deep, made["run_id"]))
        conn.execute("UPDATE memories SET metadata = %s::jsonb WHERE id = %s", (deep, made["memory_id"]))
        conn.execute("UPDATE knowledge_documents SET metadata = %s::jsonb WHERE id = %s",
                     (deep, made["document_id"]))
    listed = client.get("/v1/sessions", headers=org.headers)
    assert listed.status_code == 200, listed.text[:300]
    assert "[truncated: nested more than 200 levels deep]" in listed.text
    for path, handler in read_routes(client.app):
        headers = ADMIN if handler.spec.role == "platform_admin" else org.headers
        r = client.get(_fill(path, org, made), headers=headers)
        assert r.status_code == 200, (path, r.text[:300])


def test_too_deep_reads_the_text_so_any_depth_gets_a_path():
    deep = b'{"m": ' + nested(100_000).encode() + b"}"
    assert json_limits.too_deep(deep, 4) == "m.k.0.k"
    # Brackets inside strings do not count.
    assert json_limits.too_deep(b'{"a": "[[[[[[[[[[", "b": [["]]]]"]]}', 3) is None
    assert json_limits.too_deep(b'{"a\\"b": [0, 1, [[]]]}', 3) == 'a"b.2.0'


def test_nul_path_walks_without_recursion():
    deep: Any = "x\x00"
    for _ in range(5_000):
        deep = [deep]
    assert json_limits.nul_path({"a": "ok", "b": deep}) == "b" + ".0" * 5_000
    assert json_limits.nul_path({"ok": 1, "k\x00": 2}) == "k\x00"
    assert json_limits.nul_path({"a": ["fine", {"b": 1}]}) is None


def test_rendering_never_fails_and_warns_once(caplog):
    deep: Any = {}
    for _ in range(5_000):
        deep = {"d": deep}
    content = {"data": [{"metadata": deep, "big": 10**30, "bad": "\ud800x", "ok": [1, 2.5, None, True]}]}
    with caplog.at_level(logging.DEBUG, logger="agentos.api"):
        first = orjson.loads(responses.render_json(content))
        responses.render_json(content)
    item = first["data"][0]
    assert item["big"] == str(10**30) and item["bad"] == "?x" and item["ok"] == [1, 2.5, None, True]
    inner = item["metadata"]
    for _ in range(responses.RENDER_MAX_DEPTH - 3):
        inner = inner["d"]
    assert inner == "[truncated: nested more than 200 levels deep]"
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) <= 1 and not any(r.exc_info for r in caplog.records)
