"""Text Postgres cannot store (NUL, unpaired surrogates) from a model never ends a run: a tool
call whose arguments hold it is refused as a tool error the model reads, and a model answer
holding it is stored with those characters replaced."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.helpers import Org, Worker
from tests.sse import read_events

pytestmark = [pytest.mark.usefixtures("worker"), pytest.mark.timeout(60)]

# JSON escapes inside the script: the model decodes them into the characters themselves.
BAD = {"nul": "\\u0000", "surrogate": "\\ud800"}


def _run(org: Org, client: TestClient, agent: dict[str, object], text: str) -> tuple[dict[str, Any], list[Any]]:
    session = org.create_session(str(agent["id"]))
    r = client.post(f"/v1/sessions/{session['id']}/runs", json={"input": text}, headers=org.headers)
    assert r.status_code == 202, r.text
    run = r.json()
    done = client.get(f"/v1/runs/{run['id']}/wait?timeout=30", headers=org.headers).json()
    return done, read_events(client, f"/v1/runs/{run['id']}/events", org.headers)


@pytest.mark.parametrize("kind", BAD)
def test_a_tool_call_with_unstorable_arguments_is_refused_and_the_run_goes_on(
    org: Org, client: TestClient, worker: Worker, kind: str
):
    agent = org.create_agent(skills=["file_manager"], confirm="none")
    script = "\n".join([
        f'call: file_manager {{"action": "write", "path": "a.txt", "content": "x{BAD[kind]}y"}}',
        'call: file_manager {"action": "write", "path": "b.txt", "content": "fine"}',
    ])
    run, events = _run(org, client, agent, script)
    assert run["status"] == "succeeded", run
    results = [e["data"] for e in events if e["type"] == "tool.result"]
    assert len(results) == 2
    assert "cannot be stored" in results[0]["error"] and "args.content" in results[0]["error"]
    assert "output" in results[1]  # the model went on to the next call
    calls = client.get(f"/v1/runs/{run['id']}/tool-calls", headers=org.headers).json()["data"]
    assert [c["status"] for c in calls] == ["failed", "succeeded"]
    assert calls[0]["args"]["content"] == "x\ufffdy"
    assert "cannot be stored" in run["output"]["text"], "the model saw the refusal"
    session_dir = worker.workspace_root / org.id / run["session_id"]
    assert not (session_dir / "a.txt").exists() and (session_dir / "b.txt").read_text() == "fine"


@pytest.mark.parametrize("kind", BAD)
def test_a_delegation_with_unstorable_text_is_refused_and_the_run_goes_on(org: Org, client: TestClient, kind: str):
    helper = org.create_agent(name="helper-" + kind)
    agent = org.create_agent(subagents=[helper["id"]])
    script = f'call: delegate {{"agent": "helper-{kind}", "message": "say {BAD[kind]}"}}'
    run, events = _run(org, client, agent, script)
    assert run["status"] == "succeeded", run
    assert "cannot be stored" in run["output"]["text"]
    assert "subagent.started" not in [e["type"] for e in events]


@pytest.mark.parametrize("kind", BAD)
def test_a_model_answer_with_unstorable_characters_is_stored_with_them_replaced(
    org: Org, client: TestClient, kind: str
):
    agent = org.create_agent(model="openai:test-model")
    run, events = _run(org, client, agent, f'say json "before {BAD[kind]} after"')
    assert run["status"] == "succeeded", run
    assert run["output"]["text"] == "before \ufffd after"
    streamed = "".join(e["data"]["text"] for e in events if e["type"] == "message.delta")
    assert streamed == "before \ufffd after"
    messages = client.get(f"/v1/sessions/{run['session_id']}/messages", headers=org.headers).json()["data"]
    assert messages[-1]["role"] == "assistant" and messages[-1]["content"] == "before \ufffd after"
