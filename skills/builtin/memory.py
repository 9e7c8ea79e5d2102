"""The `remember` and `recall` skills: an agent saves and searches long-term memory on purpose.

Both act for the run's org, agent, end user and session (from the `SkillContext`), never for
ids the model writes: a model cannot reach another user's or org's memory through them."""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

from pydantic import Field

from memory.service import MemoryInputError, MemoryService, Who
from skills.skill import SkillContext, SkillError, skill

RECALL_LIMIT = 20
log = logging.getLogger("agentos.skills")


def _unavailable(exc: Exception) -> SkillError:
    log.warning("memory unavailable: %s: %s", type(exc).__name__, exc)
    return SkillError(f"Memory is unavailable right now ({type(exc).__name__}); go on without it or try later.")


def _service(ctx: SkillContext) -> tuple[MemoryService, Who]:
    if ctx.memory is None:
        raise SkillError("Memory is not available to this run.")
    return ctx.memory, Who(org_id=ctx.org_id, agent_id=ctx.agent_id, user_id=ctx.user_id, session_id=ctx.session_id)


@skill(name="remember", description=(
    "Save something worth knowing later, as one short self-contained statement "
    "(e.g. 'The user prefers answers in French'). scope='user' (default) keeps it for this end user "
    "across sessions; 'agent' for every conversation of this agent; 'org' for the whole organisation; "
    "'session' for this conversation only. Saving the same statement again does not duplicate it."
))
async def remember(
    ctx: SkillContext,
    content: Annotated[str, Field(description="The statement to remember.", min_length=1, max_length=8000)],
    kind: Annotated[Literal["preference", "fact"], Field(description="A preference of the user, or a fact.")] = "fact",
    scope: Annotated[Literal["user", "agent", "org", "session"], Field(description="Who it is kept for.")] = "user",
) -> dict[str, Any]:
    memory, who = _service(ctx)
    try:
        row, created = await memory.remember(who, content, kind=kind, scope=scope, source=f"skill:{ctx.run_id}",
                                             metadata={"tool_call_id": ctx.tool_call_id})
    except MemoryInputError as exc:
        raise SkillError(f"Could not remember that: {exc}.") from None
    except Exception as exc:
        raise _unavailable(exc) from None
    return {"id": row["id"], "scope": row["scope"], "kind": row["kind"], "created": created}


@skill(name="recall", description=(
    "Search what you remember (this end user's, this agent's and the organisation's memories) for "
    "items related to `query`, most relevant first, each with a similarity score between -1 and 1."
))
async def recall(
    ctx: SkillContext,
    query: Annotated[str, Field(description="What to look for.", min_length=1, max_length=2000)],
    limit: Annotated[int, Field(description="How many items at most.", ge=1, le=RECALL_LIMIT)] = 5,
) -> dict[str, Any]:
    memory, who = _service(ctx)
    try:
        rows = await memory.recall(who, query, limit=limit, knowledge=ctx.knowledge, hybrid=ctx.hybrid)
    except Exception as exc:
        raise _unavailable(exc) from None
    return {"items": [{"content": r["content"], "kind": r["kind"], "scope": r["scope"],
                       "score": round(r["score"], 4)} for r in rows]}
