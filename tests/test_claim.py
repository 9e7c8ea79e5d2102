"""A run's claim in one batched transaction (core.store.runs.claim_batch, used by the worker's
`runtime.executor._deliver`): the same answers as the statement-by-statement claim it replaced.
Why a run is not claimed (held by a live lease and for how long, behind an earlier run, cancel
requested, its session or agent version gone, another org's), attempt and lapse counting, the
deadline from the agent's time limit, `run.started` numbered in the session's line, and the
caller's extra reads sent with it."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row

from core import budgets
from core.db import open_pool
from core.settings import Settings
from core.store import files, runs
from core.store.runs import ClaimBatch, RunStatus
from core.tenancy import Statement, tenant_tx
from runtime.executor import execute_run
from runtime.services import Services
from tests.helpers import Org, stored_run, until


def _claim(settings: Settings, org_id: str, run_id: str, owner: str, lease_s: float = 60,
           *also: Statement) -> ClaimBatch:
    async def go() -> ClaimBatch:
        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
        try:
            return await runs.claim_batch(pool, org_id, run_id, owner, lease_s, *also)
        finally:
            await pool.close()

    return asyncio.run(go())


def _owner_sql(settings: Settings, sql: str, *params: object) -> list[dict[str, Any]]:
    """As the database owner (beyond row-level security): what the API cannot do."""
    with psycopg.connect(settings.database.url, row_factory=dict_row, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def _run_with(org: Org, settings: Settings, **agent: Any) -> tuple[str, str, str]:
    created = org.create_agent(**agent)
    session = org.create_session(str(created["id"]), user_id="end-user-7")
    run_id = stored_run(settings, org.id, str(created["id"]), str(session["id"]))
    return str(created["id"]), str(session["id"]), run_id


def test_one_batch_claims_and_numbers_run_started_and_brings_the_reads_sent_with_it(
        org: Org, settings: Settings) -> None:
    _, session_id, run_id = _run_with(org, settings, limits={"timeout_s": 123})
    found = _claim(settings, org.id, run_id, "worker-a", 60, (budgets.ORG_BUDGET_SQL, ()),
                   files.run_attachments(run_id))
    assert found.run is not None and found.run["status"] == RunStatus.QUEUED and found.agent is not None
    assert found.agent["config"]["limits"]["timeout_s"] == 123
    claimed = found.claim
    assert isinstance(claimed, runs.Claimed) and claimed.user_id == "end-user-7"
    assert claimed.run["status"] == "running" and claimed.run["attempt"] == 1 and claimed.run["lapses"] == 0
    assert claimed.run["deadline_at"] - claimed.run["started_at"] == timedelta(seconds=123)
    [started] = claimed.events
    stored = _owner_sql(settings, "SELECT seq, type, data, ts FROM run_events WHERE session_id = %s ORDER BY seq",
                        session_id)
    assert [(e["seq"], e["type"]) for e in stored] == [(1, "run.queued"), (2, "run.started")]
    assert (started.seq, started.type, started.data, started.ts) == (2, "run.started", {"attempt": 1}, stored[1]["ts"])
    assert stored[1]["data"] == {"attempt": 1}
    month, attached = found.also
    assert budgets.at_claim(month, settings.limits).month.tokens == 0 and attached == []
    row = _owner_sql(settings, "SELECT lease_owner, status FROM runs WHERE id = %s", run_id)[0]
    assert row == {"lease_owner": "worker-a", "status": "running"}


def test_a_live_lease_says_how_long_it_has_left_and_a_lapsed_one_is_taken_over_and_counted(
        org: Org, settings: Settings) -> None:
    _, session_id, run_id = _run_with(org, settings)
    assert isinstance(_claim(settings, org.id, run_id, "worker-a", 60).claim, runs.Claimed)
    held = _claim(settings, org.id, run_id, "worker-b", 60).claim
    assert isinstance(held, runs.NotClaimed) and held.status == RunStatus.RUNNING
    assert held.lease_left_s is not None and 50 < held.lease_left_s <= 60
    _owner_sql(settings, "UPDATE runs SET lease_expires_at = now() - interval '1 second' WHERE id = %s", run_id)
    again = _claim(settings, org.id, run_id, "worker-c", 60).claim
    assert isinstance(again, runs.Claimed) and (again.run["attempt"], again.run["lapses"]) == (2, 1)
    assert again.events[0].data == {"attempt": 2} and again.events[0].seq == 3
    # No event for the claims that did not happen: the line stays gap-free.
    seqs = [e["seq"] for e in _owner_sql(settings, "SELECT seq FROM run_events WHERE session_id = %s ORDER BY seq",
                                         session_id)]
    assert seqs == [1, 2, 3]


def test_why_a_run_is_not_claimed(org: Org, other_org: Org, settings: Settings) -> None:
    agent_id, session_id, first = _run_with(org, settings)
    second = stored_run(settings, org.id, agent_id, session_id)
    behind = _claim(settings, org.id, second, "worker-a").claim
    assert isinstance(behind, runs.NotClaimed) and (behind.status, behind.lease_left_s) == (RunStatus.QUEUED, None)

    # Another org's worker (a wrong org id) sees no such run and changes nothing.
    theirs = _claim(settings, other_org.id, first, "worker-x")
    assert theirs.run is None and isinstance(theirs.claim, runs.NotClaimed) and theirs.claim.status is None
    assert _claim(settings, org.id, "run_doesnotexist", "worker-a").run is None

    _owner_sql(settings, "UPDATE runs SET cancel_requested_at = now() WHERE id = %s", first)
    cancelled = _claim(settings, org.id, first, "worker-a").claim
    assert isinstance(cancelled, runs.NotClaimed) and cancelled.status == RunStatus.QUEUED

    _, gone_session, gone_run = _run_with(org, settings)
    _owner_sql(settings, "UPDATE sessions SET deleted_at = now() WHERE id = %s", gone_session)
    gone = _claim(settings, org.id, gone_run, "worker-a")
    assert gone.run is not None and isinstance(gone.claim, runs.NotClaimed) and gone.claim.status is None
    statuses = _owner_sql(settings, "SELECT id, status, attempt FROM runs WHERE id = ANY(%s) ORDER BY id",
                          [first, second, gone_run])
    assert {(r["status"], r["attempt"]) for r in statuses} == {("queued", 0)}


def test_deliveries_answer_as_before(org: Org, settings: Settings) -> None:
    """What `execute_run` says (and does) for a run it cannot start: the retry after a live
    lease, a missing agent version failing the run AGENT_MISSING without starting it."""
    agent_id, session_id, held = _run_with(org, settings)
    _, _, orphan = _run_with(org, settings)
    orphan_agent = _owner_sql(settings, "SELECT agent_id FROM runs WHERE id = %s", orphan)[0]["agent_id"]

    async def go() -> tuple[runs.Claimed | runs.NotClaimed, Any, Any, Any]:
        svc = await Services.open(settings)
        try:
            async with tenant_tx(svc.pool, org.id) as conn:
                ghost = await runs.claim(conn, held, "ghost-worker", 30)
            lease = await execute_run(svc, held, org.id)
            _owner_sql(settings, "DELETE FROM agent_versions WHERE agent_id = %s", orphan_agent)
            missing = await execute_run(svc, orphan, org.id)
            finished = await execute_run(svc, orphan, org.id)
            return ghost, lease, missing, finished
        finally:
            await svc.close()

    ghost, lease, missing, finished = asyncio.run(go())
    assert isinstance(ghost, runs.Claimed)
    assert lease.outcome == "held by another worker's lease" and lease.retry_after_s is not None
    assert 25 < lease.retry_after_s <= 31
    assert missing.outcome == "failed: agent missing" and finished.outcome == "already finished"
    row = _owner_sql(settings, "SELECT status, attempt, error FROM runs WHERE id = %s", orphan)[0]
    assert (row["status"], row["attempt"], row["error"]["code"]) == ("failed", 0, "AGENT_MISSING")
    kinds = [e["type"] for e in _owner_sql(settings, "SELECT type FROM run_events WHERE run_id = %s ORDER BY seq",
                                           orphan)]
    assert kinds == ["run.queued", "run.failed"]


def test_a_claim_waiting_for_the_session_sees_the_run_ended_meanwhile(org: Org, settings: Settings) -> None:
    """The session lock is taken by the batch's first statement and the claim is a statement of
    its own after it: a run waiting behind an earlier one whose end commits while the claim waits
    for the lock is claimed (one statement would have judged by what it saw before the wait)."""
    agent_id, session_id, first = _run_with(org, settings)
    second = stored_run(settings, org.id, agent_id, session_id)
    result: list[ClaimBatch] = []
    with psycopg.connect(settings.database.url, autocommit=True) as holder:
        with holder.transaction():
            holder.execute("SELECT id FROM sessions WHERE id = %s FOR UPDATE", (session_id,))
            holder.execute("UPDATE runs SET status = 'succeeded', finished_at = now() WHERE id = %s", (first,))
            claiming = threading.Thread(target=lambda: result.append(_claim(settings, org.id, second, "worker-a")))
            claiming.start()
            until(lambda: bool(_owner_sql(
                settings, "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE %s",
                "%WITH r AS MATERIALIZED%")), limit_s=30)
        claiming.join(timeout=30)
    [found] = result
    assert isinstance(found.claim, runs.Claimed) and found.claim.run["id"] == second
