"""A call routed to an offline runner waits like an approval (docs/runners.md).

Before a routed call runs, its runner must be connected. If it is not, the call is marked
`pending` (which is what keeps a paused run paused), its `runner_calls` row `waiting`, a
`runner.offline` event is emitted and the graph interrupts: the worker sets the run
`awaiting_confirmation` and is free at once. When the runner connects, the API ends the wait and
re-queues the run (`core.runner_waits`); past `runners.offline_timeout_s` a maintenance job
fails the call with a readable error instead. A human may also decide the pending call.

The same happens when the runner goes offline while the worker waits for a call it was sent
(`skills.remote.RunnerWentOffline`): the run waits, and when it goes on, the step sends the call
again to the same runner, whose journal answers it from its result (or runs it, if it never
arrived) — never twice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from core import events, runner_link
from core.store import runners, tool_calls
from core.store.runners import RunnerRow
from core.store.tool_calls import ToolCallRow, ToolCallStatus
from core.tenancy import tenant_batch, tenant_tx
from orchestrator.approvals import wait_for_human
from orchestrator.context import RunContext
from skills import SkillError
from skills.remote import RunnerWentOffline, resolve_runner

SENT_SQL = "SELECT sent_at FROM runner_calls WHERE id = %s AND sent_at IS NOT NULL"


async def until_runner_connected(ctx: RunContext, name: str, row: ToolCallRow,
                                 sent_to: RunnerRow | None = None) -> ToolCallRow:
    """The call's row once its runner is connected (or once the wait ended otherwise: timed out
    or decided by a human). Calls not routed to a runner pass straight through. `sent_to`: the
    runner the call was sent to, when it was (it stays there; else the route chooses)."""
    route = ctx.agent.config.runner_route()
    if route is None or not route.routes(name) or ctx.infra is None:
        return row
    infra = ctx.infra
    while row["status"] in (ToolCallStatus.RUNNING, ToolCallStatus.PENDING):
        if row["status"] == ToolCallStatus.PENDING:
            # Still waiting after an interrupt() that returned: in a step re-run after a resume,
            # the first interrupt() returns the resume value; this one pauses.
            wait_for_human({"tool_call_id": row["id"], "name": name}, ctx.depth)
            row = await _approved_to_running(ctx, row["id"]) or row
            continue
        runner = sent_to
        if runner is None:
            try:
                runner = await resolve_runner(infra, ctx.org_id, route)
            except SkillError:  # no such runner at all: the call itself says so
                return row
        if await runner_link.is_online(infra.redis, ctx.org_id, runner["id"]):
            return row
        async with tenant_tx(ctx.pool, ctx.org_id) as conn:
            call = await runners.put_call(conn, row["id"], runner_id=runner["id"], run_id=ctx.run_id,
                                          session_id=ctx.session_id, name=name, args=row["args"], status="waiting")
            if call["status"] == "done":  # its result came in meanwhile: nothing to wait for
                return row
            if call["runner_id"] != runner["id"]:  # a call sent before stays with the runner it went to
                runner = await runners.get(conn, call["runner_id"]) or runner
            row = await tool_calls.set_status(conn, row["id"], ToolCallStatus.PENDING) or row
        # The runner may have connected between the check and the write, and then missed this wait.
        if await runner_link.is_online(infra.redis, ctx.org_id, runner["id"]):
            async with tenant_tx(ctx.pool, ctx.org_id) as conn:
                await runners.end_wait(conn, row["id"])
                row = await tool_calls.get(conn, row["id"]) or row
                if row["status"] in (ToolCallStatus.PENDING, ToolCallStatus.APPROVED):
                    row = await tool_calls.set_status(conn, row["id"], ToolCallStatus.RUNNING) or row
            continue
        await ctx.emitter.emit(events.RUNNER_OFFLINE, {
            "tool_call_id": row["id"], "runner_id": runner["id"], "runner": runner["name"],
            "timeout_s": infra.settings.runners.offline_timeout_s})
        await ctx.emitter.flush()
        wait_for_human({"tool_call_id": row["id"], "name": name, "runner": runner["name"]}, ctx.depth)
        row = await _approved_to_running(ctx, row["id"]) or row
    return row


async def _approved_to_running(ctx: RunContext, tool_call_id: str) -> ToolCallRow | None:
    async with tenant_tx(ctx.pool, ctx.org_id) as conn:
        row = await tool_calls.get(conn, tool_call_id)
        if row is not None and row["status"] == ToolCallStatus.APPROVED:
            row = await tool_calls.set_status(conn, tool_call_id, ToolCallStatus.RUNNING) or row
    return row


async def while_runner_connected(ctx: RunContext, name: str, row: ToolCallRow,
                                 run: Callable[[], Awaitable[tuple[Any, str | None]]]) -> tuple[Any, str | None]:
    """`run()` (the skill call: its output and error); when the call's runner goes offline
    meanwhile, the run waits for it like an approval (the graph interrupts here), and the call is
    sent again once the runner is back (a later attempt of this step)."""
    while True:
        try:
            return await run()
        except RunnerWentOffline as gone:
            row = await until_runner_connected(ctx, name, row, gone.runner)
            if row["status"] in (ToolCallStatus.SUCCEEDED, ToolCallStatus.FAILED):  # the offline timeout ended it
                return row["output"], (row["error"] or {}).get("message")
            if row["status"] != ToolCallStatus.RUNNING:
                return None, (f"A human decided this call while its runner {gone.runner['name']!r} was offline; it "
                              "may have run there before its link dropped. Check the runner's workspace.")


async def sent_before(ctx: RunContext, name: str, tool_call_id: str) -> bool:
    """Whether an earlier attempt of this step sent this call to a runner (and so emitted its
    `tool.call` event, which a replay must not repeat)."""
    route = ctx.agent.config.runner_route()
    if route is None or not route.routes(name):
        return False
    [rows] = await tenant_batch(ctx.pool, ctx.org_id, (SENT_SQL, (tool_call_id,)))
    return bool(rows)
