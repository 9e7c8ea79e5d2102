"""The four nodes: THINK calls the model, ACT runs skills, DELEGATE runs sub-agents, RESPOND
hands back the answer. Each node announces itself with `step.started`."""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    AnyMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.messages.ai import UsageMetadata, add_ai_message_chunks
from langgraph.graph.state import CompiledStateGraph
from langgraph.runtime import Runtime, get_runtime

from core import events
from core.ids import new_id
from core.skill_names import DELEGATE_TOOL
from core.storable import refusal, storable, storable_text
from core.store import tool_calls
from core.store.tool_calls import ToolCallRow, ToolCallStatus
from core.telemetry import genai, names, tracing
from core.tenancy import tenant_tx
from memory.short_term import CHARS_PER_TOKEN, Turn, clip, extractive_summary
from orchestrator.approvals import ApprovalNeeded, needs_approval, wait_for_human
from orchestrator.context import RunContext
from orchestrator.memory_context import MemoryContext, memory_context
from orchestrator.models import PLAN_MARK, is_transient, with_retries
from orchestrator.run_models import model_for, readable
from orchestrator.runner_wait import sent_before, until_runner_connected, while_runner_connected
from orchestrator.state import AgentState
from skills import Skill, SkillContext, SkillError
from skills.remote import RunnerWentOffline

log = logging.getLogger("agentos.orchestrator")

# The compiled graph sub-agents run on, made (once) by `orchestrator.graph.subagent_graph`.
SubagentGraph = Callable[[], CompiledStateGraph[AgentState, RunContext, AgentState, AgentState]]

NOT_RUN = "Not run: the run that proposed this call ended before it completed."
MAX_RESULT_CHARS = 20_000


class ModelCallFailed(Exception):
    """The model provider failed (after retries); ends the run with a readable message, unless
    the agent has a fallback model and the failure is one another model may not have
    (`may_fall_back`: an outage or a rate limit, before any of the answer was streamed)."""

    def __init__(self, cause: BaseException, *, may_fall_back: bool = False) -> None:
        super().__init__(str(cause))
        self.cause = cause
        self.may_fall_back = may_fall_back


N = TypeVar("N", bound=Callable[..., Awaitable[dict[str, Any]]])


def _traced(node: str) -> Callable[[N], N]:
    """A node as a span (`agentos.step <node>`) when tracing is on. `functools.wraps` keeps the
    signature LangGraph reads to pass the runtime."""

    def wrap(fn: N) -> N:
        @functools.wraps(fn)
        async def run(state: AgentState, runtime: Runtime[RunContext], *args: Any) -> dict[str, Any]:
            if not tracing.ON:
                return await fn(state, runtime, *args)
            ctx = runtime.context
            attributes = {names.NODE: node}
            if ctx is not None:
                attributes[names.AGENT_ID] = ctx.agent.id
            with tracing.span(names.step(node), attributes):
                return await fn(state, runtime, *args)

        return run  # type: ignore[return-value]

    return wrap


async def _agent_skills(ctx: RunContext) -> dict[str, Skill]:
    """The agent's skills for this run, those it routes to a runner executed there."""
    return await ctx.skills.for_agent(ctx.agent.config.skills, ctx.agent.config.runner_route())


async def _step(ctx: RunContext, node: str) -> None:
    if node != "respond":  # the answer is already made: a budget reached now does not discard it
        ctx.check_budget()
    await ctx.emitter.emit(events.STEP_STARTED, {"node": node, "agent_id": ctx.agent.id})


def _delegate_tool(ctx: RunContext, names: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": DELEGATE_TOOL,
            "description": "Hand a task to one of your sub-agents and get its answer back.",
            "parameters": {
                "type": "object",
                "properties": {
                    "agent": {"type": "string", "enum": names, "description": "Which sub-agent."},
                    "message": {"type": "string", "description": "The task, written for that agent."},
                },
                "required": ["agent", "message"],
                "additionalProperties": False,
            },
        },
    }


async def _subagents(ctx: RunContext) -> dict[str, str]:
    """Sub-agent name -> id, for the agent of this context."""
    found: dict[str, str] = {}
    for agent_id in ctx.agent.config.subagents:
        spec = await ctx.load_agent(agent_id)
        if spec is not None:
            found[spec.name] = spec.id
    return found


def _conversation(messages: list[AnyMessage]) -> list[BaseMessage]:
    """The messages as a model accepts them: a tool call left unanswered by an earlier, ended
    run gets a note in place of its result."""
    answered = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
    out: list[BaseMessage] = []
    for message in messages:
        out.append(message)
        if isinstance(message, AIMessage):
            for call in message.tool_calls:
                if call["id"] not in answered:
                    out.append(ToolMessage(content=NOT_RUN, tool_call_id=call["id"] or "", name=call["name"]))
    return out


async def _model(ctx: RunContext) -> Any:
    return await model_for(ctx, ctx.agent.config.model)


def _add_usage(ctx: RunContext, usage: UsageMetadata | None) -> None:
    """Charge a call's tokens to the run's `limits.max_tokens` (the meter records them)."""
    if not usage:
        return
    counts: dict[str, Any] = dict(usage)
    ctx.budget.add_tokens(int(counts.get("total_tokens") or 0))


def _run_start(ctx: RunContext, messages: Sequence[AnyMessage]) -> int:
    """Where the current run begins in the session's thread: its input message."""
    marker = f"input-{ctx.run_id}"
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].id == marker:
            return index
    return max((i for i, m in enumerate(messages) if isinstance(m, HumanMessage)), default=0)


SUMMARY_PROMPT = (
    "You keep the running summary of a conversation between a user and an AI agent, for the agent's own "
    "later use. Merge the summary so far with the new turns into one updated summary of at most {words} "
    "words: keep facts, decisions, the user's preferences and open tasks; drop pleasantries. Answer with "
    "the summary only."
)


async def _summarise(ctx: RunContext, previous: str, turns: Sequence[Turn], max_tokens: int, key: str) -> str:
    """The running summary with `turns` folded in: by the agent's model, or deterministically for the
    offline model and whenever the model fails (a summary must never fail the run)."""
    if ctx.agent.config.model.startswith("offline:"):
        return extractive_summary(previous, turns, max_tokens)
    model = await _model(ctx)
    text = "\n".join(f"{turn.role}: {clip(turn.content, 2000)}" for turn in turns)
    prompt = [SystemMessage(SUMMARY_PROMPT.format(words=max(max_tokens * 3 // 4, 20))),
              HumanMessage(f"Summary so far:\n{previous or '(none)'}\n\nNew turns:\n{text}")]

    async def call() -> Any:
        return await model.ainvoke(prompt)

    try:
        with genai.model_call(ctx.agent.config.model, ctx.agent.id) as traced:
            reply = await with_retries(call, attempts=ctx.models.max_retries + 1,
                                       base_delay_s=ctx.models.retry_base_delay_s,
                                       max_delay_s=ctx.models.max_retry_after_s)
            traced.usage(getattr(reply, "usage_metadata", None))
    except Exception as exc:
        log.warning("summary by %s failed in run %s (%s); using the extractive one", ctx.agent.config.model,
                    ctx.run_id, type(exc).__name__)
        return extractive_summary(previous, turns, max_tokens)
    await ctx.meter_model_call(key, getattr(reply, "usage_metadata", None))
    _add_usage(ctx, getattr(reply, "usage_metadata", None))
    return clip(str(reply.text), max_tokens * CHARS_PER_TOKEN) or extractive_summary(previous, turns, max_tokens)


@_traced("think")
async def think(state: AgentState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    ctx = runtime.context
    assert ctx is not None
    ctx.budget.take_step()
    await _step(ctx, "think")
    tools = [s.tool_spec() for s in (await _agent_skills(ctx)).values()]
    subagents = await _subagents(ctx)
    if subagents and ctx.depth < ctx.max_depth:
        tools.append(_delegate_tool(ctx, sorted(subagents)))
    messages: list[AnyMessage] = list(state["messages"])
    # This step's place in the run: each THINK sees more messages than the one before, and the
    # same number when it runs again from its checkpoint (core.metering).
    key = f"think:{len(messages)}"
    memory = MemoryContext()
    if ctx.depth == 0 and ctx.memory is not None:  # earlier runs come from memory, within budget
        start = _run_start(ctx, messages)
        query = str(messages[start].text) if start < len(messages) else ""
        memory = await memory_context(
            ctx, query, lambda prev, turns, limit: _summarise(ctx, prev, turns, limit, f"{key}:summary"))
        messages = messages[start:]
        ctx.check_budget()  # the summary may have used the rest of it
    prompt: list[BaseMessage] = []
    system = "\n\n".join(part for part in (ctx.agent.config.instructions, memory.system) if part)
    if system:
        prompt.append(SystemMessage(system))
    if ctx.depth == 0 and state.get("plan"):
        prompt.append(SystemMessage(f"Carry out this approved plan:\n{state['plan']}"))
    prompt.extend(memory.earlier)
    prompt.extend(_conversation(messages))
    specs = [ctx.agent.config.model, *ctx.agent.config.fallback_models]
    for index, spec in enumerate(specs):
        try:
            chunk = await _think_with(ctx, spec, tools, prompt)
            break
        except ModelCallFailed as failed:
            if not failed.may_fall_back or index + 1 == len(specs):
                raise
            log.warning("run %s: %s failed (%s); falling back to %s", ctx.run_id, spec,
                        type(failed.cause).__name__, specs[index + 1])
    await ctx.meter_model_call(key, chunk.usage_metadata, spec)
    _add_usage(ctx, chunk.usage_metadata)
    # The answer is stored as a message: characters Postgres cannot hold are replaced here, once.
    message = AIMessage(
        content=storable(chunk.content), tool_calls=chunk.tool_calls, usage_metadata=chunk.usage_metadata,
        response_metadata=chunk.response_metadata, id=chunk.id,
    )
    return {"messages": [message]}


async def _think_with(ctx: RunContext, spec: str, tools: list[Any], prompt: list[BaseMessage]) -> AIMessageChunk:
    """One THINK call on `spec`, streamed, with retries (ModelCallFailed when they are used up)."""
    model = await model_for(ctx, spec)
    bound = model.bind_tools(tools) if tools else model
    attempts = ctx.models.max_retries + 1

    async def call() -> AIMessageChunk:
        streamed = False
        chunks: list[AIMessageChunk] = []
        try:
            async for chunk in bound.astream(prompt):
                text = chunk.text if isinstance(chunk.text, str) else ""
                if text:
                    streamed = True
                    await ctx.emitter.delta(text, ctx.agent.id)
                chunks.append(chunk)
        except Exception as exc:
            if streamed:  # do not retry and stream the start of the answer twice
                raise _failed(ctx, spec, exc, 1, may_fall_back=False) from None
            raise
        return merged(chunks) or AIMessageChunk(content="")

    with genai.model_call(spec, ctx.agent.id) as traced:
        try:
            chunk = await with_retries(call, attempts=attempts, base_delay_s=ctx.models.retry_base_delay_s,
                                       max_delay_s=ctx.models.max_retry_after_s)
        except ModelCallFailed:
            raise
        except Exception as exc:
            # Raised inside the span: what it records is the worded error (an org provider's
            # answer may quote its key), never the provider's own message.
            raise _failed(ctx, spec, exc, attempts, may_fall_back=is_transient(exc)) from None
        traced.usage(chunk.usage_metadata)
        if tracing.CAPTURE_CONTENT:
            traced.output(chunk.text if isinstance(chunk.text, str) else "")
    return chunk


def merged(chunks: list[AIMessageChunk]) -> AIMessageChunk | None:
    """A streamed answer's chunks as one message (None for none), merged once at the end. The
    same merge as adding each chunk to a running total (`+` calls it pairwise), without
    building and validating a whole new message per chunk: for a 50-chunk answer 0.05 ms
    instead of 0.55 (docs/benchmarks.md, issue 18)."""
    if not chunks:
        return None
    return chunks[0] if len(chunks) == 1 else add_ai_message_chunks(chunks[0], *chunks[1:])


def _failed(ctx: RunContext, spec: str, exc: BaseException, attempts: int, *, may_fall_back: bool) -> ModelCallFailed:
    """ModelCallFailed for `exc`; chained to it only for a built-in provider (whose errors the
    provider SDKs already redact), never for an org's provider."""
    cause = readable(ctx, spec, exc, attempts)
    failed = ModelCallFailed(cause, may_fall_back=may_fall_back)
    if cause is exc:
        failed.__cause__ = exc
    return failed


def _pending_calls(messages: list[AnyMessage]) -> list[dict[str, Any]]:
    """Tool calls of the latest AI message that have no result yet."""
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, AIMessage):
            done = {m.tool_call_id for m in messages[index + 1:] if isinstance(m, ToolMessage)}
            return [dict(c) for c in message.tool_calls if c["id"] not in done]
    return []


# The routers are coroutines: LangGraph runs a plain function given as a conditional edge in a
# thread of the loop's executor (a hand-over and back per step), a coroutine on the loop itself.
async def route_after_think(state: AgentState) -> str:
    calls = _pending_calls(state["messages"])
    if not calls:
        return "respond"
    return "act" if any(c["name"] != DELEGATE_TOOL for c in calls) else "delegate"


async def route_after_act(state: AgentState) -> str:
    return "delegate" if any(c["name"] == DELEGATE_TOOL for c in _pending_calls(state["messages"])) else "think"


def _result_text(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= MAX_RESULT_CHARS else text[:MAX_RESULT_CHARS] + " …(truncated)"


async def _run_skill(ctx: RunContext, call: dict[str, Any], tool_call_id: str) -> tuple[Any, str | None]:
    """(output, error) of one skill call; a missing or failing skill is an error the model reads."""
    name, args = call["name"], call.get("args") or {}
    available = await _agent_skills(ctx)
    skill = available.get(name)
    if skill is None:
        return None, f"Unknown tool {name!r}; available: {', '.join(available) or 'none'}."
    skill_ctx = SkillContext(
        org_id=ctx.org_id, session_id=ctx.session_id, run_id=ctx.run_id, agent_id=ctx.agent.id,
        tool_call_id=tool_call_id, workspace=ctx.workspace, user_id=ctx.user_id, memory=ctx.memory,
        knowledge=ctx.agent.config.memory.knowledge, hybrid=ctx.agent.config.memory.hybrid, sandbox=ctx.sandbox,
        infra=ctx.infra, meter=ctx.meter,
    )
    with genai.skill_call(name, tool_call_id, ctx.agent.id, args) as traced:
        try:
            async with asyncio.timeout(max(ctx.budget.remaining_s(), 0.001)):
                return await skill.invoke(skill_ctx, args), None
        except SkillError as exc:
            traced.failed("skill_error")
            return None, str(exc)
        except (TimeoutError, RunnerWentOffline):  # the run's deadline; the run waiting for its runner
            raise
        except Exception as exc:
            log.exception("skill %s failed in run %s", name, ctx.run_id)
            traced.failed(type(exc).__name__)
            return None, f"The tool {name} failed unexpectedly ({type(exc).__name__})."


@_traced("act")
async def act(state: AgentState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    ctx = runtime.context
    assert ctx is not None
    await _step(ctx, "act")
    results: list[AnyMessage] = []
    for call in _pending_calls(state["messages"]):
        if call["name"] != DELEGATE_TOOL:
            results.append(await _act_on(ctx, call))
    return {"messages": results}


async def _act_on(ctx: RunContext, call: dict[str, Any]) -> ToolMessage:
    """One skill call, keyed by its place in the run: a replayed step finds the stored call and
    its outcome instead of repeating it; a call that needs a human waits here."""
    key = ctx.call_key(call["id"])
    name, args = call["name"], call.get("args") or {}
    refused = refusal(name, args)
    if refused is not None:
        return await _refuse(ctx, call, key, refused)
    skill = (await _agent_skills(ctx)).get(name)
    async with tenant_tx(ctx.pool, ctx.org_id) as conn:
        row = await tool_calls.by_key(conn, ctx.run_id, key)
        fresh = row is None
        if row is None:
            wait = skill is not None and needs_approval(ctx.agent.config, skill, args)
            row = await tool_calls.start(
                conn, new_id("tool_call"), run_id=ctx.run_id, session_id=ctx.session_id, agent_id=ctx.agent.id,
                name=name, args=args, sensitive=skill is not None and skill.is_sensitive(args),
                status=ToolCallStatus.PENDING if wait else ToolCallStatus.RUNNING, call_key=key,
            )
            if wait:
                await ctx.emitter.emit(events.CONFIRMATION_REQUIRED, {
                    "tool_call_id": row["id"], "name": name, "args": args, "agent_id": ctx.agent.id})
        elif row["status"] == ToolCallStatus.APPROVED:
            row = await tool_calls.set_status(conn, row["id"], ToolCallStatus.RUNNING) or row
    tool_call_id = row["id"]
    row = await _decided(ctx, row)
    row = await until_runner_connected(ctx, name, row)  # a routed call whose runner is offline waits here
    if row["status"] == ToolCallStatus.REJECTED:
        reason = row["decision_reason"] or "no reason given"
        return ToolMessage(content=f"A human rejected this call ({reason}). Do not retry it; answer without it.",
                           tool_call_id=call["id"], name=name, status="error")
    if row["status"] in (ToolCallStatus.SUCCEEDED, ToolCallStatus.FAILED):  # done in an earlier attempt of this step
        return _tool_message(call, row["output"], (row["error"] or {}).get("message"))
    run_args = row["args"]  # what a human approved, if they edited the proposal
    called: dict[str, Any] = {"tool_call_id": tool_call_id, "name": name, "args": run_args, "agent_id": ctx.agent.id}
    if skill is not None and skill.version is not None:  # an org's own skill: which version ran
        called["skill_version"] = skill.version
    if fresh or not await sent_before(ctx, name, tool_call_id):  # a replay after its runner went offline
        await ctx.emitter.emit(events.TOOL_CALL, called)
    output, error = await while_runner_connected(
        ctx, name, row, lambda: _run_skill(ctx, {**call, "args": run_args}, tool_call_id))
    output, error = storable(output), storable_text(error) if error is not None else None
    async with tenant_tx(ctx.pool, ctx.org_id) as conn:
        await tool_calls.finish(conn, tool_call_id, output=output, error=error)
    result = {"error": error} if error is not None else {"output": output}
    await ctx.emitter.emit(events.TOOL_RESULT, {"tool_call_id": tool_call_id, **result})
    return _tool_message(call, output, error)


async def _refuse(ctx: RunContext, call: dict[str, Any], key: str, error: str) -> ToolMessage:
    """A call whose name or arguments cannot be stored: recorded (with those characters
    replaced) as failed without running, and answered with an error the model reads."""
    name, args = storable_text(call["name"]), storable(call.get("args") or {})
    async with tenant_tx(ctx.pool, ctx.org_id) as conn:
        row = await tool_calls.by_key(conn, ctx.run_id, key)
        fresh = row is None
        if row is None:
            row = await tool_calls.start(
                conn, new_id("tool_call"), run_id=ctx.run_id, session_id=ctx.session_id, agent_id=ctx.agent.id,
                name=name, args=args, sensitive=False, call_key=key,
            )
            row = await tool_calls.finish(conn, row["id"], error=error) or row
    if fresh:
        await ctx.emitter.emit(events.TOOL_CALL, {"tool_call_id": row["id"], "name": name, "args": args,
                                                  "agent_id": ctx.agent.id})
        await ctx.emitter.emit(events.TOOL_RESULT, {"tool_call_id": row["id"], "error": error})
    return _tool_message(call, None, error)


async def _decided(ctx: RunContext, row: ToolCallRow) -> ToolCallRow:
    """The call once a human has decided it. While it is pending the run pauses here.

    After a resume LangGraph re-runs the whole step, and the first `interrupt()` of that re-run
    returns instead of pausing; so the row is read again, and a call still pending (another
    one than the human decided) pauses at the next `interrupt()`.
    """
    while row["status"] == ToolCallStatus.PENDING:
        await ctx.emitter.flush()
        wait_for_human({"tool_call_id": row["id"], "name": row["name"]}, ctx.depth)
        async with tenant_tx(ctx.pool, ctx.org_id) as conn:
            row = await tool_calls.get(conn, row["id"]) or row
            if row["status"] == ToolCallStatus.APPROVED:
                row = await tool_calls.set_status(conn, row["id"], ToolCallStatus.RUNNING) or row
    return row


def _tool_message(call: dict[str, Any], output: Any, error: str | None) -> ToolMessage:
    content = f"Error: {error}" if error is not None else _result_text(output)
    return ToolMessage(content=content, tool_call_id=call["id"], name=call["name"],
                       status="error" if error is not None else "success")


@_traced("delegate")
async def delegate(state: AgentState, runtime: Runtime[RunContext], subagent_graph: SubagentGraph) -> dict[str, Any]:
    """Runs each delegate call's sub-agent on `subagent_graph()`. The graph module binds that
    argument when it adds this node (so this module needs no import of the graph module)."""
    ctx = runtime.context
    assert ctx is not None
    await _step(ctx, "delegate")
    subagents = await _subagents(ctx)
    results: list[AnyMessage] = []
    for call in _pending_calls(state["messages"]):
        if call["name"] != DELEGATE_TOOL:
            continue
        args = call.get("args") or {}
        refused = refusal(DELEGATE_TOOL, args)
        if refused is not None:
            results.append(ToolMessage(content=f"Error: {refused}", tool_call_id=call["id"], name=DELEGATE_TOOL,
                                       status="error"))
            continue
        name, task = str(args.get("agent", "")), str(args.get("message", ""))
        agent_id = subagents.get(name)
        spec = await ctx.load_agent(agent_id) if agent_id else None
        if spec is None or ctx.depth >= ctx.max_depth:
            reason = (f"no sub-agent named {name!r}; available: {', '.join(sorted(subagents)) or 'none'}"
                      if spec is None else f"delegation depth limit ({ctx.max_depth}) reached")
            results.append(ToolMessage(content=f"Error: {reason}.", tool_call_id=call["id"], name=DELEGATE_TOOL,
                                       status="error"))
            continue
        child = ctx.for_subagent(spec, call["id"])
        await ctx.emitter.emit(events.SUBAGENT_STARTED, {"agent_id": spec.id, "name": spec.name,
                                                         "parent_agent_id": ctx.agent.id})
        while True:
            try:
                final = await subagent_graph().ainvoke({"messages": [HumanMessage(task)]}, context=child)
                break
            except ApprovalNeeded as waiting:  # the sub-agent's call waits for a human: so does the run
                # Raises (the run pauses) unless this step was just resumed: then the sub-agent
                # runs again and finds the decision.
                wait_for_human(waiting.payload, ctx.depth)
        answer = final_text(final["messages"])
        await ctx.emitter.emit(events.SUBAGENT_COMPLETED, {"agent_id": spec.id, "name": spec.name})
        results.append(ToolMessage(content=answer, tool_call_id=call["id"], name=DELEGATE_TOOL))
    return {"messages": results}


def final_text(messages: list[AnyMessage]) -> str:
    for message in reversed(messages):
        if isinstance(message, AIMessage):
            return message.text if isinstance(message.text, str) else str(message.content)
    return ""


@_traced("respond")
async def respond(state: AgentState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    ctx = runtime.context
    assert ctx is not None
    await _step(ctx, "respond")
    messages = state["messages"]
    asked = next((m.id for m in reversed(messages) if isinstance(m, HumanMessage)), None)
    return {"answer": final_text(messages), "answered": asked or ""}


PLAN_PROMPT = (
    f"{PLAN_MARK} Before doing anything, write a short numbered plan of the steps you will take "
    "(tools you will call, sub-agents you will ask). Do not call any tool now; a human approves the plan first."
)


async def route_start(state: AgentState) -> str:
    """Plan mode: the run's agent plans first (sub-agents never do)."""
    ctx = get_runtime(RunContext).context
    return "plan" if ctx is not None and ctx.depth == 0 and ctx.agent.config.mode == "plan" else "think"


@_traced("plan")
async def plan(state: AgentState, runtime: Runtime[RunContext]) -> dict[str, Any]:
    """Plan mode: propose a plan and hold it for approval like a tool call; a rejection (with
    its reason) leads to a new plan; the approved plan (as approved, maybe edited) guides THINK."""
    ctx = runtime.context
    assert ctx is not None
    attempt, feedback = 0, ""
    while True:
        key = ctx.call_key(f"plan:{attempt}")
        async with tenant_tx(ctx.pool, ctx.org_id) as conn:
            row = await tool_calls.by_key(conn, ctx.run_id, key)
        if row is None:
            text = storable_text(await _propose_plan(ctx, state, feedback, f"plan:{attempt}"))
            async with tenant_tx(ctx.pool, ctx.org_id) as conn:
                row = await tool_calls.start(
                    conn, new_id("tool_call"), run_id=ctx.run_id, session_id=ctx.session_id, agent_id=ctx.agent.id,
                    name="plan", args={"plan": text}, sensitive=False, status=ToolCallStatus.PENDING, call_key=key,
                    kind="plan",
                )
            await ctx.emitter.emit(events.CONFIRMATION_REQUIRED, {
                "tool_call_id": row["id"], "name": "plan", "args": {"plan": text}, "agent_id": ctx.agent.id,
                "kind": "plan"})
        row = await _decided(ctx, row)
        if row["status"] == ToolCallStatus.REJECTED:
            attempt, feedback = attempt + 1, row["decision_reason"] or "no reason given"
            continue
        async with tenant_tx(ctx.pool, ctx.org_id) as conn:
            await tool_calls.finish(conn, row["id"], output={"approved": True})
        return {"plan": str(row["args"].get("plan", ""))}


async def _propose_plan(ctx: RunContext, state: AgentState, feedback: str, key: str) -> str:
    ctx.budget.take_step()
    await _step(ctx, "plan")
    request = PLAN_PROMPT + (f"\nFeedback on the last plan: {feedback}" if feedback else "")
    prompt: list[BaseMessage] = [SystemMessage(request)]
    if ctx.agent.config.instructions:
        prompt.insert(0, SystemMessage(ctx.agent.config.instructions))
    prompt.extend(_conversation(state["messages"]))
    text = ""
    chunks: list[AIMessageChunk] = []
    with genai.model_call(ctx.agent.config.model, ctx.agent.id) as traced:
        async for chunk in (await _model(ctx)).astream(prompt):
            piece = chunk.text if isinstance(chunk.text, str) else ""
            if piece:
                text += piece
                await ctx.emitter.delta(piece, ctx.agent.id)
            chunks.append(chunk)
        total = merged(chunks)
        usage = total.usage_metadata if total is not None else None
        traced.usage(usage)
    await ctx.meter_model_call(key, usage)
    _add_usage(ctx, usage)
    return text
