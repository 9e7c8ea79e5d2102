"""Memory in the model's context: what THINK gives the run's agent besides the current run.

At a run's first THINK (and once per run: the result is kept on the `RunContext`, the recall also
in the run's scratch state so a resumed run sees the same items):

- recall: the long-term items nearest to the run's input that this org, agent, end user and
  session may see (and knowledge-base chunks for agents with `memory.knowledge`), above
  `memory.recall_min_score`. If recall fails (say the embedding provider is down) the run goes on
  without it and a `run.warning` event says so.
- the session window: earlier finished runs, newest last, within the agent's
  `memory.short_term_tokens`; older runs are folded into a running summary (by the agent's
  model, or deterministically for the offline model), which is stored in long-term memory.

A `memory.recalled` event reports what was given: item ids, kinds and scores, whether there was a
summary, and the window's size in turns and estimated tokens.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from psycopg.rows import DictRow

from core import events
from memory.service import Cached, Who
from memory.short_term import Turn, Window, clip, split_for_summary
from orchestrator.context import RunContext
from orchestrator.models import MEMORY_HEADING, SUMMARY_HEADING

log = logging.getLogger("agentos.orchestrator")

Summariser = Callable[[str, Sequence[Turn], int], Awaitable[str]]
RECALL_SCRATCH = "recall"
ITEM_CHARS = 1200  # one recalled item in the prompt is clipped to this


@dataclass
class MemoryContext:
    system: str = ""  # appended to the system prompt
    earlier: list[BaseMessage] = field(default_factory=list)  # the session window as messages


def who(ctx: RunContext) -> Who:
    return Who(org_id=ctx.org_id, agent_id=ctx.agent.id, user_id=ctx.user_id, session_id=ctx.session_id)


async def memory_context(ctx: RunContext, query: str, summarise: Summariser) -> MemoryContext:
    """The run's memory context, made once per run."""
    cached = ctx.memory_cache.get("context")
    if isinstance(cached, MemoryContext):
        return cached
    if ctx.memory is None:
        return MemoryContext()
    items, recalled_now, window = await _read(ctx, query, summarise)
    sections: list[str] = []
    if items:
        lines = [f"{MEMORY_HEADING} (most relevant first; use them when they help):"]
        for item in items:
            label = item["kind"] if item["kind"] != "document" else f"document: {item.get('title') or 'untitled'}"
            lines.append(f"- ({label}) {clip(item['content'], ITEM_CHARS)}")
        sections.append("\n".join(lines))
    if window.summary:
        sections.append(f"{SUMMARY_HEADING}:\n{window.summary}")
    result = MemoryContext(system="\n\n".join(sections), earlier=earlier_messages(window.turns))
    ctx.memory_cache["context"] = result
    if recalled_now:
        await ctx.emitter.emit(events.MEMORY_RECALLED, {
            "agent_id": ctx.agent.id,
            "items": [{"id": i["id"], "kind": i["kind"], "scope": i["scope"], "score": i["score"]} for i in items],
            "summary": bool(window.summary), "turns": len(window.turns), "tokens": window.tokens,
        })
    return result


@dataclass
class _Fetched:
    """What `_read` reads before it decides anything: side-effect free, so it may start early."""

    query: str
    cached: Cached
    items: list[dict[str, Any]]
    recalled_now: bool
    keep: bool
    failed: Exception | None
    window_rows: list[list[DictRow]] | None


def prefetch(ctx: RunContext, query: str) -> None:
    """Start the first THINK's memory reads now, while the run's graph starts (its checkpoint
    read, its first steps): THINK then finds them done, or waits for the rest. Only reads: what
    the run emits or writes (a warning, the summary, the kept recall) still happens in THINK, in
    its order. `settle_memory` ends what THINK never took."""
    if ctx.memory is not None and ctx.depth == 0 and "context" not in ctx.memory_cache:
        ctx.memory_cache["fetching"] = asyncio.create_task(_fetch(ctx, query))


async def settle_memory(ctx: RunContext) -> None:
    """Let what THINK's memory left running end, before the run does: a prefetch THINK never took
    (a few reads: waited for rather than cancelled, which would cut a pooled connection off
    mid-batch; its outcome, an error included, is of no use), and the write THINK left behind
    (`_read`), so the run's ending, which deletes the run's scratch state, comes after it."""
    for name in ("fetching", "keeping"):
        task = ctx.memory_cache.pop(name, None)
        if isinstance(task, asyncio.Task):
            with suppress(Exception):
                await task


async def _fetch(ctx: RunContext, query: str) -> _Fetched:
    """Redis read in one pipeline (the run's kept recall, the cached window, the org's
    session-notes index), then Postgres in one batched transaction (the window's new runs, then
    the recall's search)."""
    memory = ctx.memory
    assert memory is not None
    config, settings = ctx.agent.config.memory, memory.settings.memory
    recall = bool(config.long_term or config.knowledge) and settings.recall_k > 0
    budget = config.short_term_tokens
    person = who(ctx)
    cached = await memory.cached(person, ctx.run_id, RECALL_SCRATCH, window=budget > 0,
                                 notes=recall and config.long_term)
    reads = memory.short_term.window_statements(ctx.session_id, cached.window) if budget > 0 else []
    items: list[dict[str, Any]] = []
    recalled_now, keep = True, False
    failed: Exception | None = None
    window_rows: list[list[DictRow]] | None = None
    if recall and isinstance(cached.scratch, list):
        items, recalled_now = cached.scratch, False
    elif recall:
        try:
            rows, window_rows = await memory.recall_after(
                person, query, reads, limit=settings.recall_k, min_score=settings.recall_min_score,
                long_term=config.long_term, knowledge=config.knowledge, hybrid=config.hybrid, notes=cached.notes)
        except Exception as exc:  # the window is then read by itself below
            failed = exc
        else:
            items = [{"id": r["id"], "kind": r["kind"], "scope": r["scope"], "score": round(r["score"], 4),
                      "content": r["content"], "title": (r.get("metadata") or {}).get("title")} for r in rows]
            keep = True
    if window_rows is None and budget > 0:
        # Raises as the window's own transaction did: a failed batch is the recall's to report
        # only if the window alone can be read (no warning for what was the window's trouble).
        window_rows = await memory.batch(ctx.org_id, reads)
    return _Fetched(query, cached, items, recalled_now, keep, failed, window_rows)


async def _read(ctx: RunContext, query: str, summarise: Summariser) -> tuple[list[dict[str, Any]], bool, Window]:
    """(recalled items, whether they were recalled now rather than by an earlier attempt of the
    run, the session window), in few round trips: `_fetch`'s (started early by `prefetch`, or
    now), then Redis written in one transaction behind the run's next steps (the recall kept for
    a later attempt, the window if it changed: `_keep_behind`)."""
    memory = ctx.memory
    assert memory is not None
    config = ctx.agent.config.memory
    budget = config.short_term_tokens
    person = who(ctx)
    fetching = ctx.memory_cache.pop("fetching", None)
    fetched = await fetching if isinstance(fetching, asyncio.Task) else None
    if fetched is None or fetched.query != query:
        fetched = await _fetch(ctx, query)
    cached, items, recalled_now, keep = fetched.cached, fetched.items, fetched.recalled_now, fetched.keep
    failed, window_rows = fetched.failed, fetched.window_rows
    if failed is not None:
        log.warning("recall failed in run %s: %s: %s", ctx.run_id, type(failed).__name__, failed)
        await ctx.emitter.emit(events.RUN_WARNING, {"code": "MEMORY_UNAVAILABLE", "message": (
            f"Long-term memory could not be searched ({type(failed).__name__}); the run goes on without it.")})
    if budget <= 0 or window_rows is None:
        _keep_behind(ctx, person, items if keep else None, None)
        return items, recalled_now, Window()
    window, changed = memory.short_term.window_from(cached.window, window_rows)
    folded, kept = split_for_summary(window, budget)
    if folded:
        # Kept before the summary's model call, as a later attempt would need it if this one stopped there.
        await memory.keep(person, ctx.run_id, RECALL_SCRATCH, items if keep else None, None)
        keep = False
        window.summary = await summarise(window.summary, folded, budget // 2)
        window.summary_upto = folded[-1].ended
        window.turns = kept
        changed = True
        try:
            await memory.store_summary(person, window)
        except Exception as exc:  # it stays in the Redis window; the next overflow stores it again
            log.warning("could not store the summary of session %s: %s: %s", ctx.session_id, type(exc).__name__, exc)
            await ctx.emitter.emit(events.RUN_WARNING, {"code": "MEMORY_UNAVAILABLE", "message": (
                f"The conversation summary could not be stored ({type(exc).__name__}); it is kept for now.")})
    _keep_behind(ctx, person, items if keep else None, window if changed else None)
    return items, recalled_now, window


def _keep_behind(ctx: RunContext, person: Who, recalled: list[dict[str, Any]] | None, window: Window | None) -> None:
    """Write what THINK keeps in Redis (`MemoryService.keep`: the recall for a later attempt, the
    window if it changed) behind: the model call does not wait for it (a Redis failure there only
    costs a recall or a rebuild later anyway), and `settle_memory` waits for it before the run
    ends."""
    memory = ctx.memory
    if memory is not None and (recalled is not None or window is not None):
        ctx.memory_cache["keeping"] = asyncio.create_task(
            memory.keep(person, ctx.run_id, RECALL_SCRATCH, recalled, window))


def earlier_messages(turns: Sequence[Turn]) -> list[BaseMessage]:
    """The window as plain chat messages: each run's user message, then its answer with the
    tool results it used folded in front (a model accepts them without the original tool calls)."""
    out: list[BaseMessage] = []
    tools: list[str] = []

    def answer(text: str) -> None:
        notes = "".join(f"[tool result] {t}\n" for t in tools)
        if notes or text:
            out.append(AIMessage(notes + text))
        tools.clear()

    run_id = None
    for turn in turns:
        if turn.run_id != run_id and tools:
            answer("")
        run_id = turn.run_id
        if turn.role == "user":
            out.append(HumanMessage(turn.content))
        elif turn.role == "tool":
            tools.append(turn.content)
        else:
            answer(turn.content)
    if tools:
        answer("")
    return out
