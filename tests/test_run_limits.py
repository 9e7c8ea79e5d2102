"""Limits and delegation rules, end to end through the worker: token budget, delegation depth,
a sub-agent's budget drawn from its parent's, and a model that cannot be built."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from tests.helpers import Org, start_run, wait
from tests.sse import read_events

pytestmark = pytest.mark.usefixtures("worker")


def test_the_token_budget_ends_a_run_with_a_clear_error(client: TestClient, org: Org):
    agent = org.create_agent(limits={"max_tokens": 20})
    session = org.create_session(str(agent["id"]))
    run = wait(org, start_run(org, str(session["id"]), "tell me everything")["id"])
    assert run["status"] == "failed"
    assert run["error"]["code"] == "MAX_TOKENS_EXCEEDED" and "limits.max_tokens" in run["error"]["message"]


def test_delegation_stops_at_the_depth_limit(client: TestClient, org: Org):
    a = org.create_agent(name="ping")
    b = org.create_agent(name="pong", subagents=[a["id"]])
    r = client.patch(f"/v1/agents/{a['id']}", json={"subagents": [b["id"]]}, headers=org.headers)
    assert r.status_code == 200, r.text
    session = org.create_session(str(a["id"]))
    # ping -> pong -> ping -> pong -> ping: one more level than the worker allows (3).
    run = start_run(org, str(session["id"]), "delegate: pong delegate: ping delegate: pong delegate: ping hi")
    events = read_events(client, f"/v1/runs/{run['id']}/events", org.headers)
    assert events[-1]["type"] == "run.succeeded", events[-1]
    started = [e["data"]["agent_id"] for e in events if e["type"] == "subagent.started"]
    assert started == [b["id"], a["id"], b["id"]]
    assert "depth limit" in wait(org, run["id"])["output"]["text"]


def test_a_subagent_spends_its_parents_step_budget(client: TestClient, org: Org):
    helper = org.create_agent(name="worker-bee", limits={"max_steps": 50})
    boss = org.create_agent(name="queen", subagents=[helper["id"]], skills=["file_manager"],
                            limits={"max_steps": 2})
    session = org.create_session(str(boss["id"]))
    # The boss has 2 steps and its first THINK delegates; the helper may take 50 of its own, but
    # only 1 is left: its tool call fits, the THINK after it does not.
    task = 'delegate: worker-bee call: file_manager {"action": "list"}'
    run = wait(org, start_run(org, str(session["id"]), task)["id"])
    assert run["status"] == "failed" and run["error"]["code"] == "MAX_STEPS_EXCEEDED", run


def test_a_model_without_credentials_fails_the_run_readably(client: TestClient, org: Org):
    agent = org.create_agent(model="anthropic:claude-test")  # the test worker has no Anthropic key
    session = org.create_session(str(agent["id"]))
    run = wait(org, start_run(org, str(session["id"]), "hello")["id"])
    assert run["status"] == "failed" and run["error"]["code"] == "MODEL_CONFIG"
    assert "AGENTOS_MODELS__ANTHROPIC_API_KEY" in run["error"]["message"]
