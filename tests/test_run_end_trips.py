"""How a run ends in the worker (docs/runs.md, "How a run ends"): the events still buffered, the
answer, the terminal state and its events and webhook deliveries in ONE transaction of two
Postgres round trips, then one Redis round trip (free the admission place, publish, drop the
run's keys). The counts are pinned here (deterministic: psycopg's and redis-py's calls are
counted, never timed), and so is what the end must still guarantee: a run no longer ours keeps
nothing of the ending, buffered events in order before the terminal event, gap-free seqs,
a retry after Postgres went away that stores everything once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
import pytest
import redis.asyncio as aioredis
from psycopg.pq import TransactionStatus

from agentos.stack.local import StackUrls
from core import events
from core.events import RunEmitter
from core.settings import Settings
from core.store import runs
from core.tenancy import checkpoint_thread_id, tenant_pipeline_tx, tenant_tx
from runtime import executor
from runtime.executor import Outcome, execute_run
from runtime.services import Services
from tests.helpers import Org


@dataclass
class Trips:
    """Round trips made while `on`: Postgres (a statement waited for outside pipeline mode, a
    pipeline's sync or end, BEGIN/COMMIT of a transaction) and Redis (a command or a pipeline)."""

    on: bool = False
    postgres: int = 0
    redis: int = 0
    pipelines: list[list[str]] = field(default_factory=list)  # each Redis pipeline's commands


# psycopg's generators (psycopg 3.3) that cost a round trip each: outside pipeline mode a statement
# or a transaction's BEGIN/COMMIT; in pipeline mode a read of results (`_fetch_gen`), a sync, the end.
_ROUND_TRIP = {False: {"_execute_gen", "_enter_gen", "_exit_gen"}, True: {"_fetch_gen", "_sync_gen", "_exit_gen"}}


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> Iterator[Trips]:
    counted = Trips()
    wait = psycopg.AsyncConnection.wait

    async def counting_wait(self: psycopg.AsyncConnection[Any], gen: Any, *args: Any, **kwargs: Any) -> Any:
        if counted.on:
            name = getattr(getattr(gen, "gi_code", None), "co_name", "")
            busy = self.pgconn.transaction_status != TransactionStatus.IDLE
            if name in _ROUND_TRIP[self._pipeline is not None] or (name in ("_commit_gen", "_rollback_gen") and busy):
                counted.postgres += 1
        return await wait(self, gen, *args, **kwargs)

    command: Any = aioredis.Redis.execute_command
    pipeline: Any = aioredis.client.Pipeline.execute

    async def counting_command(self: aioredis.Redis, *args: Any, **kwargs: Any) -> Any:
        counted.redis += counted.on
        return await command(self, *args, **kwargs)

    async def counting_pipeline(self: Any, *args: Any, **kwargs: Any) -> Any:
        if counted.on:
            counted.redis += 1
            counted.pipelines.append([str(c[0][0]) for c in self.command_stack])
        return await pipeline(self, *args, **kwargs)

    complete = executor._complete

    async def counted_complete(*args: Any, **kwargs: Any) -> str:
        counted.on = True
        try:
            return await complete(*args, **kwargs)
        finally:
            counted.on = False

    monkeypatch.setattr(psycopg.AsyncConnection, "wait", counting_wait)
    monkeypatch.setattr(aioredis.Redis, "execute_command", counting_command)
    monkeypatch.setattr(aioredis.client.Pipeline, "execute", counting_pipeline)
    monkeypatch.setattr(executor, "_complete", counted_complete)
    yield counted


@pytest.fixture
def long_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """The emitter's batching window longer than any run here: what the last step emitted is
    still buffered when the run ends (as it is whenever the end comes within the window)."""
    assert RunEmitter.__init__.__kwdefaults__ is not None
    monkeypatch.setitem(RunEmitter.__init__.__kwdefaults__, "window_s", 60.0)


async def _claimed_with_a_buffered_event(
    svc: Services, org: Org, session: dict[str, Any]
) -> tuple[str, runs.ClaimedRun, RunEmitter]:
    """A run claimed by "me", its respond step's `step.started` still buffered in its emitter."""
    run_id = await _queued(svc, org, session)
    async with tenant_tx(svc.pool, org.id) as conn:
        claimed = await runs.claim(conn, run_id, "me", 60, 60)
    assert isinstance(claimed, runs.Claimed)
    emitter = RunEmitter(svc.pool, svc.redis, org.id, str(session["id"]), run_id, maxlen=100, ttl_s=60,
                         window_s=60.0)
    await emitter.emit(events.STEP_STARTED, {"node": "respond", "agent_id": claimed.run["agent_id"]})
    return run_id, claimed.run, emitter


SUCCEEDED = Outcome(runs.RunStatus.SUCCEEDED, output={"text": "hi"}, answer="hi")


async def _complete_with_a_buffered_event(settings: Settings, org: Org, session: dict[str, Any]) -> tuple[str, str]:
    """`_claimed_with_a_buffered_event`, ended `succeeded` through `_complete` (with its
    retries): (run id, what `_complete` said)."""
    svc = await Services.open(settings)
    try:
        run_id, run, emitter = await _claimed_with_a_buffered_event(svc, org, session)
        return run_id, await executor._complete(svc, run, emitter, "me", SUCCEEDED)
    finally:
        await svc.close()


async def _queued(svc: Services, org: Org, session: dict[str, Any], text: str = "hello") -> str:
    async with tenant_tx(svc.pool, org.id) as conn:  # `create` holds the session row itself
        created = await runs.create(conn, session_id=str(session["id"]), text=text, multitask="enqueue",
                                    metadata={}, idempotency_key=None, request_hash="-", created_by=None)
    return created.run["id"]


def _events(stack: StackUrls, run_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(stack.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT seq, type, data, ts FROM run_events WHERE run_id = %s ORDER BY seq", (run_id,))
        return [dict(zip(("seq", "type", "data", "ts"), row, strict=True)) for row in cur.fetchall()]


def _answers(stack: StackUrls, run_id: str) -> list[str]:
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute("SELECT id FROM messages WHERE run_id = %s AND role = 'assistant'", (run_id,)).fetchall()
        return [str(r[0]) for r in rows]


def test_a_run_ends_in_two_postgres_round_trips_and_one_to_redis_with_its_last_events(
    settings: Settings, stack: StackUrls, org: Org, trips: Trips, long_window: None
) -> None:
    """Regression (issue 18): ending a run took a flush transaction of its own for the last
    step's events (4 round trips), a finishing transaction of 8 and 3 Redis round trips."""
    session = org.create_session(str(org.create_agent()["id"]))

    async def go() -> tuple[str, executor.Delivery]:
        svc = await Services.open(settings)
        try:
            run_id = await _queued(svc, org, session)
            return run_id, await execute_run(svc, run_id, org.id)
        finally:
            await svc.close()

    run_id, delivery = asyncio.run(go())
    assert delivery.outcome == "succeeded"
    assert (trips.postgres, trips.redis) == (2, 1)
    # Redis runs a pipeline in order: the admission place is free before the terminal event is out.
    [commands] = trips.pipelines
    assert commands[0] == "ZREM" and commands[1:-2] == ["XADD"] * 3 and commands[-2:] == ["EXPIRE", "DEL"]
    stored = _events(stack, run_id)
    seqs = [e["seq"] for e in stored]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))  # gap-free, in order
    *_, respond, completed, terminal = stored
    assert (respond["type"], respond["data"]["node"]) == (events.STEP_STARTED, "respond")
    assert (completed["type"], terminal["type"]) == (events.MESSAGE_COMPLETED, events.RUN_SUCCEEDED)
    # The last step's event was stored by the ending's own statement, not by a flush before it.
    assert respond["ts"] == terminal["ts"]
    assert [e["type"] for e in stored].count(events.RUN_SUCCEEDED) == 1
    assert _answers(stack, run_id) == [completed["data"]["message"]["id"]]
    assert terminal["data"]["output"]["message_id"] == completed["data"]["message"]["id"]
    # The graph's last checkpoint (RESPOND's) was stored by the same transaction, in the same
    # round trips: a run never ends without it, nor is it stored for a run that did not end.
    assert _last_checkpoint(stack, org.id, str(session["id"]))["tx"] == _run_tx(stack, run_id)


def _last_checkpoint(stack: StackUrls, org_id: str, session_id: str) -> dict[str, Any]:
    with psycopg.connect(stack.database_url) as conn, conn.cursor() as cur:
        cur.execute("SELECT xmin::text, checkpoint FROM checkpoints WHERE thread_id = %s AND checkpoint_ns = '' "
                    "ORDER BY checkpoint_id DESC LIMIT 1", (checkpoint_thread_id(org_id, session_id),))
        row = cur.fetchone()
    assert row is not None
    return {"tx": row[0], "checkpoint": row[1]}


def _run_tx(stack: StackUrls, run_id: str) -> str:
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT xmin::text FROM runs WHERE id = %s", (run_id,)).fetchone()
    assert row is not None
    return str(row[0])


def test_a_run_whose_end_failed_leaves_its_last_step_to_be_run_again(
    settings: Settings, stack: StackUrls, org: Org, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last checkpoint goes with the run's end: when ending fails (a bug here), the run ends
    `failed` without it, the thread stays at the step before, and the session's next run answers
    its own message, once."""
    session = org.create_session(str(org.create_agent()["id"]))
    finish = runs.finish
    calls = []

    async def failing_once(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug while ending")
        return await finish(*args, **kwargs)

    monkeypatch.setattr(runs, "finish", failing_once)

    async def one(text: str) -> tuple[str, executor.Delivery]:
        svc = await Services.open(settings)
        try:
            run_id = await _queued(svc, org, session, text)
            return run_id, await execute_run(svc, run_id, org.id)
        finally:
            await svc.close()

    first, failed = asyncio.run(one("hello"))
    assert failed.outcome == "failed: internal error"
    values = _last_checkpoint(stack, org.id, str(session["id"]))["checkpoint"]["channel_values"]
    assert values.get("answered") != f"input-{first}"  # THINK's checkpoint: RESPOND's went with the end
    second, succeeded = asyncio.run(one("and again"))
    assert succeeded.outcome == "succeeded"
    stored = _events(stack, second)
    assert [e["data"]["node"] for e in stored if e["type"] == events.STEP_STARTED] == ["think", "respond"]
    [answer] = [e for e in stored if e["type"] == events.MESSAGE_COMPLETED]
    assert "and again" in answer["data"]["message"]["content"]
    last = _last_checkpoint(stack, org.id, str(session["id"]))
    assert last["tx"] == _run_tx(stack, second)
    assert not _answers(stack, first)


@pytest.mark.parametrize("unsure", [False, True])
def test_a_run_whose_lease_was_lost_keeps_nothing_of_the_ending(
    settings: Settings, stack: StackUrls, org: Org, unsure: bool
) -> None:
    """The finishing transaction rolls back whole (answer, state, events). The events still
    buffered are then stored on their own, as before the ending stored them with it; unless an
    earlier try of the ending failed for lack of Postgres (perhaps after its commit): then they
    are dropped rather than risk storing them twice, after the run's terminal event."""
    session = org.create_session(str(org.create_agent()["id"]))

    async def go() -> tuple[str, str]:
        svc = await Services.open(settings)
        try:
            run_id, run, emitter = await _claimed_with_a_buffered_event(svc, org, session)
            async with tenant_tx(svc.pool, org.id) as conn:  # another worker took the run over
                await conn.execute("UPDATE runs SET lease_owner = 'another' WHERE id = %s", (run_id,))
            said = await executor._record_end(svc, run, emitter, "me", SUCCEEDED,
                                              executor.EndTries(commit_unknown=unsure))
            return run_id, said
        finally:
            await svc.close()

    run_id, said = asyncio.run(go())
    assert said == "lease lost before finishing: another worker owns the run"
    assert _answers(stack, run_id) == []
    kinds = [(e["type"], e["data"].get("node")) for e in _events(stack, run_id)]
    assert kinds == [(events.RUN_QUEUED, None), (events.RUN_STARTED, None)] + \
        ([] if unsure else [(events.STEP_STARTED, "respond")])
    with psycopg.connect(stack.database_url) as conn:
        status, owner = conn.execute("SELECT status, lease_owner FROM runs WHERE id = %s", (run_id,)).fetchone() or ()
    assert (status, owner) == ("running", "another")


def test_an_ending_cut_off_by_postgres_is_retried_and_stores_everything_once(
    settings: Settings, stack: StackUrls, org: Org, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The buffered events go back to the emitter when the finishing transaction fails, and the
    retry stores them with the rest, once, in order."""
    session = org.create_session(str(org.create_agent()["id"]))
    finish = runs.finish
    failures: list[str] = []

    async def failing_once(*args: Any, **kwargs: Any) -> runs.Finished | None:
        done = await finish(*args, **kwargs)  # sent and read: the rollback undoes it
        if not failures:
            failures.append("cut off")
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        return done

    monkeypatch.setattr(runs, "finish", failing_once)
    monkeypatch.setattr(executor, "infra_backoff", lambda failures: 0.0)

    run_id, said = asyncio.run(_complete_with_a_buffered_event(settings, org, session))
    assert said == "succeeded" and failures == ["cut off"]
    stored = _events(stack, run_id)
    assert [e["type"] for e in stored] == [events.RUN_QUEUED, events.RUN_STARTED, events.STEP_STARTED,
                                           events.MESSAGE_COMPLETED, events.RUN_SUCCEEDED]
    seqs = [e["seq"] for e in stored]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert len(_answers(stack, run_id)) == 1


def test_an_ending_whose_commit_answer_was_lost_stores_nothing_twice(
    settings: Settings, stack: StackUrls, org: Org, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The commit went through but its answer was lost (the connection dropped): the retry finds
    the run no longer running, and the buffered events, stored by that commit, are not stored
    again after the terminal event."""
    session = org.create_session(str(org.create_agent()["id"]))
    real = tenant_pipeline_tx
    lost: list[str] = []

    @asynccontextmanager
    async def answer_lost(pool: Any, org_id: str) -> AsyncIterator[Any]:
        async with real(pool, org_id) as conn:
            yield conn
        if not lost:
            lost.append("commit answer")
            raise psycopg.OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(executor, "tenant_pipeline_tx", answer_lost)
    monkeypatch.setattr(executor, "infra_backoff", lambda failures: 0.0)

    run_id, said = asyncio.run(_complete_with_a_buffered_event(settings, org, session))
    assert lost == ["commit answer"] and said == "lease lost before finishing: another worker owns the run"
    assert [e["type"] for e in _events(stack, run_id)] == [
        events.RUN_QUEUED, events.RUN_STARTED, events.STEP_STARTED, events.MESSAGE_COMPLETED, events.RUN_SUCCEEDED]
    assert len(_answers(stack, run_id)) == 1


def test_a_terminal_event_gets_its_webhook_deliveries_under_the_ids_and_payloads_of_before(
    settings: Settings, stack: StackUrls, org: Org
) -> None:
    """The ending stores the deliveries with its events under ids made in Python: the ids
    `ENQUEUE_SQL` makes (a redelivered event keeps its webhook-id), the event's own payload, and
    none for a webhook that does not take the event's type."""
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("UPDATE orgs SET settings = settings || %s::jsonb WHERE id = %s",
                     (json.dumps({"outbound_allow": ["127.0.0.1"]}), org.id))
    hooks = []
    for kinds in (["run.failed"], ["run.failed", "run.succeeded"], ["run.succeeded"]):
        r = org.client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook", "events": kinds},
                            headers=org.headers)
        assert r.status_code == 201, r.text
        hooks.append(str(r.json()["id"]))
    session = org.create_session(str(org.create_agent()["id"]))

    async def go() -> runs.Finished:
        svc = await Services.open(settings)
        try:
            run_id = await _queued(svc, org, session)
            async with tenant_tx(svc.pool, org.id) as conn:
                done = await runs.finish(conn, run_id, str(session["id"]), runs.RunStatus.FAILED, owner=None,
                                         from_status=(runs.RunStatus.QUEUED,),
                                         error={"code": "X", "message": "ünïcode \u2028"},
                                         earlier_events=[(run_id, events.STEP_STARTED, {"node": "think"})])
            assert done is not None
            return done
        finally:
            await svc.close()

    done = asyncio.run(go())
    step, terminal = done.events
    assert terminal.seq == step.seq + 1 and terminal.type == events.RUN_FAILED
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute(
            "SELECT d.id, d.webhook_id, d.seq, d.payload, 'whd_' || left(encode(sha256(convert_to("
            "d.webhook_id || ':' || d.session_id || ':' || d.seq, 'UTF8')), 'hex'), 28) FROM webhook_deliveries d "
            "WHERE d.run_id = %s ORDER BY d.webhook_id", (terminal.run_id,)).fetchall()
        stored = conn.execute("SELECT seq, type FROM run_events WHERE run_id = %s ORDER BY seq",
                              (terminal.run_id,)).fetchall()
    assert sorted(done.deliveries) == sorted(r[0] for r in rows)
    assert sorted(r[1] for r in rows) == sorted(hooks[:2])
    for delivery_id, _, seq, payload, by_sql in rows:
        assert delivery_id == by_sql and seq == terminal.seq
        assert payload == orjson.loads(terminal.webhook_payload())
    assert [tuple(r) for r in stored][-2:] == [(step.seq, events.STEP_STARTED), (terminal.seq, events.RUN_FAILED)]


def test_a_flush_ends_the_batching_window_so_a_later_event_opens_its_own(settings: Settings, org: Org) -> None:
    """Regression (issue 18): after a flush (a model call's), the timer of the window it wrote
    kept running and wrote the next event early, in a transaction of its own: the respond step's
    `step.started` just before the run's end, which now takes it into its own transaction."""
    session = org.create_session(str(org.create_agent()["id"]))

    async def go() -> None:
        svc = await Services.open(settings)
        try:
            run_id = await _queued(svc, org, session)
            emitter = RunEmitter(svc.pool, svc.redis, org.id, str(session["id"]), run_id, maxlen=100, ttl_s=60,
                                 window_s=60.0)
            await emitter.emit(events.STEP_STARTED, {"node": "think"})
            opened = emitter._timer
            assert opened is not None
            await emitter.flush()
            await asyncio.sleep(0)
            assert opened.cancelled()
            await emitter.emit(events.STEP_STARTED, {"node": "respond"})
            assert emitter._timer is not None and emitter._timer is not opened
            async with emitter.ending() as buffered:
                assert [data["node"] for _, _, data in buffered] == ["respond"]
        finally:
            await svc.close()

    asyncio.run(go())
