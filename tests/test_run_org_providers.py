"""Runs on an org's own model providers (`<provider name>:<model>`), end to end through a real
worker against local fake servers speaking each provider's HTTP API: streaming and a tool call,
the org's key used (never the platform's, never shown), retries and Retry-After, a deleted
provider, and fallback models."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from tests.anthropic_server import AnthropicServer
from tests.helpers import Org, Worker, open_loopback, start_run, wait
from tests.openai_server import OpenAIServer
from tests.sse import read_events

pytestmark = pytest.mark.usefixtures("worker")

KEY = "org-provider-key-5f3a9c1e7b"
TOOL_INPUT = 'use tool file_manager {"action": "write", "path": "p.txt", "content": "from provider"}'


@pytest.fixture
def fake() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        server.api_key = KEY
        yield server


@pytest.fixture
def loopback(stack: StackUrls, org: Org) -> Org:
    open_loopback(stack, org.id)
    return org


def provider(org: Org, **fields: Any) -> dict[str, Any]:
    r = org.client.post("/v1/providers", json={"api_key": KEY} | fields, headers=org.headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


def run_with_tool(client: TestClient, org: Org, model: str, **agent: Any) -> tuple[list[dict[str, Any]],
                                                                                   dict[str, Any]]:
    created = org.create_agent(model=model, skills=["file_manager"], confirm="none", **agent)
    session = org.create_session(str(created["id"]))
    run = start_run(org, str(session["id"]), TOOL_INPUT)
    events = read_events(client, f"/v1/runs/{run['id']}/events", org.headers)
    return events, wait(org, run["id"])


def assert_streamed_a_tool_call(events: list[dict[str, Any]], final: dict[str, Any]) -> None:
    assert events[-1]["type"] == "run.succeeded", (events[-1], final.get("error"))
    call = next(e["data"] for e in events if e["type"] == "tool.call")
    assert call["name"] == "file_manager" and call["args"]["content"] == "from provider"
    result = next(e["data"] for e in events if e["type"] == "tool.result")
    assert result["output"] == {"path": "p.txt", "bytes": 13}
    deltas = "".join(e["data"]["text"] for e in events if e["type"] == "message.delta")
    assert deltas.startswith("tool said:") and final["output"]["text"] == deltas
    assert final["usage"]["total_tokens"] > 0


def assert_key_hidden(worker: Worker, *texts: str) -> None:
    for text in texts:
        assert KEY not in text
    assert KEY not in worker.process.log_path.read_text(errors="replace")


def test_an_agent_on_an_org_openai_provider_streams_and_calls_a_tool_with_the_orgs_key(
    client: TestClient, loopback: Org, fake: OpenAIServer, openai_server: OpenAIServer, worker: Worker
) -> None:
    provider(loopback, name="myopenai", kind="openai", base_url=fake.base_url)
    platform_calls = len(openai_server.requests)
    events, final = run_with_tool(client, loopback, "myopenai:test-model")
    assert_streamed_a_tool_call(events, final)
    assert len(fake.requests) == 2 and all(r["stream"] and r["model"] == "test-model" for r in fake.requests)
    assert fake.keys_seen == [KEY, KEY]
    assert len(openai_server.requests) == platform_calls  # the org's provider, not the platform's
    assert final["usage"]["models"] == ["myopenai:test-model"]
    by_model = client.get("/v1/usage?group_by=model", headers=loopback.headers).json()["data"]
    assert [g["model"] for g in by_model] == ["myopenai:test-model"]
    assert_key_hidden(worker, str(events), str(final))


def test_an_agent_on_an_org_anthropic_provider_streams_and_calls_a_tool(
    client: TestClient, loopback: Org, worker: Worker
) -> None:
    with AnthropicServer() as anthropic:
        anthropic.api_key = KEY
        provider(loopback, name="claude", kind="anthropic", base_url=anthropic.root_url)
        events, final = run_with_tool(client, loopback, "claude:test-model", instructions="Be brief.")
        assert_streamed_a_tool_call(events, final)
        first, second = anthropic.requests
        assert first["stream"] is True and first["model"] == "test-model" and first["system"] == "Be brief."
        assert [t["name"] for t in first["tools"]] == ["file_manager"]
        assert second["messages"][-1]["content"][0]["type"] == "tool_result"
        assert anthropic.keys_seen == [KEY, KEY]
    assert_key_hidden(worker, str(events), str(final))


def test_an_agent_on_an_azure_provider_calls_its_deployment(client: TestClient, loopback: Org, fake: OpenAIServer,
                                                            worker: Worker) -> None:
    provider(loopback, name="azure", kind="azure_openai", base_url=fake.root_url, api_version="2024-10-21")
    events, final = run_with_tool(client, loopback, "azure:test-model")
    assert_streamed_a_tool_call(events, final)
    assert fake.deployments == ["test-model", "test-model"] and fake.keys_seen == [KEY, KEY]
    assert_key_hidden(worker, str(events), str(final))


@pytest.fixture(params=["openai_compatible", "anthropic", "azure_openai"])
def any_kind(request: pytest.FixtureRequest, loopback: Org) -> Iterator[tuple[OpenAIServer, str]]:
    """A fake server of each kind, with a provider `flaky` of that kind in the org."""
    server = AnthropicServer() if request.param == "anthropic" else OpenAIServer()
    with server:
        server.api_key = KEY
        base = server.base_url if request.param == "openai_compatible" else server.root_url
        provider(loopback, name="flaky", kind=request.param, base_url=base)
        yield server, request.param


def test_rate_limits_and_server_errors_are_retried_and_a_bad_key_fails_readably(
    client: TestClient, loopback: Org, any_kind: tuple[OpenAIServer, str], worker: Worker
) -> None:
    fake, kind = any_kind
    agent = loopback.create_agent(model="flaky:test-model")
    session = str(loopback.create_session(str(agent["id"]))["id"])
    fake.fail_next(429, retry_after=1)  # the test worker retries once (AGENTOS_MODELS__MAX_RETRIES=1)
    assert wait(loopback, start_run(loopback, session, "hello")["id"])["output"]["text"] == "echo: hello"
    fake.fail_next(529 if kind == "anthropic" else 503)
    assert wait(loopback, start_run(loopback, session, "again")["id"])["output"]["text"] == "echo: again"
    assert len(fake.requests) == 4

    fake.api_key = "another-key-entirely"  # the provider now refuses the org's key (and may quote it)
    run = start_run(loopback, session, "refused")
    events = read_events(client, f"/v1/runs/{run['id']}/events", loopback.headers)
    error = events[-1]["data"]["error"]
    assert error["code"] == "MODEL_ERROR" and "'flaky'" in error["message"] and "401" in error["message"]
    assert len(fake.requests) == 5  # a bad key is not retried
    assert_key_hidden(worker, str(events), str(wait(loopback, run["id"])))


def test_a_deleted_provider_fails_the_next_run_with_model_config(client: TestClient, loopback: Org,
                                                                 fake: OpenAIServer) -> None:
    created = provider(loopback, name="gone", kind="openai_compatible", base_url=fake.base_url)
    agent = loopback.create_agent(model="gone:test-model")
    session = str(loopback.create_session(str(agent["id"]))["id"])
    assert wait(loopback, start_run(loopback, session, "hello")["id"])["status"] == "succeeded"
    assert client.delete(f"/v1/providers/{created['id']}", headers=loopback.headers).status_code == 204
    final = wait(loopback, start_run(loopback, session, "hello")["id"])
    assert final["status"] == "failed" and final["error"]["code"] == "MODEL_CONFIG"
    assert "'gone'" in final["error"]["message"]


def test_another_orgs_provider_name_does_not_resolve(client: TestClient, stack: StackUrls, loopback: Org,
                                                     other_org: Org, fake: OpenAIServer) -> None:
    provider(loopback, name="mine", kind="openai_compatible", base_url=fake.base_url)
    r = other_org.client.post("/v1/agents", json={"name": "borrower", "model": "mine:test-model"},
                              headers=other_org.headers)
    assert r.status_code == 422 and "'mine'" in r.text
    # Even with an agent naming "mine" (its own provider of that name, since deleted), org B's run
    # does not find org A's.
    open_loopback(stack, other_org.id)
    own = provider(other_org, name="mine", kind="openai_compatible", base_url=fake.base_url)
    agent = other_org.create_agent(model="mine:test-model")
    assert client.delete(f"/v1/providers/{own['id']}", headers=other_org.headers).status_code == 204
    session = str(other_org.create_session(str(agent["id"]))["id"])
    final = wait(other_org, start_run(other_org, session, "hello")["id"])
    assert final["error"]["code"] == "MODEL_CONFIG" and "'mine' does not exist" in final["error"]["message"]
    assert fake.requests == []


def test_an_outage_of_the_primary_model_falls_back_to_the_next(
    client: TestClient, loopback: Org, fake: OpenAIServer, openai_server: OpenAIServer
) -> None:
    provider(loopback, name="primary", kind="openai_compatible", base_url=fake.base_url)
    fake.failing = 503
    events, final = run_with_tool(client, loopback, "primary:test-model",
                                  fallback_models=["openai:test-model"])
    assert_streamed_a_tool_call(events, final)
    assert len(fake.requests) == 4  # each THINK: the primary twice (one retry), then the fallback
    assert final["usage"]["models"] == ["openai:test-model"]
    by_model = client.get("/v1/usage?group_by=model", headers=loopback.headers).json()["data"]
    assert [(g["model"], g["model_calls"]) for g in by_model] == [("openai:test-model", 2)]


def test_a_rate_limit_beyond_the_retry_budget_falls_back_at_once(loopback: Org, fake: OpenAIServer) -> None:
    provider(loopback, name="limited", kind="openai_compatible", base_url=fake.base_url)
    agent = loopback.create_agent(model="limited:test-model", fallback_models=["offline:default"])
    session = str(loopback.create_session(str(agent["id"]))["id"])
    fake.fail_next(429, retry_after=3600)
    final = wait(loopback, start_run(loopback, session, "hello")["id"])
    assert final["status"] == "succeeded" and final["usage"]["models"] == ["offline:default"]
    assert len(fake.requests) == 1  # no retry: waiting an hour is beyond the budget


def test_without_a_fallback_an_outage_fails_the_run(loopback: Org, fake: OpenAIServer) -> None:
    provider(loopback, name="down", kind="openai_compatible", base_url=fake.base_url)
    fake.failing = 503
    agent = loopback.create_agent(model="down:test-model")
    final = wait(loopback, start_run(loopback, str(loopback.create_session(str(agent["id"]))["id"]), "hi")["id"])
    error = final["error"]
    assert error["code"] == "MODEL_ERROR" and "server error (503) after 2 attempts" in error["message"]
