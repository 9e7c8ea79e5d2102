"""The built-in offline model (`offline:<name>`): deterministic, no network, no API key.

It follows a small script written in the latest user message (or the message a parent agent
delegated). Each line of that message may be a directive:

- `call: <skill> <json args>` calls a tool, e.g. `call: file_manager {"action": "list"}`.
- `delegate: <agent> <message>` hands `<message>` to the sub-agent `<agent>` (its first word); a
  literal `\\n` in it starts a new line, so a sub-agent can get a script of several directives.
- `wait: <seconds>` pauses before the next directive (or before the final answer).
- `fail: <message>` makes the model call fail with `OfflineModelError(<message>)`.

In plan mode (a system message starting with `PLAN_MARK`) it answers with a numbered plan of
the directives it would follow, noting any feedback the system message carries.

A message that starts with "remember" (e.g. `Remember that I prefer green tea`), to an agent with
the `remember` skill, saves the rest as a memory (a preference if it says prefer/like/love/hate/
favourite, else a fact). Memories the run recalled (a system message section headed
`MEMORY_HEADING`) are quoted at the start of the canned reply ("From memory: ...").

Other lines are ordinary text. Directives run one per model call, in order: a call emits the
first directive not yet answered, and once all have run the model answers `Done.` with a
summary of the tool results it saw. A message without directives gets a short canned reply
explaining how to configure a real model. `offline:echo` simply echoes the message back.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.language_models.chat_models import generate_from_stream
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.messages.ai import UsageMetadata
from langchain_core.messages.tool import tool_call_chunk
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.tools import BaseTool
from langchain_core.utils.function_calling import convert_to_openai_tool

from core.skill_names import DELEGATE_TOOL

_DIRECTIVE = re.compile(r"^(call|delegate|wait|fail)\s*:\s*(.*)$", re.IGNORECASE)
_REMEMBER = re.compile(r"^\s*(?:please\s+)?remember(?:\s+that)?[\s:,]+(.+)$", re.IGNORECASE | re.DOTALL)
_PREFERENCE = re.compile(r"\b(prefer|prefers|like|likes|love|loves|hate|hates|favou?rite)\b", re.IGNORECASE)
_WORD = re.compile(r"\s*\S+\s*")
_RESULT_CHARS = 200


class OfflineModelError(Exception):
    """Raised by the offline model for a `fail:` directive."""


@dataclass(frozen=True)
class _Call:
    name: str
    args: dict[str, Any]


@dataclass(frozen=True)
class _Reply:
    """What one offline model call does: wait, then answer with text, a tool call, or a failure."""

    waits: tuple[float, ...] = ()
    text: str = ""
    call: _Call | None = None
    call_id: str = ""
    failure: str | None = None


@dataclass
class _Step:
    waits: list[float] = field(default_factory=list)
    action: _Call | str | None = None  # a tool call, or the text of a bad directive
    failure: str | None = None


def _text(message: BaseMessage) -> str:
    return str(message.text)


def _parse(text: str) -> list[_Step]:
    """Group the directives of `text` into steps; a trailing step may hold only waits."""
    steps = [_Step()]
    for raw in text.splitlines():
        match = _DIRECTIVE.match(raw.strip())
        if not match:
            continue
        kind, rest = match.group(1).lower(), match.group(2).strip()
        step = steps[-1]
        if kind == "wait":
            try:
                seconds = float(rest)
            except ValueError:
                seconds = -1.0
            if seconds >= 0:
                step.waits.append(seconds)
                continue
            step.action = f"`wait: {rest}` needs a number of seconds, e.g. `wait: 2`"
        elif kind == "fail":
            step.failure = rest or "offline model failure"
        elif kind == "call":
            step.action = _parse_call(rest)
        else:
            agent, _, message = rest.partition(" ")
            if agent and message.strip():
                task = message.strip().replace("\\n", "\n")
                step.action = _Call(DELEGATE_TOOL, {"agent": agent, "message": task})
            else:
                step.action = f"`delegate: {rest}` needs an agent name and a message"
        steps.append(_Step())
    return steps


def _parse_call(rest: str) -> _Call | str:
    name, _, raw_args = rest.partition(" ")
    if not name:
        return "`call:` needs a skill name, e.g. `call: file_manager {}`"
    try:
        args = json.loads(raw_args) if raw_args.strip() else {}
    except json.JSONDecodeError as exc:
        return f"the arguments of `call: {rest}` are not valid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(args, dict):
        return f"the arguments of `call: {rest}` must be a JSON object"
    return _Call(name, args)


def _clip(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= _RESULT_CHARS else flat[: _RESULT_CHARS - 1] + "…"


def _summary(history: Sequence[BaseMessage]) -> str:
    """`Done.` followed by each tool result seen since the latest user message."""
    calls: dict[str, tuple[str, dict[str, Any]]] = {}
    parts = ["Done."]
    for message in history:
        if isinstance(message, AIMessage):
            calls.update({str(tc["id"]): (tc["name"], tc["args"]) for tc in message.tool_calls})
        elif isinstance(message, ToolMessage):
            name, args = calls.get(message.tool_call_id, (message.name or "tool", {}))
            result = _clip(_text(message) or str(message.content))
            if message.status == "error":
                parts.append(f"{name} failed: {result}")
            elif name == DELEGATE_TOOL:
                parts.append(f"{args.get('agent', 'the sub-agent')} said: {result}")
            else:
                parts.append(f"{name} returned {result}")
    return " ".join(p if p.endswith((".", "…")) else p + "." for p in parts)


def _canned(user_text: str, tools: Sequence[str]) -> str:
    quote = _clip(user_text)[:80] or "(nothing)"
    available = f" Tools I can call here: {', '.join(tools)}." if tools else ""
    return (
        f'Hello! I am the AgentOS offline model: deterministic, no network. You said: "{quote}". '
        "To use a real model, set the agent's `model` to e.g. `openai:gpt-4o-mini` with "
        "AGENTOS_MODELS__OPENAI_API_KEY, or `anthropic:claude-sonnet-4-5` with AGENTOS_MODELS__ANTHROPIC_API_KEY; "
        "any OpenAI-compatible server works via AGENTOS_MODELS__OPENAI_BASE_URL. "
        "Script lines I follow: `call: <skill> <json args>`, `delegate: <agent> <message>`, "
        f"`wait: <seconds>`, `fail: <message>`.{available}"
    )


PLAN_MARK = "[plan mode]"
# Headings of the memory sections of the system prompt (orchestrator.memory_context writes them).
MEMORY_HEADING = "Things you remember"
SUMMARY_HEADING = "Summary of the earlier conversation"


def _remembered(messages: Sequence[BaseMessage]) -> list[str]:
    """The recalled items listed in the system prompt's memory section."""
    found: list[str] = []
    for message in messages:
        if not isinstance(message, SystemMessage) or MEMORY_HEADING not in _text(message):
            continue
        section = _text(message).split(MEMORY_HEADING, 1)[1].split("\n\n", 1)[0]
        for line in section.splitlines()[1:]:
            if line.startswith("- "):
                found.append(re.sub(r"^- \([^)]*\)\s*", "", line).strip())
    return found


def _remember_call(user_text: str, tools: Sequence[str]) -> _Call | None:
    match = _REMEMBER.match(user_text)
    if match is None or "remember" not in tools:
        return None
    content = " ".join(match.group(1).split()).rstrip(".!")
    kind = "preference" if _PREFERENCE.search(content) else "fact"
    return _Call("remember", {"content": content, "kind": kind})


def _a_plan(user_text: str, request: str) -> str:
    """The numbered plan for a plan-mode request: one line per directive."""
    lines = []
    for step in _parse(user_text):
        if isinstance(step.action, _Call):
            if step.action.name == DELEGATE_TOOL:
                lines.append(f"ask {step.action.args.get('agent')}: {step.action.args.get('message')}")
            else:
                lines.append(f"call {step.action.name} with {json.dumps(step.action.args)}")
    numbered = [f"{i}. {line}" for i, line in enumerate(lines or ["answer directly"], start=1)]
    feedback = request.partition("Feedback on the last plan:")[2].strip()
    head = f"Plan (revised after: {feedback}):" if feedback else "Plan:"
    return "\n".join([head, *numbered])


def _plan_reply(messages: Sequence[BaseMessage], tools: Sequence[str] = (), *, echo: bool = False) -> _Reply:
    """Decide, without side effects, what the offline model answers to `messages`."""
    latest = max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=-1)
    user_text = _text(messages[latest]) if latest >= 0 else ""
    if echo:
        return _Reply(text=user_text)
    plan_request = next((_text(m) for m in messages if isinstance(m, SystemMessage)
                         and _text(m).startswith(PLAN_MARK)), None)
    if plan_request is not None:
        return _Reply(text=_a_plan(user_text, plan_request))
    history = messages[latest + 1 :]
    steps = _parse(user_text)
    if len(steps) == 1 and not steps[0].waits:
        implicit = _remember_call(user_text, tools)
        if implicit is None:
            memories = _remembered(messages)
            recalled = f"From memory: {'; '.join(memories)}. " if memories else ""
            return _Reply(text=recalled + _canned(user_text, tools))
        steps = [_Step(action=implicit), _Step()]
    done = sum(1 for m in history if isinstance(m, AIMessage) and m.tool_calls)
    actions = [s for s in steps if s.action is not None or s.failure is not None]
    if done >= len(actions):
        return _Reply(waits=tuple(steps[-1].waits), text=_summary(history))
    step = actions[done]
    waits = tuple(step.waits)
    if step.failure is not None:
        return _Reply(waits=waits, failure=step.failure)
    if isinstance(step.action, str):
        return _Reply(waits=waits, text=f"I could not follow the script: {step.action}.")
    assert step.action is not None
    seed = f"{latest}:{done}:{step.action.name}:{json.dumps(step.action.args, sort_keys=True)}"
    digest = hashlib.sha256(seed.encode()).hexdigest()
    return _Reply(waits=waits, call=step.action, call_id=f"call_{done}_{digest[:8]}")


def _chunks(reply: _Reply, model_name: str, input_words: int) -> Iterator[ChatGenerationChunk]:
    """One chunk per word (with its following whitespace), a tool call chunk, then usage."""
    produced = 0
    for word in _WORD.findall(reply.text):
        produced += 1
        yield ChatGenerationChunk(message=AIMessageChunk(content=word))
    if reply.call is not None:
        args = json.dumps(reply.call.args)
        produced += 1 + len(args.split())
        chunk = tool_call_chunk(name=reply.call.name, args=args, id=reply.call_id, index=0)
        yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[chunk]))
    usage = UsageMetadata(input_tokens=input_words, output_tokens=produced, total_tokens=input_words + produced)
    finish = "tool_calls" if reply.call is not None else "stop"
    last = AIMessageChunk(
        content="",
        usage_metadata=usage,
        chunk_position="last",
        response_metadata={"finish_reason": finish, "model_name": model_name},
    )
    yield ChatGenerationChunk(message=last)


class OfflineChatModel(BaseChatModel):
    """A deterministic chat model that follows the script described in this module."""

    model_name: str = "default"

    @property
    def _llm_type(self) -> str:
        return "agentos-offline"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name}

    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | BaseTool],
        *,
        tool_choice: str | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (OpenAI function dicts, or anything `convert_to_openai_tool` accepts)."""
        return self.bind(tools=[convert_to_openai_tool(t) for t in tools], **kwargs)

    def _plan(self, messages: list[BaseMessage], kwargs: dict[str, Any]) -> tuple[_Reply, int]:
        names = [str(t.get("function", {}).get("name", "")) for t in kwargs.get("tools") or []]
        reply = _plan_reply(messages, [n for n in names if n], echo=self.model_name == "echo")
        return reply, sum(len(_text(m).split()) for m in messages)

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        reply, input_words = self._plan(messages, kwargs)
        for seconds in reply.waits:
            time.sleep(seconds)
        if reply.failure is not None:
            raise OfflineModelError(reply.failure)
        yield from _chunks(reply, f"offline:{self.model_name}", input_words)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        reply, input_words = self._plan(messages, kwargs)
        for seconds in reply.waits:
            await asyncio.sleep(seconds)
        if reply.failure is not None:
            raise OfflineModelError(reply.failure)
        for chunk in _chunks(reply, f"offline:{self.model_name}", input_words):
            yield chunk
            await asyncio.sleep(0)

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return generate_from_stream(self._stream(messages, stop, **kwargs))

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chunks = [chunk async for chunk in self._astream(messages, stop, **kwargs)]
        return generate_from_stream(iter(chunks))
