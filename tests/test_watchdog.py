"""The watchdog against real Postgres, Redis and a real worker: runs whose worker vanished, runs
past their deadline or attempt budget, queued runs whose message was lost, and runs it must
leave alone. Stalled runs are made directly in Postgres (a claim by a "ghost" worker that never
heartbeats, a run inserted without its message), exactly the states a crash leaves behind."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from starlette.testclient import TestClient

from core.db import open_pool
from core.settings import Settings
from core.store import agents, runs
from core.tenancy import AsyncPool, tenant_tx
from runtime.watchdog import SendMemo, SweepReport, sweep_once
from tests.helpers import Org, start_run, wait
from tests.sse import read_events

pytestmark = pytest.mark.usefixtures("worker")
T = TypeVar("T")
GHOST = "ghost-host:4242:deadbeef"


def _db(settings: Settings, work: Callable[[AsyncPool], Awaitable[T]]) -> T:
    async def go() -> T:
        pool = await open_pool(settings.database, name="test-watchdog", max_size=1)
        try:
            return await work(pool)
        finally:
            await pool.close()

    return asyncio.run(go())


def _create(settings: Settings, org: Org, session: dict[str, Any], text: str = "hello") -> str:
    """A queued run, stored as the API stores it, but never sent to the workers."""
    async def work(pool: AsyncPool) -> str:
        async with tenant_tx(pool, org.id) as conn:
            await runs.lock_session(conn, session["id"])
            agent = await agents.get(conn, session["agent_id"])
            assert agent is not None
            created = await runs.create(conn, session_id=session["id"], text=text, multitask="enqueue",
                                        metadata={}, idempotency_key=None, request_hash="test", created_by=None)
        return str(created.run["id"])

    return _db(settings, work)


def _ghost_claim(settings: Settings, org: Org, run_id: str, session_id: str, *, lease_s: float,
                 timeout_s: float = 300) -> None:
    """Claim the run for a worker that will never heartbeat (it "died" right after the claim)."""
    async def work(pool: AsyncPool) -> None:
        async with tenant_tx(pool, org.id) as conn:
            claimed = await runs.claim(conn, run_id, GHOST, lease_s, timeout_s)
        assert not isinstance(claimed, runs.NotClaimed), claimed.status

    _db(settings, work)


def _execute(settings: Settings, org: Org, sql: str, *params: object) -> None:
    async def work(pool: AsyncPool) -> None:
        async with tenant_tx(pool, org.id) as conn:
            await conn.execute(sql, params)

    _db(settings, work)


def _sweep(settings: Settings) -> SweepReport:
    return asyncio.run(sweep_once(settings))


def _touched(report: SweepReport) -> set[str]:
    return {*report.requeued, *report.resent, *report.timed_out, *report.exhausted, *report.cancelled}


def _run(org: Org, run_id: str) -> dict[str, Any]:
    r = org.client.get(f"/v1/runs/{run_id}", headers=org.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def test_a_run_whose_worker_vanished_is_sent_again_and_resumed(settings: Settings, org: Org, client: TestClient):
    session = org.create_session(str(org.create_agent()["id"]))
    run_id = _create(settings, org, session)
    _ghost_claim(settings, org, run_id, session["id"], lease_s=0.2)
    time.sleep(0.4)  # the lease lapses; no message is in the queue: only the watchdog can help

    report = _sweep(settings)
    assert run_id in report.requeued

    final = wait(org, run_id)
    assert final["status"] == "succeeded", final
    assert final["attempt"] == 2
    types = [e["type"] for e in read_events(client, f"/v1/runs/{run_id}/events", org.headers)]
    assert types.count("run.started") == 2 and types[-1] == "run.succeeded"


def test_a_run_past_its_deadline_times_out_and_the_next_one_runs(settings: Settings, org: Org, client: TestClient):
    session = org.create_session(str(org.create_agent()["id"]))
    run_id = _create(settings, org, session)
    _ghost_claim(settings, org, run_id, session["id"], lease_s=0.2, timeout_s=0.3)
    behind = start_run(org, session["id"], "and then this")  # queued behind it; not sent yet
    time.sleep(0.5)

    report = _sweep(settings)
    assert run_id in report.timed_out

    run = _run(org, run_id)
    assert run["status"] == "timed_out" and run["error"]["code"] == "TIMED_OUT", run
    assert "time limit" in run["error"]["message"]
    events = read_events(client, f"/v1/runs/{run_id}/events", org.headers)
    assert events[-1]["type"] == "run.timed_out" and events[-1]["data"]["error"]["code"] == "TIMED_OUT"
    following = wait(org, behind["id"])
    assert following["status"] == "succeeded" and following["attempt"] == 1, following


def test_a_run_that_keeps_losing_its_worker_fails_when_attempts_run_out(
    settings: Settings, org: Org, client: TestClient
):
    session = org.create_session(str(org.create_agent()["id"]))
    run_id = _create(settings, org, session)
    for _ in range(settings.worker.max_attempts):  # each claim: a worker that then died
        _ghost_claim(settings, org, run_id, session["id"], lease_s=0.1)
        time.sleep(0.2)
    assert _run(org, run_id)["attempt"] == settings.worker.max_attempts == 3

    report = _sweep(settings)
    assert run_id in report.exhausted

    run = _run(org, run_id)
    assert run["status"] == "failed" and run["error"]["code"] == "ATTEMPTS_EXHAUSTED", run
    assert "stopped 3 times" in run["error"]["message"]
    types = [e["type"] for e in read_events(client, f"/v1/runs/{run_id}/events", org.headers)]
    assert types[-1] == "run.failed" and types.count("run.started") == 3


def test_a_cancelled_run_whose_worker_vanished_ends_cancelled(settings: Settings, org: Org):
    session = org.create_session(str(org.create_agent()["id"]))
    run_id = _create(settings, org, session)
    _ghost_claim(settings, org, run_id, session["id"], lease_s=0.3)
    r = org.client.post(f"/v1/runs/{run_id}/cancel", headers=org.headers)
    assert r.status_code in (200, 202), r.text
    time.sleep(0.5)

    assert run_id in _sweep(settings).cancelled
    assert _run(org, run_id)["status"] == "cancelled"


def test_a_queued_run_whose_message_was_lost_is_sent_again(settings: Settings, org: Org):
    session = org.create_session(str(org.create_agent()["id"]))
    run_id = _create(settings, org, session)
    fresh_session = org.create_session(str(org.create_agent()["id"]))
    fresh = _create(settings, org, fresh_session)
    _execute(settings, org, "UPDATE runs SET created_at = now() - interval '1 minute' WHERE id = %s", run_id)

    report = _sweep(settings)
    assert run_id in report.resent
    assert fresh not in _touched(report), "queued for less than requeue_after_s: its message may still come"

    final = wait(org, run_id)
    assert final["status"] == "succeeded" and final["attempt"] == 1, final
    assert _run(org, fresh)["status"] == "queued"
    _execute(settings, org, "UPDATE runs SET created_at = now() - interval '1 minute' WHERE id = %s", fresh)
    assert fresh in _sweep(settings).resent
    assert wait(org, fresh)["status"] == "succeeded"


def test_a_run_requeued_moments_ago_after_an_earlier_attempt_is_not_sent_again(settings: Settings, org: Org):
    session = org.create_session(str(org.create_agent()["id"]))
    run_id = _create(settings, org, session)
    _ghost_claim(settings, org, run_id, session["id"], lease_s=60)
    # As after a human's decision: queued again (its sender enqueues it), created long ago.
    _execute(settings, org, "UPDATE runs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, "
                            "created_at = now() - interval '1 minute' WHERE id = %s", run_id)
    assert run_id not in _touched(_sweep(settings)), "its latest event is recent: its message is on its way"
    assert org.client.post(f"/v1/runs/{run_id}/cancel", headers=org.headers).status_code in (200, 202)


def test_live_runs_and_runs_waiting_their_turn_are_left_alone(settings: Settings, org: Org):
    session = org.create_session(str(org.create_agent()["id"]))
    run_id = _create(settings, org, session)
    _ghost_claim(settings, org, run_id, session["id"], lease_s=60)  # alive and well, as far as anyone knows
    behind = _create(settings, org, session)
    _execute(settings, org, "UPDATE runs SET created_at = now() - interval '1 minute' WHERE id = %s", behind)

    report = _sweep(settings)
    assert not {run_id, behind} & _touched(report)
    assert _run(org, run_id)["status"] == "running" and _run(org, run_id)["attempt"] == 1
    assert _run(org, behind)["status"] == "queued"

    async def end(pool: AsyncPool) -> None:  # the ghost finishes; its successor then runs
        async with tenant_tx(pool, org.id) as conn:
            done = await runs.finish(conn, run_id, session["id"], "cancelled", owner=GHOST)
        assert done is not None and done.next_run_id == behind

    _db(settings, end)
    assert behind in _sweep(settings).resent
    assert wait(org, behind)["status"] == "succeeded"


def test_the_memo_holds_back_repeated_sends_of_one_attempt():
    memo = SendMemo(hold_s=30)
    assert memo.due("run_1", 1)
    memo.sent("run_1", 1)
    assert not memo.due("run_1", 1)
    assert memo.due("run_1", 2), "a new attempt (claimed, then lost again) is sent at once"
    assert memo.due("run_2", 1)
