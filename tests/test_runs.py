"""Runs end to end: API -> Redis queue -> a real Celery worker -> LangGraph -> events over SSE."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from tests.helpers import Org, Worker, start_run, wait
from tests.sse import read_events

pytestmark = pytest.mark.usefixtures("worker")


def test_offline_run_with_a_tool_and_a_subagent_streams_every_step(org: Org, client: TestClient, worker: Worker):
    helper = org.create_agent(name="helper", instructions="You help.")
    agent = org.create_agent(name="boss", skills=["file_manager"], subagents=[helper["id"]], confirm="none")
    session = org.create_session(str(agent["id"]))
    script = 'call: file_manager {"action": "write", "path": "notes/a.txt", "content": "hello"}\n' \
             "delegate: helper please summarise\n" \
             'call: file_manager {"action": "read", "path": "notes/a.txt"}'
    run = start_run(org, str(session["id"]), script)
    assert run["status"] == "queued" and run["stream_url"] == f"/v1/runs/{run['id']}/events"

    events = read_events(client, f"/v1/runs/{run['id']}/events", org.headers)
    types = [e["type"] for e in events]
    assert types[0] == "run.queued" and types[1] == "run.started" and types[-1] == "run.succeeded"
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "gap or repeat in seqs"
    nodes = [e["data"]["node"] for e in events if e["type"] == "step.started"]
    assert {"think", "act", "delegate", "respond"} <= set(nodes)
    assert nodes[0] == "think" and nodes[-1] == "respond"
    for kind in ("message.delta", "tool.call", "tool.result", "subagent.started", "subagent.completed",
                 "message.completed"):
        assert kind in types, kind
    assert types.index("subagent.started") < types.index("subagent.completed")
    calls = [e["data"] for e in events if e["type"] == "tool.call"]
    assert [c["args"]["action"] for c in calls] == ["write", "read"]
    results = [e["data"] for e in events if e["type"] == "tool.result"]
    assert results[1]["output"]["content"] == "hello"
    sub = [e for e in events if e["type"] == "message.delta" and e["data"]["agent_id"] == helper["id"]]
    assert sub, "the sub-agent's tokens stream too, tagged with its id"
    assert (worker.workspace_root / org.id / str(session["id"]) / "notes" / "a.txt").read_text() == "hello"

    final = wait(org, run["id"])
    assert final["status"] == "succeeded" and final["attempt"] == 1
    assert "hello" in final["output"]["text"]
    assert final["usage"]["total_tokens"] > 0
    completed = next(e for e in events if e["type"] == "message.completed")["data"]["message"]
    assert completed["role"] == "assistant" and completed["content"] == final["output"]["text"]
    messages = client.get(f"/v1/sessions/{session['id']}/messages", headers=org.headers).json()["data"]
    assert [m["role"] for m in messages] == ["user", "assistant"]
    assert messages[1]["content"] == final["output"]["text"]
    stored = client.get(f"/v1/runs/{run['id']}/tool-calls", headers=org.headers).json()["data"]
    assert [(c["name"], c["args"]["action"], c["status"]) for c in stored] == [
        ("file_manager", "write", "succeeded"), ("file_manager", "read", "succeeded")]
    assert [c["id"] for c in stored] == [c["tool_call_id"] for c in calls]
    assert stored[0]["sensitive"] is True and stored[1]["sensitive"] is False
    assert stored[1]["output"]["content"] == "hello"
    listed = client.get("/v1/tool-calls", params={"status": "succeeded"}, headers=org.headers).json()["data"]
    assert {c["id"] for c in stored} <= {c["id"] for c in listed}
    assert client.get("/v1/tool-calls", params={"status": "pending"}, headers=org.headers).json()["data"] == []
    bad = client.get("/v1/tool-calls", params={"status": "nope"}, headers=org.headers)
    assert bad.status_code == 422


def test_tool_calls_are_visible_to_their_org_only(org: Org, other_org: Org, client: TestClient):
    agent = org.create_agent(skills=["file_manager"])
    session = org.create_session(str(agent["id"]))
    run = start_run(org, str(session["id"]), 'call: file_manager {"action": "list"}')
    assert wait(org, run["id"])["status"] == "succeeded"
    assert len(client.get(f"/v1/runs/{run['id']}/tool-calls", headers=org.headers).json()["data"]) == 1
    r = client.get(f"/v1/runs/{run['id']}/tool-calls", headers=other_org.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
    assert client.get("/v1/tool-calls", headers=other_org.headers).json()["data"] == []
