"""Human approval of sensitive tool calls, end to end: the run waits holding no worker, and a
decision resumes it from its checkpoint."""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.helpers import Org, Worker, start_run, wait
from tests.sse import read_events

pytestmark = pytest.mark.usefixtures("worker")

WRITE = 'call: file_manager {"action": "write", "path": "a.txt", "content": "original"}'


def until_status(org: Org, run_id: str, status: str, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = org.client.get(f"/v1/runs/{run_id}", headers=org.headers).json()
        if run["status"] == status:
            return dict(run)
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} never reached {status}: {run}")


def pending_for(org: Org, run_id: str) -> list[dict[str, Any]]:
    calls = org.client.get("/v1/tool-calls", params={"status": "pending"}, headers=org.headers).json()["data"]
    return [c for c in calls if c["run_id"] == run_id]


def workspace(worker: Worker, org: Org, session: dict[str, Any]) -> Path:
    return worker.workspace_root / org.id / str(session["id"])


@pytest.fixture
def session(org: Org) -> dict[str, Any]:
    agent = org.create_agent(skills=["file_manager"])
    return org.create_session(str(agent["id"]))


def test_a_sensitive_call_waits_holding_no_worker_then_runs_once_approved(
    client: TestClient, org: Org, session: dict[str, Any], worker: Worker
):
    run = start_run(org, str(session["id"]), WRITE)
    paused = until_status(org, run["id"], "awaiting_confirmation")
    assert paused["attempt"] == 1
    [pending] = pending_for(org, run["id"])
    assert pending["name"] == "file_manager" and pending["args"]["content"] == "original" and pending["sensitive"]
    assert not (workspace(worker, org, session) / "a.txt").exists(), "nothing happens before approval"

    # Both worker slots are free while it waits: two other runs of 1 s execute side by side (their
    # executions overlap, which they could not if the waiting run held one of the two slots).
    others = [org.create_session(str(session["agent_id"])) for _ in range(2)]
    waiting = [start_run(org, str(s["id"]), "wait: 1") for s in others]
    done = [wait(org, r["id"]) for r in waiting]
    assert all(d["status"] == "succeeded" for d in done)
    (a_start, b_start), (a_end, b_end) = ([datetime.fromisoformat(d[key]) for d in done]
                                          for key in ("started_at", "finished_at"))
    assert a_start < b_end and b_start < a_end, "a waiting run must not hold a worker slot"
    assert org.client.get(f"/v1/runs/{run['id']}", headers=org.headers).json()["status"] == "awaiting_confirmation"

    r = client.post(f"/v1/tool-calls/{pending['id']}/approve", json={}, headers=org.headers)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "approved" and r.json()["decided_by"]
    final = wait(org, run["id"])
    assert final["status"] == "succeeded" and final["attempt"] == 2
    assert (workspace(worker, org, session) / "a.txt").read_text() == "original"

    again = client.post(f"/v1/tool-calls/{pending['id']}/approve", json={}, headers=org.headers)
    assert again.status_code == 409 and again.json()["error"]["code"] == "CONFLICT"
    events = read_events(client, f"/v1/runs/{run['id']}/events", org.headers)
    types = [e["type"] for e in events]
    assert types.index("confirmation.required") < types.index("confirmation.resolved") < types.index("tool.call")
    assert types.count("tool.call") == 1 and types[-1] == "run.succeeded"
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    resolved = next(e["data"] for e in events if e["type"] == "confirmation.resolved")
    assert resolved == {"tool_call_id": pending["id"], "decision": "approved", "decided_by": resolved["decided_by"]}


def test_edited_arguments_are_what_runs(client: TestClient, org: Org, session: dict[str, Any], worker: Worker):
    run = start_run(org, str(session["id"]), WRITE)
    until_status(org, run["id"], "awaiting_confirmation")
    [pending] = pending_for(org, run["id"])
    edited = {"action": "write", "path": "b.txt", "content": "edited"}
    r = client.post(f"/v1/tool-calls/{pending['id']}/approve", json={"args": edited}, headers=org.headers)
    assert r.status_code == 200, r.text
    assert r.json()["args"] == edited and r.json()["proposed_args"]["path"] == "a.txt"
    assert wait(org, run["id"])["status"] == "succeeded"
    ws = workspace(worker, org, session)
    assert (ws / "b.txt").read_text() == "edited" and not (ws / "a.txt").exists()
    events = read_events(client, f"/v1/runs/{run['id']}/events", org.headers)
    assert next(e["data"]["args"] for e in events if e["type"] == "tool.call") == edited


def test_a_rejection_is_told_to_the_model(client: TestClient, org: Org, session: dict[str, Any], worker: Worker):
    run = start_run(org, str(session["id"]), WRITE)
    until_status(org, run["id"], "awaiting_confirmation")
    [pending] = pending_for(org, run["id"])
    r = client.post(f"/v1/tool-calls/{pending['id']}/reject", json={"reason": "not today"}, headers=org.headers)
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    final = wait(org, run["id"])
    assert final["status"] == "succeeded"
    assert "rejected" in final["output"]["text"] and "not today" in final["output"]["text"]
    assert not (workspace(worker, org, session) / "a.txt").exists()
    events = read_events(client, f"/v1/runs/{run['id']}/events", org.headers)
    assert "tool.call" not in [e["type"] for e in events]
    again = client.post(f"/v1/tool-calls/{pending['id']}/approve", json={}, headers=org.headers)
    assert again.status_code == 409


def test_a_subagents_call_waits_in_the_same_list(client: TestClient, org: Org, worker: Worker):
    helper = org.create_agent(name="scribe", skills=["file_manager"])
    boss = org.create_agent(name="chief", subagents=[helper["id"]])
    session = org.create_session(str(boss["id"]))
    run = start_run(org, str(session["id"]), f"delegate: scribe {WRITE}")
    until_status(org, run["id"], "awaiting_confirmation")
    [pending] = pending_for(org, run["id"])
    assert pending["agent_id"] == helper["id"]
    assert client.post(f"/v1/tool-calls/{pending['id']}/approve", json={}, headers=org.headers).status_code == 200
    final = wait(org, run["id"])
    assert final["status"] == "succeeded", final
    assert (workspace(worker, org, session) / "a.txt").read_text() == "original"
    stored = client.get(f"/v1/runs/{run['id']}/tool-calls", headers=org.headers).json()["data"]
    assert [(c["name"], c["status"]) for c in stored] == [("file_manager", "succeeded")]


@pytest.mark.parametrize(("confirm", "script", "waits"), [
    ("none", WRITE, False),
    ([], 'call: file_manager {"action": "list"}', False),
    (["file_manager"], 'call: file_manager {"action": "list"}', True),
    ("all", 'call: file_manager {"action": "list"}', True),
])
def test_the_agents_confirm_setting_decides(org: Org, confirm: Any, script: str, waits: bool):
    agent = org.create_agent(skills=["file_manager"], confirm=confirm)
    session = org.create_session(str(agent["id"]))
    run = start_run(org, str(session["id"]), script)
    if waits:
        until_status(org, run["id"], "awaiting_confirmation")
        assert len(pending_for(org, run["id"])) == 1
        org.client.post(f"/v1/runs/{run['id']}/cancel", headers=org.headers)
    else:
        assert wait(org, run["id"])["status"] == "succeeded"


def test_cancelling_a_waiting_run_closes_its_pending_call(client: TestClient, org: Org, session: dict[str, Any]):
    run = start_run(org, str(session["id"]), WRITE)
    until_status(org, run["id"], "awaiting_confirmation")
    [pending] = pending_for(org, run["id"])
    r = client.post(f"/v1/runs/{run['id']}/cancel", headers=org.headers)
    assert r.status_code == 202 and r.json()["status"] == "cancelled"
    assert pending_for(org, run["id"]) == []
    late = client.post(f"/v1/tool-calls/{pending['id']}/approve", json={}, headers=org.headers)
    assert late.status_code == 409
    # The session is free again.
    assert wait(org, start_run(org, str(session["id"]), "hello")["id"])["status"] == "succeeded"


def test_other_orgs_and_viewers_cannot_decide(client: TestClient, org: Org, other_org: Org, session: dict[str, Any]):
    run = start_run(org, str(session["id"]), WRITE)
    until_status(org, run["id"], "awaiting_confirmation")
    [pending] = pending_for(org, run["id"])
    r = client.post(f"/v1/tool-calls/{pending['id']}/approve", json={}, headers=other_org.headers)
    assert r.status_code == 404
    viewer = {"Authorization": f"Bearer {org.key_with_role('viewer')}"}
    assert client.post(f"/v1/tool-calls/{pending['id']}/reject", json={}, headers=viewer).status_code == 403
    assert client.post(f"/v1/tool-calls/{pending['id']}/approve", json={"args": "x"},
                       headers=org.headers).status_code == 422
    assert pending_for(org, run["id"]) != []
    client.post(f"/v1/runs/{run['id']}/cancel", headers=org.headers)


def test_plan_mode_plans_first_replans_on_rejection_and_executes_once_approved(
    client: TestClient, org: Org, worker: Worker
):
    agent = org.create_agent(skills=["file_manager"], mode="plan", confirm="none")
    session = org.create_session(str(agent["id"]))
    run = start_run(org, str(session["id"]), 'call: file_manager {"action": "write", "path": "p.txt", "content": "v"}')
    until_status(org, run["id"], "awaiting_confirmation")
    [first] = pending_for(org, run["id"])
    assert first["kind"] == "plan" and first["name"] == "plan"
    assert "1. call file_manager" in first["args"]["plan"]
    assert not (workspace(worker, org, session) / "p.txt").exists(), "nothing runs before the plan is approved"

    r = client.post(f"/v1/tool-calls/{first['id']}/reject", json={"reason": "name the file"}, headers=org.headers)
    assert r.status_code == 200
    deadline = time.monotonic() + 20
    while not (second := pending_for(org, run["id"])) and time.monotonic() < deadline:
        time.sleep(0.05)
    [revised] = second
    assert revised["id"] != first["id"] and "revised after: name the file" in revised["args"]["plan"]
    assert client.post(f"/v1/tool-calls/{revised['id']}/approve", json={}, headers=org.headers).status_code == 200

    final = wait(org, run["id"])
    assert final["status"] == "succeeded", final
    assert (workspace(worker, org, session) / "p.txt").read_text() == "v"
    events = read_events(client, f"/v1/runs/{run['id']}/events", org.headers)
    nodes = [e["data"]["node"] for e in events if e["type"] == "step.started"]
    assert nodes[:1] == ["plan"] and nodes.count("plan") == 2 and "act" in nodes
    assert nodes.index("act") > max(i for i, n in enumerate(nodes) if n == "plan")
    required = [e["data"] for e in events if e["type"] == "confirmation.required"]
    assert [c["kind"] for c in required] == ["plan", "plan"]


def test_each_of_a_subagents_calls_needs_its_own_approval(client: TestClient, org: Org, worker: Worker):
    helper = org.create_agent(name="copyist", skills=["file_manager"])
    boss = org.create_agent(name="editor", subagents=[helper["id"]])
    # Two boss steps, each delegating one write: the second approval must not be skipped.
    session = org.create_session(str(boss["id"]))
    script = "\n".join([
        'delegate: copyist call: file_manager {"action": "write", "path": "one.txt", "content": "1"}',
        'delegate: copyist call: file_manager {"action": "write", "path": "two.txt", "content": "2"}',
    ])
    run = start_run(org, str(session["id"]), script)
    decided = []
    for expected in ("one.txt", "two.txt"):
        deadline = time.monotonic() + 20
        while not (pending := pending_for(org, run["id"])) and time.monotonic() < deadline:
            time.sleep(0.05)
        [call] = pending
        assert call["args"]["path"] == expected
        assert not (workspace(worker, org, session) / expected).exists()
        assert client.post(f"/v1/tool-calls/{call['id']}/approve", json={}, headers=org.headers).status_code == 200
        decided.append(call["id"])
    assert wait(org, run["id"])["status"] == "succeeded"
    assert (workspace(worker, org, session) / "two.txt").read_text() == "2"
