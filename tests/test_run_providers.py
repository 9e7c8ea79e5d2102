"""Runs on `openai:` models, end to end: the worker's real langchain-openai client against the
local OpenAI-compatible test server (streaming, a tool call, and provider errors)."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from tests.helpers import Org, start_run, wait
from tests.openai_server import OpenAIServer
from tests.sse import read_events

pytestmark = pytest.mark.usefixtures("worker")


def test_an_openai_agent_streams_and_calls_a_tool(client: TestClient, org: Org, openai_server: OpenAIServer):
    agent = org.create_agent(model="openai:test-model", skills=["file_manager"], instructions="Be brief.",
                             confirm="none")
    session = org.create_session(str(agent["id"]))
    seen = len(openai_server.requests)
    run = start_run(org, str(session["id"]), 'use tool file_manager {"action": "write", "path": "o.txt", '
                                             '"content": "from openai"}')
    events = read_events(client, f"/v1/runs/{run['id']}/events", org.headers)
    types = [e["type"] for e in events]
    assert types[-1] == "run.succeeded", events[-1]
    call = next(e["data"] for e in events if e["type"] == "tool.call")
    assert call["name"] == "file_manager" and call["args"]["content"] == "from openai"
    result = next(e["data"] for e in events if e["type"] == "tool.result")
    assert result["output"] == {"path": "o.txt", "bytes": 11}
    deltas = [e["data"]["text"] for e in events if e["type"] == "message.delta"]
    assert "".join(deltas).startswith("tool said:")
    final = wait(org, run["id"])
    assert final["output"]["text"].startswith("tool said:") and "o.txt" in final["output"]["text"]
    assert final["usage"]["total_tokens"] > 0

    requests = openai_server.requests[seen:]
    assert len(requests) == 2 and all(r["stream"] for r in requests)
    assert requests[0]["model"] == "test-model"
    assert [t["function"]["name"] for t in requests[0]["tools"]] == ["file_manager"]
    assert requests[0]["messages"][0] == {"role": "system", "content": "Be brief."}
    tool_message = requests[1]["messages"][-1]
    assert tool_message["role"] == "tool" and "o.txt" in tool_message["content"]


def test_transient_provider_errors_are_retried(client: TestClient, org: Org, openai_server: OpenAIServer):
    agent = org.create_agent(model="openai:test-model")
    session = org.create_session(str(agent["id"]))
    openai_server.fail_next(503, times=1)  # the test worker retries once (AGENTOS_MODELS__MAX_RETRIES=1)
    final = wait(org, start_run(org, str(session["id"]), "hello")["id"])
    assert final["status"] == "succeeded" and final["output"]["text"] == "echo: hello"


def test_a_provider_error_fails_the_run_with_a_readable_message(
    client: TestClient, org: Org, openai_server: OpenAIServer
):
    agent = org.create_agent(model="openai:test-model")
    session = org.create_session(str(agent["id"]))
    openai_server.fail_next(401, times=1, message="Incorrect API key provided: sk-secret-123456")
    run = start_run(org, str(session["id"]), "hello")
    events = read_events(client, f"/v1/runs/{run['id']}/events", org.headers)
    assert events[-1]["type"] == "run.failed"
    error = events[-1]["data"]["error"]
    assert error["code"] == "MODEL_ERROR" and "401" in error["message"]
    assert "sk-secret" not in str(events)
    assert wait(org, run["id"])["status"] == "failed"
    # The session is not stuck: the next run works.
    assert wait(org, start_run(org, str(session["id"]), "again")["id"])["status"] == "succeeded"
