"""Ending a run's wait for an offline runner: when the runner connects (the API) or when the wait
passes `runners.offline_timeout_s` (a maintenance job).

A run whose runner was offline is paused exactly like one awaiting approval: its tool call is
`pending` (so the pause holds), its `runner_calls` row `waiting`. That happens before a call is
sent (the runner was not connected) or while the worker waited for its result (the runner's link
dropped mid-call: `sent_at` is set, and the call may have run there). Ending the wait takes the
call out of `pending` — approved to go on, or failed with a readable error — and, when the run
has no other pending call, re-queues it so a worker resumes it from its checkpoint.
"""

from __future__ import annotations

import logging
from typing import Any

from core import events
from core.infra import Infra
from core.run_signals import publish, start_next
from core.store import audit, runs, tool_calls
from core.store import runners as store
from core.store.runners import RunnerCallRow
from core.store.tool_calls import ToolCallStatus
from core.tenancy import tenant_tx, watchdog_scan_tx

log = logging.getLogger("agentos.runners")

TIMED_OUT_SQL = """
UPDATE runner_calls SET status = 'done', error = %s, done_at = now() WHERE id = %s AND status = 'waiting'
RETURNING id
"""


def offline_error(runner: str, waited_s: float, *, sent: bool) -> str:
    if sent:
        return (f"The runner {runner!r} went offline while running this call and did not come back within "
                f"{waited_s:g} s, so its outcome is unknown: it may have run there. Check the runner's workspace "
                "before retrying.")
    return (f"The runner {runner!r} stayed offline for more than {waited_s:g} s, so this call did not run. "
            "Start `agentos runner` on its machine (or route the agent to another runner) and try again.")


def decided_error(call: RunnerCallRow) -> str:
    if call["sent_at"] is not None:
        return "the call was decided while its runner was offline; it may have run there before its link dropped"
    return "not run: the call was decided while its runner was offline"


async def _end_wait(infra: Infra, org_id: str, call: RunnerCallRow, *, error: str | None) -> bool:
    """End one call's wait; False when it was no longer waiting (someone else ended it)."""
    async with tenant_tx(infra.pool, org_id) as conn:
        await runs.lock_session(conn, call["session_id"])
        await runs.lock_run(conn, call["run_id"])
        emitted: list[tuple[str, str, dict[str, Any]]] = []
        if error is None:
            row = await tool_calls.get(conn, call["id"])
            if row is None or row["status"] != ToolCallStatus.PENDING:
                # Decided otherwise meanwhile (a human rejected it, the run ended): never deliver it.
                await conn.execute(TIMED_OUT_SQL, (decided_error(call), call["id"]))
                return False
            if not await store.end_wait(conn, call["id"]):
                return False
            await tool_calls.set_status(conn, call["id"], ToolCallStatus.APPROVED)
            emitted.append((call["run_id"], events.RUNNER_ONLINE,
                            {"tool_call_id": call["id"], "runner_id": call["runner_id"]}))
        else:
            if await (await conn.execute(TIMED_OUT_SQL, (error, call["id"]))).fetchone() is None:
                return False
            row = await tool_calls.get(conn, call["id"])
            if row is not None and row["status"] == ToolCallStatus.PENDING:
                await tool_calls.finish(conn, call["id"], error=error)
                emitted.append((call["run_id"], events.TOOL_RESULT, {"tool_call_id": call["id"], "error": error}))
            await audit.record(conn, "system:runners", "runner.call_timed_out", "tool_call", call["id"],
                               {"run_id": call["run_id"], "runner_id": call["runner_id"]})
        stored = await events.append(conn, call["session_id"], emitted)
        resumed = None
        if await tool_calls.pending_in_run(conn, call["run_id"]) == 0:
            resumed = await runs.resume(conn, call["run_id"])
    await publish(infra, org_id, stored)
    if resumed is not None:
        await start_next(infra, org_id, call["run_id"])
    return True


async def runner_connected(infra: Infra, org_id: str, runner_id: str) -> int:
    """Resume the runs that waited for this runner; how many calls stopped waiting."""
    async with tenant_tx(infra.pool, org_id) as conn:
        waiting = await store.waiting_for(conn, runner_id)
    ended = 0
    for call in waiting:
        ended += await _end_wait(infra, org_id, call, error=None)
    return ended


async def fail_overdue_waits(infra: Infra) -> str | None:
    """The maintenance job: fail every call that waited for its runner past the timeout."""
    timeout_s = infra.settings.runners.offline_timeout_s
    async with watchdog_scan_tx(infra.pool) as conn:
        overdue = list(await (await conn.execute(OVERDUE_SQL, (timeout_s,))).fetchall())
    failed = 0
    for row in overdue:
        call: RunnerCallRow = row  # type: ignore[assignment]
        async with tenant_tx(infra.pool, row["org_id"]) as conn:
            runner = await store.get(conn, call["runner_id"])
        name = runner["name"] if runner is not None else call["runner_id"]
        failed += await _end_wait(infra, row["org_id"], call,
                                  error=offline_error(name, timeout_s, sent=call["sent_at"] is not None))
    if not failed:
        return None
    return f"{failed} call(s) failed after waiting {timeout_s:g} s for an offline runner"


# Across orgs (read-only, the watchdog's view); each change then happens in the org's tenant_tx.
OVERDUE_SQL = f"""
SELECT {store.CALL_COLUMNS}, org_id FROM runner_calls
WHERE status = 'waiting' AND waiting_since < now() - make_interval(secs => %s) ORDER BY created_at LIMIT 500
"""
