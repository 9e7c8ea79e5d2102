"""Tool calls: what runs called (or proposed to call), read-only until approvals arrive."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.endpoint import Call, Param, endpoint, resource, validation_failed
from api.run_streams import run_not_found
from api.schemas.base import page_of
from api.schemas.tool_calls import ToolCall
from core import events
from core.errors import ApiError
from core.pagination import page
from core.run_signals import publish, start_next
from core.store import audit, runs, tool_calls
from core.store.tool_calls import ToolCallStatus
from core.tenancy import tenant_tx


class Approval(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Edited arguments to run instead of the proposed ones (the approval binds to exactly these).
    args: dict[str, Any] | None = None


class Rejection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=2000)


@endpoint("A run's tool calls (its sub-agents' included), in the order they were made.",
          response=page_of(ToolCall))
async def list_run_tool_calls(call: Call[Any]) -> Response:
    run_id = call.path_id("run_id", "run")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        if await runs.get(conn, run_id) is None:
            raise run_not_found(run_id)
        rows = await tool_calls.list_for_run(conn, run_id)
    return call.page(rows)


@endpoint("The organisation's tool calls, newest first (`?status=pending` filters).", paginated=True,
          response=page_of(ToolCall),
          params=(Param("status", {"type": "string", "enum": list(tool_calls.STATUSES)}, "Only calls in this status"),))
async def list_tool_calls(call: Call[Any]) -> Response:
    cursor, limit = call.page_params()
    raw = call.request.query_params.get("status")
    if raw is not None and raw not in tool_calls.STATUSES:
        raise validation_failed([{"field": "status", "message": f"must be one of {', '.join(tool_calls.STATUSES)}"}])
    status = ToolCallStatus(raw) if raw is not None else None
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        rows = await tool_calls.list_calls(conn, status, cursor, limit)
    data, next_cursor = page(rows, limit)
    return call.page(data, next_cursor)


async def _decide(call: Call[Any], *, approve: bool, args: dict[str, Any] | None, reason: str | None) -> Response:
    """Record a human's decision on a pending call, emit `confirmation.resolved`, and when the
    run has no other pending call, re-queue it so a worker resumes it from its checkpoint."""
    tool_call_id = call.path_id("tool_call_id", "tool_call")
    principal = call.principal
    async with tenant_tx(call.pool, principal.org_id) as conn:
        found = await tool_calls.get(conn, tool_call_id)
        if found is None:
            raise ApiError("NOT_FOUND", f"No tool call with id {tool_call_id!r} in this organisation.")
        # Lock order everywhere: session, then run, then tool call.
        await runs.lock_session(conn, found["session_id"])
        await runs.lock_run(conn, found["run_id"])
        row = await tool_calls.decide(conn, tool_call_id, approve=approve, by=principal.actor, args=args,
                                      reason=reason)
        if row is None:
            current = await tool_calls.get(conn, tool_call_id)
            status = current["status"] if current else "gone"
            raise ApiError("CONFLICT", f"This tool call is not pending (it is {status}); it was already decided.",
                           details={"status": status})
        decision = "approved" if approve else "rejected"
        data: dict[str, Any] = {"tool_call_id": tool_call_id, "decision": decision, "decided_by": principal.actor}
        if approve and row["proposed_args"] is not None:
            data["args"] = row["args"]
        if reason:
            data["reason"] = reason
        resolved = (found["run_id"], events.CONFIRMATION_RESOLVED, data)
        emitted = await events.append(conn, found["session_id"], [resolved])
        resumed = None
        if await tool_calls.pending_in_run(conn, found["run_id"]) == 0:
            resumed = await runs.resume(conn, found["run_id"])
        await audit.record(conn, principal.actor, f"tool_call.{'approve' if approve else 'reject'}", "tool_call",
                           tool_call_id, {"run_id": found["run_id"], "edited": row["proposed_args"] is not None})
    await publish(call.infra, principal.org_id, emitted)
    if resumed is not None:
        await start_next(call.infra, principal.org_id, found["run_id"])
    return call.reply(row)


@endpoint("Approve a pending tool call, optionally with edited `args`; the run resumes.", role="member",
          body=Approval, response=ToolCall, errors=("CONFLICT",))
async def approve_tool_call(call: Call[Approval]) -> Response:
    return await _decide(call, approve=True, args=call.body.args, reason=None)


@endpoint("Reject a pending tool call (`reason` is told to the model); the run resumes without it.",
          role="member", body=Rejection, response=ToolCall, errors=("CONFLICT",))
async def reject_tool_call(call: Call[Rejection]) -> Response:
    return await _decide(call, approve=False, args=None, reason=call.body.reason)


routes = [
    resource("/v1/runs/{run_id}/tool-calls", GET=list_run_tool_calls),
    resource("/v1/tool-calls", GET=list_tool_calls),
    resource("/v1/tool-calls/{tool_call_id}/approve", POST=approve_tool_call),
    resource("/v1/tool-calls/{tool_call_id}/reject", POST=reject_tool_call),
]
