"""A call routed to an offline runner waits like an approval (docs/runners.md).

Before a routed call runs, its runner must be connected. If it is not, the call is marked
`pending` (which is what keeps a paused run paused), its `runner_calls` row `waiting`, a
`runner.offline` event is emitted and the graph interrupts: the worker sets the run
`awaiting_confirmation` and is free at once. When the runner connects, the API ends the wait and
re-queues the run (`core.runner_waits`); past `runners.offline_timeout_s` a maintenance job
fails the call with a readable error instead. A human may also decide the pending call.
"""

from __future__ import annotations

from core import events, runner_link
from core.store import runners, tool_calls
from core.store.tool_calls import ToolCallRow, ToolCallStatus
from core.tenancy import tenant_tx
from orchestrator.approvals import wait_for_human
from orchestrator.context import RunContext
from skills import SkillError
from skills.remote import resolve_runner

BACK_SQL = "UPDATE runner_calls SET status = 'queued', waiting_since = NULL WHERE id = %s AND status = 'waiting'"


async def until_runner_connected(ctx: RunContext, name: str, row: ToolCallRow) -> ToolCallRow:
    """The call's row once its runner is connected (or once the wait ended otherwise: timed out
    or decided by a human). Calls not routed to a runner pass straight through."""
    route = ctx.agent.config.runner_route()
    if route is None or not route.routes(name) or ctx.infra is None:
        return row
    infra = ctx.infra
    while row["status"] == ToolCallStatus.RUNNING:
        try:
            runner = await resolve_runner(infra, ctx.org_id, route)
        except SkillError:  # no such runner at all: the call itself says so
            return row
        if await runner_link.is_online(infra.redis, ctx.org_id, runner["id"]):
            return row
        async with tenant_tx(ctx.pool, ctx.org_id) as conn:
            await runners.put_call(conn, row["id"], runner_id=runner["id"], run_id=ctx.run_id,
                                   session_id=ctx.session_id, name=name, args=row["args"], status="waiting")
            row = await tool_calls.set_status(conn, row["id"], ToolCallStatus.PENDING) or row
        # The runner may have connected between the check and the write, and then missed this wait.
        if await runner_link.is_online(infra.redis, ctx.org_id, runner["id"]):
            async with tenant_tx(ctx.pool, ctx.org_id) as conn:
                await conn.execute(BACK_SQL, (row["id"],))
                row = await tool_calls.get(conn, row["id"]) or row
                if row["status"] in (ToolCallStatus.PENDING, ToolCallStatus.APPROVED):
                    row = await tool_calls.set_status(conn, row["id"], ToolCallStatus.RUNNING) or row
            continue
        await ctx.emitter.emit(events.RUNNER_OFFLINE, {
            "tool_call_id": row["id"], "runner_id": runner["id"], "runner": runner["name"],
            "timeout_s": infra.settings.runners.offline_timeout_s})
        await ctx.emitter.flush()
        wait_for_human({"tool_call_id": row["id"], "name": name, "runner": runner["name"]}, ctx.depth)
        async with tenant_tx(ctx.pool, ctx.org_id) as conn:
            row = await tool_calls.get(conn, row["id"]) or row
            if row["status"] == ToolCallStatus.APPROVED:
                row = await tool_calls.set_status(conn, row["id"], ToolCallStatus.RUNNING) or row
    return row
