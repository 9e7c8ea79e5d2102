"""The model layer: the scripted offline model, provider resolution, and retries, with the real
langchain-openai client talking to a local OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from typing import Any, TypeVar

import httpx
import pytest
from langchain_anthropic import ChatAnthropic
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, ToolMessage
from langchain_core.runnables import Runnable
from langchain_openai import ChatOpenAI
from pydantic import SecretStr

from core.settings import ModelSettings, Settings
from core.skill_names import DELEGATE_TOOL
from orchestrator.models import (
    ModelConfigError,
    OfflineChatModel,
    OfflineModelError,
    aclose_model,
    describe_error,
    is_transient,
    resolve_model,
    with_retries,
)
from tests.openai_server import OpenAIServer

T = TypeVar("T")

FILE_MANAGER = {
    "type": "function",
    "function": {
        "name": "file_manager",
        "description": "Manage files in the session workspace.",
        "parameters": {
            "type": "object",
            "properties": {"action": {"type": "string"}, "path": {"type": "string"}},
            "required": ["action"],
        },
    },
}
SECRET_KEY = "sk-test-SECRET-0123456789abcdef"


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


async def stream(model: Runnable[LanguageModelInput, Any], messages: LanguageModelInput) -> list[AIMessageChunk]:
    return [chunk async for chunk in model.astream(messages)]


def merged(chunks: Sequence[AIMessageChunk]) -> AIMessageChunk:
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    return total


def models(**values: object) -> ModelSettings:
    return Settings(models=values).models  # type: ignore[arg-type]


# --- the offline model -------------------------------------------------------------------------


def test_offline_model_streams_word_by_word_with_usage() -> None:
    model = OfflineChatModel()
    chunks = run(stream(model, "please say hello to me"))
    words = [c for c in chunks if c.content]
    assert len(words) > 10
    assert all(re.fullmatch(r"\S+\s*", str(c.content)) for c in words)
    total = merged(chunks)
    text = str(total.content)
    assert text == str(model.invoke("please say hello to me").content)
    assert total.usage_metadata == {
        "input_tokens": 5,
        "output_tokens": len(text.split()),
        "total_tokens": 5 + len(text.split()),
    }
    assert [str(c.content) for c in model.stream("please say hello to me") if c.content] == [
        str(c.content) for c in words
    ]


def test_offline_canned_reply_explains_itself_and_how_to_configure_a_model() -> None:
    text = str(OfflineChatModel().bind_tools([FILE_MANAGER]).invoke("What's the weather in Paris?").content)
    assert "AgentOS offline model" in text and "no network" in text
    assert '"What\'s the weather in Paris?"' in text
    for needle in (
        "openai:gpt-4o-mini",
        "AGENTOS_MODELS__OPENAI_API_KEY",
        "anthropic:",
        "AGENTOS_MODELS__ANTHROPIC_API_KEY",
        "AGENTOS_MODELS__OPENAI_BASE_URL",
        "call: <skill> <json args>",
        "delegate: <agent> <message>",
        "wait: <seconds>",
        "file_manager",
    ):
        assert needle in text


def test_offline_echo_model_repeats_the_user_message() -> None:
    reply = OfflineChatModel(model_name="echo").invoke("call: nothing {}\nsay it back")
    assert reply.content == "call: nothing {}\nsay it back"
    assert reply.tool_calls == []


def test_offline_script_runs_one_directive_per_call_then_summarises() -> None:
    model = OfflineChatModel().bind_tools([FILE_MANAGER])
    script = 'Plan:\ncall: file_manager {"action": "list", "path": "."}\ndelegate: helper summarise the files please\n'
    earlier: list[BaseMessage] = [
        HumanMessage("call: file_manager {}"),
        AIMessage("", tool_calls=[{"name": "file_manager", "args": {}, "id": "old"}]),
        ToolMessage("old result", tool_call_id="old"),
        AIMessage("Done."),
    ]
    history: list[BaseMessage] = [*earlier, HumanMessage(script)]

    first = merged(run(stream(model, history)))
    assert first.content == ""
    assert [(c["name"], c["args"]) for c in first.tool_calls] == [("file_manager", {"action": "list", "path": "."})]
    first_id = first.tool_calls[0]["id"]
    assert first_id is not None and re.fullmatch(r"call_0_[0-9a-f]{8}", first_id)
    assert merged(run(stream(model, history))).tool_calls[0]["id"] == first_id  # deterministic
    assert first.usage_metadata is not None and first.usage_metadata["input_tokens"] > 0
    history += [AIMessage("", tool_calls=first.tool_calls), ToolMessage('{"files": ["a.txt"]}', tool_call_id=first_id)]

    second = run(model.ainvoke(history))
    assert [(c["name"], c["args"]) for c in second.tool_calls] == [
        (DELEGATE_TOOL, {"agent": "helper", "message": "summarise the files please"})
    ]
    second_id = second.tool_calls[0]["id"]
    assert second_id is not None and second_id.startswith("call_1_")
    history += [second, ToolMessage("There is one file.", tool_call_id=second_id)]

    final = run(model.ainvoke(history))
    assert final.tool_calls == []
    assert final.content == 'Done. file_manager returned {"files": ["a.txt"]}. helper said: There is one file.'


def test_offline_tool_results_are_truncated_in_the_summary() -> None:
    call = {"name": "file_manager", "args": {}, "id": "c1"}
    history = [
        HumanMessage("call: file_manager {}"),
        AIMessage("", tool_calls=[call]),
        ToolMessage("x" * 1000, tool_call_id="c1"),
    ]
    text = str(OfflineChatModel().invoke(history).content)
    assert text.startswith("Done. file_manager returned xxx")
    assert 200 <= len(text) < 260


def test_offline_wait_pauses_before_its_directive_and_at_the_end() -> None:
    model = OfflineChatModel()
    script = "wait: 0.3\ncall: file_manager {}\nwait: 0.2"
    started = time.monotonic()
    first = run(model.ainvoke(script))
    assert time.monotonic() - started >= 0.3
    assert [c["name"] for c in first.tool_calls] == ["file_manager"]
    tool_id = first.tool_calls[0]["id"] or ""
    started = time.monotonic()
    final = run(model.ainvoke([HumanMessage(script), first, ToolMessage("ok", tool_call_id=tool_id)]))
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 0.3 + 0.2  # only the trailing wait, not the first one again
    assert final.content == "Done. file_manager returned ok."
    started = time.monotonic()
    assert model.invoke("wait: 0.2").content == "Done."  # the sync path sleeps too
    assert time.monotonic() - started >= 0.2


def test_offline_wait_is_interrupted_by_cancellation() -> None:
    async def scenario() -> tuple[float, bool, int]:
        task = asyncio.create_task(stream(OfflineChatModel(), "wait: 30\ncall: file_manager {}"))
        await asyncio.sleep(0.2)
        started = time.monotonic()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
        # nothing keeps sleeping in the background (a shielded wait would)
        return time.monotonic() - started, task.cancelled(), len(asyncio.all_tasks())

    started = time.monotonic()
    elapsed, cancelled, tasks_left = run(scenario())
    assert cancelled and elapsed < 1.0 and tasks_left == 1
    assert time.monotonic() - started < 2.0


def test_offline_bad_directives_are_explained_not_crashed() -> None:
    model = OfflineChatModel()
    bad_json = run(model.ainvoke("call: file_manager {not json"))
    assert bad_json.tool_calls == []
    assert "not valid JSON" in str(bad_json.content) and "call: file_manager {not json" in str(bad_json.content)
    not_object = model.invoke("call: file_manager [1, 2]")
    assert "must be a JSON object" in str(not_object.content) and not_object.tool_calls == []
    no_message = model.invoke("delegate: helper")
    assert "needs an agent name and a message" in str(no_message.content)
    assert "number of seconds" in str(model.invoke("wait: soon").content)


def test_offline_fail_directive_raises_in_order() -> None:
    model = OfflineChatModel()
    first = model.invoke("call: file_manager {}\nfail: provider exploded")
    assert [c["name"] for c in first.tool_calls] == ["file_manager"]
    history = [
        HumanMessage("call: file_manager {}\nfail: provider exploded"),
        first,
        ToolMessage("ok", tool_call_id=first.tool_calls[0]["id"] or ""),
    ]
    with pytest.raises(OfflineModelError, match="provider exploded"):
        run(stream(model, history))
    with pytest.raises(OfflineModelError, match="provider exploded"):
        model.invoke(history)
    assert describe_error(OfflineModelError("provider exploded")) == "offline model failed: provider exploded"


def test_offline_emits_calls_to_unbound_tools() -> None:
    reply = OfflineChatModel().bind_tools([FILE_MANAGER]).invoke('call: web_search {"q": "x"}')
    assert [(c["name"], c["args"]) for c in reply.tool_calls] == [("web_search", {"q": "x"})]


# --- resolve_model --------------------------------------------------------------------------------


def test_resolve_offline_model() -> None:
    model = resolve_model("offline:default", models())
    assert isinstance(model, OfflineChatModel) and model.model_name == "default"
    assert isinstance(resolve_model("offline:echo", models()), OfflineChatModel)


def test_resolve_openai_without_a_key_needs_a_base_url() -> None:
    with pytest.raises(ModelConfigError, match="AGENTOS_MODELS__OPENAI_API_KEY"):
        resolve_model("openai:gpt-4o-mini", models())
    settings = models(openai_base_url="http://127.0.0.1:11434/v1", request_timeout_s=7)
    local, other = resolve_model("openai:llama3", settings), resolve_model("openai:llama3", settings)
    try:
        assert isinstance(local, ChatOpenAI) and isinstance(other, ChatOpenAI)
        assert local.model_name == "llama3" and local.openai_api_base == "http://127.0.0.1:11434/v1"
        assert isinstance(local.openai_api_key, SecretStr) and local.openai_api_key.get_secret_value() == "not-needed"
        assert (local.max_retries, local.streaming, local.stream_usage, local.request_timeout) == (0, True, True, 7)
        # each model has its own async HTTP client, never one shared across event loops
        assert local.root_async_client._client is not other.root_async_client._client
    finally:
        run(aclose_model(local))
        run(aclose_model(other))
    assert isinstance(local, ChatOpenAI) and local.root_async_client._client.is_closed


def test_resolve_anthropic_needs_a_key() -> None:
    with pytest.raises(ModelConfigError, match="AGENTOS_MODELS__ANTHROPIC_API_KEY"):
        resolve_model("anthropic:claude-sonnet-4-5", models(anthropic_base_url="http://127.0.0.1:1"))
    settings = models(anthropic_api_key="sk-ant-test", anthropic_base_url="http://127.0.0.1:1")
    first, second = resolve_model("anthropic:claude-sonnet-4-5", settings), resolve_model("anthropic:x", settings)
    assert isinstance(first, ChatAnthropic) and isinstance(second, ChatAnthropic)
    assert (first.model, first.max_retries, first.streaming, first.anthropic_api_url) == (
        "claude-sonnet-4-5",
        0,
        True,
        "http://127.0.0.1:1",
    )
    assert first.anthropic_api_key.get_secret_value() == "sk-ant-test"
    assert first._async_client._client is not second._async_client._client
    run(aclose_model(first))
    run(aclose_model(second))
    assert first._async_client._client.is_closed


@pytest.mark.parametrize("spec", ["gemini:pro", "openai:", "offline: ", "gpt-4o", ""])
def test_resolve_refuses_unknown_providers_and_empty_models(spec: str) -> None:
    with pytest.raises(ModelConfigError, match="provider"):
        resolve_model(spec, models(openai_api_key="sk-x"))


# --- the real OpenAI client against the local server ----------------------------------------------


@pytest.fixture
def server() -> Iterator[OpenAIServer]:
    with OpenAIServer() as s:
        yield s


def using(model: BaseChatModel, body: Callable[[BaseChatModel], Awaitable[T]]) -> T:
    async def main() -> T:
        try:
            return await body(model)
        finally:
            await aclose_model(model)

    return asyncio.run(main())


def test_openai_streams_text_through_the_real_client(server: OpenAIServer) -> None:
    model = resolve_model("openai:test-model", models(openai_base_url=server.base_url))
    chunks = using(model, lambda m: stream(m, "hello there general kenobi"))
    assert len([c for c in chunks if c.content]) >= 4
    total = merged(chunks)
    assert total.content == "echo: hello there general kenobi"
    assert total.usage_metadata is not None and total.usage_metadata["input_tokens"] == 7
    request = server.requests[0]
    assert request["stream"] is True and request["stream_options"] == {"include_usage": True}
    assert request["model"] == "test-model" and "tools" not in request
    assert server.authorizations == ["Bearer not-needed"]


def test_openai_tool_call_round_trip(server: OpenAIServer) -> None:
    model = resolve_model("openai:test-model", models(openai_base_url=server.base_url, openai_api_key=SECRET_KEY))
    question = HumanMessage('use tool file_manager {"action": "list", "path": "docs"}')

    async def body(m: BaseChatModel) -> tuple[AIMessageChunk, AIMessage]:
        bound = m.bind_tools([FILE_MANAGER])
        call = merged(await stream(bound, [question]))
        tool_id = call.tool_calls[0]["id"] or ""
        answer = await bound.ainvoke([question, call, ToolMessage("2 files: a.md, b.md", tool_call_id=tool_id)])
        return call, answer

    call, answer = using(model, body)
    assert [(c["name"], c["args"], c["id"]) for c in call.tool_calls] == [
        ("file_manager", {"action": "list", "path": "docs"}, "call_test_0")
    ]
    assert answer.content == "tool said: 2 files: a.md, b.md"
    first, second = server.requests
    assert [t["function"]["name"] for t in first["tools"]] == ["file_manager"]
    assert first["tools"][0]["function"]["parameters"]["required"] == ["action"]
    assistant, tool = second["messages"][-2:]
    assert assistant["role"] == "assistant" and assistant["tool_calls"][0]["id"] == "call_test_0"
    assert json.loads(assistant["tool_calls"][0]["function"]["arguments"]) == {"action": "list", "path": "docs"}
    assert tool == {"role": "tool", "tool_call_id": "call_test_0", "content": "2 files: a.md, b.md"}
    assert server.authorizations == [f"Bearer {SECRET_KEY}"] * 2


def test_openai_non_streaming_request(server: OpenAIServer) -> None:
    model = resolve_model("openai:test-model", models(openai_base_url=server.base_url))
    reply = using(model, lambda m: m.ainvoke("just once", stream=False))
    assert reply.content == "echo: just once"
    assert not server.requests[0].get("stream")


def test_with_retries_retries_a_503_then_succeeds(server: OpenAIServer) -> None:
    model = resolve_model("openai:test-model", models(openai_base_url=server.base_url))
    server.fail_next(503, times=2)
    retries: list[tuple[int, bool, float]] = []

    async def body(m: BaseChatModel) -> AIMessage:
        return await with_retries(
            lambda: m.ainvoke("again"),
            attempts=3,
            base_delay_s=0.01,
            on_retry=lambda n, exc, delay: retries.append((n, is_transient(exc), delay)),
        )

    reply = using(model, body)
    assert reply.content == "echo: again"
    assert len(server.requests) == 3
    assert [(n, transient) for n, transient, _ in retries] == [(1, True), (2, True)]
    assert 0.005 <= retries[0][2] <= 0.015 and 0.01 <= retries[1][2] <= 0.03


def test_with_retries_gives_up_after_its_attempts(server: OpenAIServer) -> None:
    model = resolve_model("openai:test-model", models(openai_base_url=server.base_url))
    server.fail_next(500, times=5, message="the GPUs are on fire")
    with pytest.raises(Exception) as caught:
        using(model, lambda m: with_retries(lambda: m.ainvoke("hi"), attempts=2, base_delay_s=0.01))
    assert len(server.requests) == 2
    assert (
        describe_error(caught.value, attempts=2) == "openai: server error (500) after 2 attempts: the GPUs are on fire"
    )


def test_with_retries_does_not_retry_a_401_and_never_shows_the_key(server: OpenAIServer) -> None:
    model = resolve_model("openai:test-model", models(openai_base_url=server.base_url, openai_api_key=SECRET_KEY))
    server.fail_next(401, times=3)
    with pytest.raises(Exception) as caught:
        using(model, lambda m: with_retries(lambda: m.ainvoke("hi"), attempts=4, base_delay_s=0.01))
    assert len(server.requests) == 1
    assert not is_transient(caught.value)
    assert SECRET_KEY in str(caught.value)  # the provider's own message names the key...
    message = describe_error(caught.value, attempts=4)
    assert message == "openai: authentication failed (401): check AGENTOS_MODELS__OPENAI_API_KEY"  # ...ours does not


def test_rate_limits_are_transient_and_keys_in_messages_are_redacted(server: OpenAIServer) -> None:
    model = resolve_model("openai:test-model", models(openai_base_url=server.base_url))
    server.fail_next(429, message=f"slow down, {SECRET_KEY}")
    with pytest.raises(Exception) as caught:
        using(model, lambda m: m.ainvoke("hi"))
    assert is_transient(caught.value)
    message = describe_error(caught.value)
    assert message.startswith("openai: rate limited (429): slow down")
    assert SECRET_KEY not in message and "sk-" not in message


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_provider_is_retried_then_described() -> None:
    model = resolve_model("openai:test-model", models(openai_base_url=f"http://127.0.0.1:{free_port()}/v1"))
    retries: list[int] = []
    with pytest.raises(Exception) as caught:
        using(
            model,
            lambda m: with_retries(
                lambda: m.ainvoke("hi"), attempts=3, base_delay_s=0.01, on_retry=lambda n, e, d: retries.append(n)
            ),
        )
    assert retries == [1, 2]
    assert describe_error(caught.value, attempts=3).startswith("openai: unreachable after 3 attempts: ")


def test_is_transient_classifies_plain_errors() -> None:
    assert is_transient(httpx.ConnectError("refused"))
    assert is_transient(ConnectionResetError())
    assert not is_transient(ValueError("bad"))
    assert not is_transient(OfflineModelError("boom"))
    assert describe_error(httpx.ReadTimeout("slow"), attempts=2) == "model provider: timed out after 2 attempts: slow"


def test_with_retries_raises_non_transient_errors_at_once() -> None:
    calls: list[int] = []

    async def broken() -> None:
        calls.append(1)
        raise ValueError("not a network problem")

    with pytest.raises(ValueError, match="not a network problem"):
        run(with_retries(broken, attempts=5, base_delay_s=0.01))
    assert calls == [1]


def test_a_streamed_answer_merged_once_equals_the_running_total():
    """`orchestrator.nodes.merged` (one merge of all chunks at the end) gives the message a
    running `total + chunk` gave: text, a tool call assembled from its argument pieces, usage."""
    from langchain_core.messages import AIMessageChunk
    from langchain_core.messages.tool import tool_call_chunk

    from orchestrator.nodes import merged

    chunks = [AIMessageChunk(content=f"word{i} ", id="lc_run-1") for i in range(30)]
    chunks += [
        AIMessageChunk(content="", tool_call_chunks=[tool_call_chunk(name="search", args='{"q": ', id="c1", index=0)]),
        AIMessageChunk(content="", tool_call_chunks=[tool_call_chunk(name=None, args='"x"}', id=None, index=0)]),
        AIMessageChunk(content="", usage_metadata={"input_tokens": 7, "output_tokens": 31, "total_tokens": 38},
                       chunk_position="last"),
    ]
    total = chunks[0]
    for chunk in chunks[1:]:
        total = total + chunk
    one = merged(chunks)
    assert one == total
    assert one.content == "".join(f"word{i} " for i in range(30))
    assert one.tool_calls == [{"name": "search", "args": {"q": "x"}, "id": "c1", "type": "tool_call"}]
    assert one.usage_metadata == {"input_tokens": 7, "output_tokens": 31, "total_tokens": 38}
    assert merged(chunks[:1]) is chunks[0] and merged([]) is None
