"""MCP servers end to end: an org registers a local MCP server (streamable HTTP on 127.0.0.1) by
URL, its tools become `mcp_<server>_<tool>` skills with their schemas, and the suite's worker calls
them in a run through one session, with header secrets, the SSRF guard and time limits. Every
failure reaches the model as text."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from api.app import create_app
from core.db import open_pool
from core.settings import McpSettings, Settings, StdioMcpServer
from skills import SkillContext, default_registry
from skills.catalogue import RunSkills
from tests.helpers import Org, Worker, error_of, start_run, wait
from tests.mcp_server import McpTestServer


@pytest.fixture(scope="module")
def mcp_server() -> Iterator[McpTestServer]:
    with McpTestServer() as server:
        yield server


def configure(stack: StackUrls, org: Org, **settings: Any) -> None:
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("UPDATE orgs SET settings = settings || %s::jsonb WHERE id = %s", (json.dumps(settings), org.id))


def register(org: Org, url: str, **fields: Any) -> Any:
    body = {"name": "calc", "url": url, "headers": {"Authorization": {"secret": "mcp_token"}}, "timeout_s": 3}
    return org.client.post("/v1/mcp-servers", json=body | fields, headers=org.headers)


def call(skill: str, **args: Any) -> str:
    return f"call: {skill} {json.dumps(args)}"


def test_a_servers_tools_become_skills_and_a_run_calls_them_in_one_session(
        org: Org, other_org: Org, client: TestClient, stack: StackUrls, worker: Worker, mcp_server: McpTestServer):
    configure(stack, org, outbound_allow=["127.0.0.1"])
    assert client.put("/v1/secrets/mcp_token", json={"value": "Bearer tok-123"}, headers=org.headers).status_code == 200
    r = register(org, mcp_server.url)
    assert r.status_code == 201, r.text
    server = r.json()
    assert server["last_error"] is None and server["tools_refreshed_at"]
    assert {t["skill"] for t in server["tools"]} == {"mcp_calc_add", "mcp_calc_whoami", "mcp_calc_fail",
                                                     "mcp_calc_slow"}
    assert "tok-123" not in r.text
    listed = {s["name"]: s for s in client.get("/v1/skills", headers=org.headers).json()["data"]}
    add = listed["mcp_calc_add"]
    assert add["kind"] == "mcp" and add["parameters"]["required"] == ["a", "b"]

    agent = org.create_agent(skills=["mcp_calc_add", "mcp_calc_whoami", "mcp_calc_fail", "mcp_calc_slow"],
                             confirm="none")
    session = org.create_session(str(agent["id"]))
    run = wait(org, start_run(org, str(session["id"]), "\n".join([
        call("mcp_calc_add", a=2, b=3),
        call("mcp_calc_whoami"),
        call("mcp_calc_whoami"),
        call("mcp_calc_fail"),
        call("mcp_calc_slow", seconds=10),
        call("mcp_calc_add", a="two", b=3),
    ]))["id"], timeout=60)
    assert run["status"] == "succeeded", run
    calls = client.get(f"/v1/runs/{run['id']}/tool-calls", headers=org.headers).json()["data"]
    assert calls[0]["output"] == {"result": 5}
    first, second = calls[1]["output"], calls[2]["output"]
    assert first["authorization"] == "Bearer tok-123" and first["session"]
    assert second["session"] == first["session"]  # one session for the run's calls
    errors = [c["error"]["message"] for c in calls[3:]]
    assert "the tool broke on purpose" in errors[0]
    assert "did not answer within 3 s" in errors[1]
    assert "Invalid arguments for mcp_calc_add" in errors[2]
    # (whoami echoes the header on purpose; nothing else of the run holds the secret)
    assert "tok-123" not in json.dumps([c["args"] for c in calls])


def test_only_urls_are_accepted_and_the_guard_applies_to_registration(
        org: Org, other_org: Org, client: TestClient, stack: StackUrls, mcp_server: McpTestServer):
    for body in [{"name": "shell", "command": "bash", "args": ["-c", "id"]},
                 {"name": "shell", "url": "stdio:///bin/sh"}, {"name": "shell", "url": "file:///etc/passwd"}]:
        error_of(client.post("/v1/mcp-servers", json=body, headers=org.headers), 422, "VALIDATION_FAILED")
    member = {"Authorization": f"Bearer {org.key_with_role('member')}"}
    error_of(client.post("/v1/mcp-servers", json={"name": "calc", "url": mcp_server.url}, headers=member), 403,
             "FORBIDDEN")

    # No allowlist for loopback: registered, but its tools cannot be read, and agents cannot name them.
    r = register(other_org, mcp_server.url, headers={})
    assert r.status_code == 201 and r.json()["tools"] == []
    assert "cannot be reached" in r.json()["last_error"]
    error_of(client.post("/v1/agents", json={"name": "a", "skills": ["mcp_calc_add"]}, headers=other_org.headers),
             422, "VALIDATION_FAILED")
    configure(stack, other_org, outbound_allow=["127.0.0.1"])
    refreshed = client.post("/v1/mcp-servers/calc/refresh", headers=other_org.headers).json()
    assert refreshed["last_error"] is None and len(refreshed["tools"]) == 4

    error_of(client.get("/v1/mcp-servers/calc", headers=org.headers), 404, "NOT_FOUND")
    error_of(client.post("/v1/mcp-servers/calc/refresh", headers=org.headers), 404, "NOT_FOUND")
    error_of(client.delete("/v1/mcp-servers/calc", headers=org.headers), 404, "NOT_FOUND")
    assert client.delete("/v1/mcp-servers/calc", headers=other_org.headers).status_code == 204


def test_operator_stdio_servers_serve_every_org_and_only_settings_name_them(
        org: Org, client: TestClient, settings: Settings):
    """A run's skills (as a worker builds them) reach an operator's stdio server: one process for
    the run's calls, ended with the run. The API accepts its tools in agents and keeps its name."""
    script = Path(__file__).with_name("mcp_stdio_server.py")
    configured = settings.model_copy(update={"mcp": McpSettings(stdio={
        "local": StdioMcpServer(command=sys.executable, args=[str(script)], timeout_s=20)})})

    async def use() -> tuple[Any, Any, Any]:
        pool = await open_pool(settings.database)
        skills = RunSkills(default_registry(), pool, org.id, {}, {}, configured)
        try:
            tools = await skills.for_agent(["mcp_local_shout", "mcp_local_pid", "mcp_local_nope"])
            ctx = SkillContext(org.id, "ses_1", "run_1", "agt_1", "tc_1", Path("."))
            shouted = await tools["mcp_local_shout"].invoke(ctx, {"text": "hi"})
            pids = [await tools["mcp_local_pid"].invoke(ctx, {}) for _ in range(2)]
            return sorted(tools), shouted, pids
        finally:
            await skills.aclose()
            await pool.close()

    names, shouted, pids = asyncio.run(use())
    assert names == ["mcp_local_pid", "mcp_local_shout"]
    assert shouted == {"result": "HI"}
    assert pids[0] == pids[1] and pids[0]["result"] != os.getpid()  # one process for the run, not ours
    assert not psutil.pid_exists(pids[0]["result"]) or psutil.Process(pids[0]["result"]).status() == "zombie"
    # An API with the same settings lets agents name the operator's tools and keeps its name; the
    # suite's API, without it, knows no such server.
    with TestClient(create_app(configured)) as operator_api:
        r = operator_api.post("/v1/agents", json={"name": "a", "skills": ["mcp_local_shout"]}, headers=org.headers)
        assert r.status_code == 201, r.text
        error_of(operator_api.post("/v1/mcp-servers", json={"name": "local", "url": "http://192.0.2.1/mcp"},
                                   headers=org.headers), 422, "VALIDATION_FAILED")
    error_of(client.post("/v1/agents", json={"name": "b", "skills": ["mcp_local_shout"]}, headers=org.headers),
             422, "VALIDATION_FAILED")
