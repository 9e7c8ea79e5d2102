"""Tool calls: what runs called (or proposed to call), read-only until approvals arrive."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from api.endpoint import Call, endpoint, resource, validation_failed
from api.responses import listing
from api.routes.runs import run_not_found
from core.pagination import page
from core.store import runs, tool_calls
from core.tenancy import tenant_tx


@endpoint("A run's tool calls (its sub-agents' included), in the order they were made.", response="ToolCall")
async def list_run_tool_calls(call: Call[Any]) -> Response:
    run_id = call.path_id("run_id", "run")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        if await runs.get(conn, run_id) is None:
            raise run_not_found(run_id)
        rows = await tool_calls.list_for_run(conn, run_id)
    return listing(rows, None)


@endpoint("The organisation's tool calls, newest first (`?status=pending` filters).", paginated=True,
          response="ToolCall")
async def list_tool_calls(call: Call[Any]) -> Response:
    cursor, limit = call.page_params()
    status = call.request.query_params.get("status")
    if status is not None and status not in tool_calls.STATUSES:
        raise validation_failed([{"field": "status", "message": f"must be one of {', '.join(tool_calls.STATUSES)}"}])
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        rows = await tool_calls.list_calls(conn, status, cursor, limit)
    data, next_cursor = page(rows, limit)
    return listing(data, next_cursor)


routes = [
    resource("/v1/runs/{run_id}/tool-calls", GET=list_run_tool_calls),
    resource("/v1/tool-calls", GET=list_tool_calls),
]
