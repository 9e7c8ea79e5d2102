"""Usage metering: every model call is recorded once, with its tokens and its cost from the price
table, and the sums per org/day/agent/model and per run equal the recorded calls exactly, under
concurrency and when a step runs again after its worker was killed."""

from __future__ import annotations

import asyncio
import signal
import time
from decimal import Decimal
from typing import Any

import psutil
import psycopg
import pytest
from psycopg.rows import dict_row
from starlette.testclient import TestClient

from core.admission import effective_limits
from core.db import open_pool
from core.events import RunEmitter, SessionGone
from core.infra import open_redis
from core.metering import Meter, cost_of, price_of, token_counts
from core.settings import ModelPrice, Settings, UsageSettings
from core.store import runs, usage
from core.tenancy import checkpoint_thread_id, tenant_tx
from tests.helpers import PRICES, Org, Worker, error_of, post_concurrently, start_run, wait

LIST = 'call: file_manager {"action": "list"}'
MILLION = Decimal(1_000_000)


def _db(stack: Any) -> psycopg.Connection[dict[str, Any]]:
    """The database as its owner (a superuser: sees every org's rows)."""
    return psycopg.connect(stack.database_url, row_factory=dict_row)


def _records(stack: Any, run_ids: list[str]) -> list[dict[str, Any]]:
    with _db(stack) as conn:
        return conn.execute("SELECT * FROM usage_records WHERE run_id = ANY(%s) ORDER BY run_id, call_key",
                            (run_ids,)).fetchall()


def _think_steps(stack: Any, run_id: str) -> int:
    with _db(stack) as conn:
        row = conn.execute("SELECT count(*) AS n FROM run_events WHERE run_id = %s AND type = 'step.started' "
                           "AND data->>'node' = 'think'", (run_id,)).fetchone()
    assert row is not None
    return int(row["n"])


def test_the_price_table_prices_cached_input_apart_and_falls_back_to_the_provider():
    prices = {"openai:a": ModelPrice(input=Decimal("2"), output=Decimal("8"), cached_input=Decimal("0.5")),
              "openai:*": ModelPrice(input=Decimal("1"), output=Decimal("1"))}
    assert price_of(prices, "openai:a") is prices["openai:a"]
    assert price_of(prices, "openai:b") is prices["openai:*"]
    assert price_of(prices, "anthropic:c") is None
    # 1000 input of which 400 cached, 100 output: 600*2 + 400*0.5 + 100*8 = 2200 per million.
    assert cost_of(prices["openai:a"], 1000, 100, 400) == Decimal("0.0022")
    assert cost_of(prices["openai:*"], 1000, 100, 400) == Decimal("0.0011")  # no cached price: the input price
    assert cost_of(None, 1000, 100, 0) == 0
    assert token_counts({"input_tokens": 7, "output_tokens": 3, "total_tokens": 10,
                         "input_token_details": {"cache_read": 2}}) == (7, 3, 2)


@pytest.mark.timeout(240)
def test_usage_of_20_concurrent_runs_equals_the_sum_of_their_model_calls(client: TestClient, org: Org, stack: Any,
                                                                         worker: Worker):
    agent = org.create_agent(model="offline:priced", skills=["file_manager"], confirm="none")
    sessions = [str(org.create_session(str(agent["id"]))["id"]) for _ in range(20)]
    script = f"{LIST}\n{LIST}"
    responses = post_concurrently(org, [(f"/v1/sessions/{s}/runs", {"input": script}, {}) for s in sessions])
    assert all(r.status_code == 202 for r in responses), [r.text for r in responses]
    runs = [wait(org, r.json()["id"], timeout=200) for r in responses]
    assert {r["status"] for r in runs} == {"succeeded"}
    ids = [r["id"] for r in runs]

    records = _records(stack, ids)
    price = PRICES["offline:priced"]
    for run in runs:
        mine = [r for r in records if r["run_id"] == run["id"]]
        # One record per THINK step (the only model calls of these runs), none twice.
        assert len(mine) == _think_steps(stack, run["id"]) == 3
        assert run["usage"]["model_calls"] == 3
        assert run["usage"]["input_tokens"] == sum(r["input_tokens"] for r in mine)
        assert run["usage"]["output_tokens"] == sum(r["output_tokens"] for r in mine)
        assert run["usage"]["total_tokens"] == run["usage"]["input_tokens"] + run["usage"]["output_tokens"] > 0
        for r in mine:  # each call priced from the table: USD per million tokens
            assert r["model"] == "offline:priced" and r["agent_id"] == agent["id"]
            assert r["cost_usd"] == (r["input_tokens"] * Decimal(price["input"])
                                     + r["output_tokens"] * Decimal(price["output"])) / MILLION
        assert Decimal(str(run["usage"]["cost_usd"])) == sum(r["cost_usd"] for r in mine)
    # The offline model is deterministic: the same script in fresh sessions uses the same tokens.
    assert len({(r["usage"]["input_tokens"], r["usage"]["output_tokens"]) for r in runs}) == 1

    tokens = sum(r["input_tokens"] + r["output_tokens"] for r in records)
    cost = sum(r["cost_usd"] for r in records)
    with _db(stack) as conn:
        daily = conn.execute("SELECT sum(model_calls) AS calls, sum(input_tokens + output_tokens) AS tokens, "
                             "sum(cost_usd) AS cost FROM usage_daily WHERE org_id = %s", (org.id,)).fetchone()
        month = conn.execute("SELECT tokens, cost_usd FROM usage_months WHERE org_id = %s", (org.id,)).fetchone()
    assert daily == {"calls": 60, "tokens": tokens, "cost": cost}
    assert month == {"tokens": tokens, "cost_usd": cost}

    body = client.get("/v1/usage?group_by=agent", headers=org.headers).json()
    assert body["totals"]["model_calls"] == 60
    assert body["totals"]["total_tokens"] == tokens == sum(r["usage"]["total_tokens"] for r in runs)
    assert body["totals"]["cost_usd"] == float(cost) > 0
    assert [g["agent_id"] for g in body["data"]] == [agent["id"]]
    by_model = client.get("/v1/usage?group_by=model", headers=org.headers).json()["data"]
    assert [(g["model"], g["total_tokens"]) for g in by_model] == [("offline:priced", tokens)]
    by_day = client.get("/v1/usage", headers=org.headers).json()
    assert by_day["group_by"] == "day" and len(by_day["data"]) == 1 and by_day["data"][0]["model_calls"] == 60


@pytest.mark.timeout(240)
def test_a_step_run_again_after_its_worker_was_killed_counts_its_model_calls_once(
        client: TestClient, org: Org, stack: Any, worker: Worker):
    helper = org.create_agent(name="helper", model="offline:priced", skills=["file_manager"], confirm="none")
    boss = org.create_agent(name="boss", model="offline:priced", subagents=[helper["id"]])
    session = org.create_session(str(boss["id"]))
    # The sub-agent lists the files (a model call, recorded), then its second model call waits.
    run = start_run(org, str(session["id"]), f"delegate: helper {LIST}\\nwait: 4")

    deadline = time.monotonic() + 60
    while True:  # until the sub-agent sits in its second model call
        with _db(stack) as conn:
            row = conn.execute("SELECT count(*) AS n FROM run_events WHERE run_id = %s AND type = 'step.started' "
                               "AND data->>'node' = 'think' AND data->>'agent_id' = %s",
                               (run["id"], helper["id"])).fetchone()
        if row is not None and row["n"] >= 2:
            break
        assert time.monotonic() < deadline, "the sub-agent never reached its second model call"
        time.sleep(0.05)
    recorded_before = _records(stack, [run["id"]])
    assert len(recorded_before) == 2  # the boss's delegation, the helper's first call
    children = psutil.Process(worker.process.pid).children()
    assert children, "the worker runs prefork children"
    for child in children:
        child.send_signal(signal.SIGKILL)

    final = wait(org, run["id"], timeout=60)
    assert final["status"] == "succeeded" and final["attempt"] == 2, final
    # The delegation step ran again from the boss's checkpoint: the helper's first model call was
    # made twice (two THINK steps of the helper before its last one)...
    with _db(stack) as conn:
        helper_thinks = conn.execute(
            "SELECT count(*) AS n FROM run_events WHERE run_id = %s AND type = 'step.started' "
            "AND data->>'node' = 'think' AND data->>'agent_id' = %s", (run["id"], helper["id"])).fetchone()
    assert helper_thinks is not None and helper_thinks["n"] == 4
    # ...and is recorded once: boss delegates, helper lists, helper answers, boss answers.
    records = _records(stack, [run["id"]])
    keys = [r["call_key"] for r in records]
    assert len(keys) == 4 and sum(k.endswith("/think:1") for k in keys) == 1, keys
    assert [r for r in records if r["call_key"] in {b["call_key"] for b in recorded_before}] == recorded_before
    assert final["usage"]["model_calls"] == 4
    assert final["usage"]["total_tokens"] == sum(r["input_tokens"] + r["output_tokens"] for r in records)
    totals = client.get("/v1/usage", headers=org.headers).json()["totals"]
    assert totals["model_calls"] == 4 and totals["total_tokens"] == final["usage"]["total_tokens"]
    by_agent = {g["agent_id"]: g["model_calls"] for g in
                client.get("/v1/usage?group_by=agent", headers=org.headers).json()["data"]}
    assert by_agent == {boss["id"]: 2, helper["id"]: 2}


def test_a_sandbox_execution_is_recorded_once_per_tool_call(org: Org, settings: Settings, stack: Any):
    session = org.create_session(str(org.create_agent()["id"]))
    run = start_run(org, str(session["id"]), "hello")  # a run row to charge (no worker needed)

    async def execute_twice() -> None:
        pool = await open_pool(settings.database)
        redis = open_redis(settings.redis)
        try:
            emitter = RunEmitter(pool, redis, org.id, str(session["id"]), run["id"], maxlen=1000, ttl_s=60)
            meter = Meter(emitter, UsageSettings(), effective_limits(settings.limits, None), usage.Month(0, Decimal(0)))
            await meter.sandbox("tc_1", "agt_x", 120)
            await meter.sandbox("tc_1", "agt_x", 120)  # the same execution, after a step re-ran
            await meter.sandbox("tc_2", "agt_x", 30)
            # No monthly budget: the records wait for the emitter's next write (the step's checkpoint
            # in a run), the repeated key deferred once.
            assert sorted(emitter._deferred) == ["usage:sandbox:tc_1", "usage:sandbox:tc_2"]
            await emitter.close()
        finally:
            await redis.aclose()
            await pool.close()

    asyncio.run(execute_twice())
    # (A worker may also run the run itself: its model call is recorded beside, as `think:1`.)
    records = [r for r in _records(stack, [run["id"]]) if r["kind"] == "sandbox"]
    assert [(r["call_key"], r["cpu_ms"]) for r in records] == [("sandbox:tc_1", 120), ("sandbox:tc_2", 30)]
    got = org.client.get(f"/v1/runs/{run['id']}", headers=org.headers).json()["usage"]
    assert got["sandbox_executions"] == 2 and got["sandbox_cpu_ms"] == 150
    by_model = org.client.get("/v1/usage?group_by=model", headers=org.headers).json()["data"]
    sandbox = [g for g in by_model if g["model"] is None]
    assert [(g["sandbox_executions"], g["sandbox_cpu_ms"], g["model_calls"]) for g in sandbox] == [(2, 150, 0)]


def test_without_a_budget_a_model_calls_record_commits_with_its_steps_checkpoint(org: Org, stack: Any,
                                                                                  worker: Worker):
    """An org without a monthly budget: THINK's usage record is not a round trip of its own but
    travels with THINK's checkpoint, in the transaction that stores it (one xmin), so the record
    is never stored after the checkpoint; the run's usage and the terminal event still count it."""
    _, session = _agent_session_priced(org)
    run = wait(org, start_run(org, session, "hello")["id"])
    assert run["status"] == "succeeded" and run["usage"]["model_calls"] == 1
    with _db(stack) as conn:
        record = conn.execute("SELECT xmin::text AS tx FROM usage_records WHERE run_id = %s", (run["id"],)).fetchall()
        checkpoints = conn.execute(
            "SELECT xmin::text AS tx, metadata->>'step' AS step FROM checkpoints WHERE thread_id = %s "
            "ORDER BY checkpoint_id", (checkpoint_thread_id(org.id, session),)).fetchall()
        ended = conn.execute("SELECT xmin::text AS tx FROM runs WHERE id = %s", (run["id"],)).fetchone()
        completed = conn.execute("SELECT data FROM run_events WHERE run_id = %s AND type = 'run.succeeded'",
                                 (run["id"],)).fetchone()
    # THINK's (step 1, standing in for the two before it), then RESPOND's, stored by the ending.
    assert [c["step"] for c in checkpoints] == ["1", "2"]
    assert [r["tx"] for r in record] == [checkpoints[0]["tx"]]
    assert ended is not None and checkpoints[1]["tx"] == ended["tx"] != record[0]["tx"]
    assert completed is not None and completed["data"]["usage"]["model_calls"] == 1


def _agent_session_priced(org: Org) -> tuple[dict[str, Any], str]:
    agent = org.create_agent(model="offline:priced")
    return agent, str(org.create_session(str(agent["id"]))["id"])


async def _unsent_run(pool: Any, org: Org, session_id: str) -> str:
    """A queued run as the API stores it, never sent to the workers (none executes it beside)."""
    async with tenant_tx(pool, org.id) as conn:
        created = await runs.create(conn, session_id=session_id, text="hello", multitask="enqueue", metadata={},
                                    idempotency_key=None, request_hash="-", created_by=None)
    return str(created.run["id"])


def _emitter_and_meter(pool: Any, redis: Any, org: Org, session_id: str, run_id: str,
                       settings: Settings) -> tuple[RunEmitter, Meter]:
    emitter = RunEmitter(pool, redis, org.id, session_id, run_id, maxlen=1000, ttl_s=60, window_s=60.0)
    return emitter, Meter(emitter, UsageSettings(), effective_limits(settings.limits, None),
                          usage.Month(0, Decimal(0)))


def test_a_deferred_record_is_rolled_back_with_the_statement_it_went_with_and_stored_later_once(
        org: Org, settings: Settings, stack: Any):
    """The statement a deferred record travels with (a step's checkpoint) fails, or the write is
    cancelled mid-way: the record is rolled back with it, stays deferred, and the next write
    stores it, once."""
    _, session = _agent_session_priced(org)
    run: dict[str, str] = {}

    async def go() -> list[str]:
        pool = await open_pool(settings.database)
        redis = open_redis(settings.redis)
        seen = []
        try:
            run["id"] = await _unsent_run(pool, org, session)
            emitter, meter = _emitter_and_meter(pool, redis, org, session, run["id"], settings)
            await emitter.emit("step.started", {"node": "act", "agent_id": "agt_x"})
            await meter.sandbox("tc_1", "agt_x", 40)
            with pytest.raises(psycopg.errors.DivisionByZero):
                await emitter.flush_along(("SELECT 1 / 0", {}))
            seen.append(f"failed: {len(emitter._pending)} event, {sorted(emitter._deferred)}")
            seen.append(f"stored: {len(_records(stack, [run['id']]))}")

            write = asyncio.create_task(emitter.flush_along(("SELECT pg_sleep(0.5)", {})))
            await asyncio.sleep(0.2)  # sent, and waiting for its answer
            write.cancel()
            with pytest.raises(asyncio.CancelledError):
                await write
            seen.append(f"cancelled: {len(emitter._pending)} event, {sorted(emitter._deferred)}")

            await meter.sandbox("tc_1", "agt_x", 40)  # the step again: the same key
            await emitter.flush()
            seen.append(f"flushed: {len(emitter._pending)} event, {sorted(emitter._deferred)}")
            await emitter.close()
        finally:
            await redis.aclose()
            await pool.close()
        return seen

    assert asyncio.run(go()) == ["failed: 1 event, ['usage:sandbox:tc_1']", "stored: 0",
                                 "cancelled: 1 event, ['usage:sandbox:tc_1']", "flushed: 0 event, []"]
    records = [r for r in _records(stack, [run["id"]]) if r["kind"] == "sandbox"]
    assert [(r["call_key"], r["cpu_ms"]) for r in records] == [("sandbox:tc_1", 40)]
    got = org.client.get(f"/v1/runs/{run['id']}", headers=org.headers).json()["usage"]
    assert got["sandbox_executions"] == 1 and got["sandbox_cpu_ms"] == 40
    with _db(stack) as conn:
        steps = conn.execute("SELECT count(*) AS n FROM run_events WHERE run_id = %s AND type = 'step.started'",
                             (run["id"],)).fetchone()
    assert steps is not None and steps["n"] == 1


def test_a_deferred_record_no_write_follows_is_stored_by_the_window_or_the_ending(
        org: Org, settings: Settings, stack: Any):
    _, session = _agent_session_priced(org)
    run: dict[str, str] = {}

    async def go() -> tuple[int, int]:
        pool = await open_pool(settings.database)
        redis = open_redis(settings.redis)
        try:
            run["id"] = await _unsent_run(pool, org, session)
            emitter = RunEmitter(pool, redis, org.id, session, run["id"], maxlen=1000, ttl_s=60, window_s=0.05)
            meter = Meter(emitter, UsageSettings(), effective_limits(settings.limits, None), usage.Month(0, Decimal(0)))
            await meter.sandbox("tc_1", "agt_x", 10)
            await asyncio.sleep(0.5)  # the window's timer writes it (no event pending)
            by_window = len(_records(stack, [run["id"]]))
            await meter.sandbox("tc_2", "agt_x", 20)
            async with emitter.ending() as buffered:  # a run ending before any write took it
                assert buffered == []
                by_ending = len(_records(stack, [run["id"]]))
            await emitter.close()
            return by_window, by_ending
        finally:
            await redis.aclose()
            await pool.close()

    assert asyncio.run(go()) == (1, 2)


def test_a_usage_record_is_not_kept_when_its_events_cannot_be_stored(org: Org, settings: Settings, stack: Any):
    """The record and the events pending go in one transaction (sent as one batch): when the
    events' session is gone, the record is rolled back with them and the events stay buffered."""
    session = org.create_session(str(org.create_agent()["id"]))
    run = start_run(org, str(session["id"]), "hello")

    async def record() -> tuple[BaseException | None, int]:
        pool = await open_pool(settings.database)
        redis = open_redis(settings.redis)
        try:
            emitter = RunEmitter(pool, redis, org.id, "ses_gone", run["id"], maxlen=1000, ttl_s=60, window_s=60.0)
            meter = Meter(emitter, UsageSettings(), effective_limits(settings.limits, None), usage.Month(0, Decimal(0)))
            await emitter.emit("step.started", {"node": "act", "agent_id": "agt_x"})
            await meter.sandbox("tc_1", "agt_x", 120)  # deferred (no monthly budget): stored with the events
            try:
                await emitter.flush()
            except SessionGone as exc:
                return exc, len(emitter._pending) + len(emitter._deferred)
            return None, len(emitter._pending) + len(emitter._deferred)
        finally:
            await redis.aclose()
            await pool.close()

    raised, still_pending = asyncio.run(record())
    assert isinstance(raised, SessionGone) and still_pending == 2  # the event and the record
    assert [r for r in _records(stack, [run["id"]]) if r["kind"] == "sandbox"] == []


def test_a_new_run_shows_zero_usage_and_the_usage_api_checks_its_query(client: TestClient, org: Org):
    session = org.create_session(str(org.create_agent()["id"]))
    run = start_run(org, str(session["id"]), "hello")
    assert run["usage"] == {"input_tokens": 0, "output_tokens": 0, "cached_tokens": 0, "total_tokens": 0,
                            "cost_usd": 0.0, "model_calls": 0, "sandbox_executions": 0, "sandbox_cpu_ms": 0}
    error_of(client.get("/v1/usage?group_by=week", headers=org.headers), 422, "VALIDATION_FAILED")
    error_of(client.get("/v1/usage?from=2026-13-01", headers=org.headers), 422, "VALIDATION_FAILED")
    error_of(client.get("/v1/usage?from=2026-12-02&to=2026-12-01", headers=org.headers), 422, "VALIDATION_FAILED")
    member = {"Authorization": f"Bearer {org.key_with_role('member')}"}
    error_of(client.get("/v1/usage", headers=member), 403, "FORBIDDEN")
    empty = client.get("/v1/usage?from=2020-01-01&to=2020-01-31", headers=org.headers).json()
    assert empty["data"] == [] and empty["totals"]["model_calls"] == 0 and empty["budgets"] == []
