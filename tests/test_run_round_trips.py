"""Round trips from a run's delivery to its first model call, pinned (issue #18): counted on the
wire (bench.wire_turns.TurnCounter between the worker and Postgres/Redis), so the figures do not
depend on the machine's load. The claim is one batched transaction; the first THINK's memory
reads are one Redis pipeline, one batched transaction and one Redis transaction.

What would add turns of its own while a run executes is held still: the cancel poll and the
heartbeat (a minute apart), the event buffer's timer (a minute: the events go with the model
call's usage), the pool's ping of idle connections and its growth (its connections are all opened
up front: one opened while a run executes adds its handshake wherever it lands); the checkpointer
(not counted here) reaches Postgres directly."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pytest

import core.db
import orchestrator.nodes as nodes
import runtime.executor as executor
from bench.wire_turns import TurnCounter, around, via
from core.events import Event, RunEmitter
from core.metering import Meter
from core.settings import Settings
from core.store import runs
from core.tenancy import session_stream_key, tenant_tx
from runtime.services import Services
from tests.helpers import Org

# (Postgres, Redis) turns of each stretch of a run of an offline agent with memory on.
CLAIM = (1, 0)  # the claim's batch (run.started is published in the background, as the graph starts)
STARTED = (0, 1)  # that publish: done by the first model call, whichever stretch it fell in
# Redis reads; the window's runs and the recall's search. THINK's Redis write (the kept recall and
# window) goes behind the model call (`memory_context._keep_behind`): counted in RUN only.
MEMORY = (1, 1)
# The model call's usage record: none. An org without a monthly budget does not wait for it; it
# goes with THINK's checkpoint and the events pending (core.metering). Was 6, then 1 (BEGIN, the
# org, the events and the record sent together with the COMMIT).
RECORD_PG = 0
# A whole hello run, from its delivery to its end: the claim, the memory's batch, THINK's
# checkpoint with the record and the events (the emitter stores the thread's checkpoints: counted
# here, unlike the checkpointer's own pool), the ending's two; run.started, the memory's two, the
# model call's events, the ending's pipeline.
RUN = (5, 5)


def _hook(monkeypatch: pytest.MonkeyPatch, owner: Any, name: str, before: Callable[[], None],
          after: Callable[[], None] | None = None) -> None:
    monkeypatch.setattr(owner, name, around(getattr(owner, name), before, after))


async def _stored_run(svc: Services, org_id: str, agent_id: str, session_id: str) -> str:
    """A queued run as the API stores it, never sent to the workers."""
    async with tenant_tx(svc.pool, org_id) as conn:
        created = await runs.create(conn, session_id=session_id, text="hello", multitask="enqueue",
                                    metadata={}, idempotency_key=None, request_hash="-", created_by=None)
    return created.run["id"]


def test_a_run_reaches_its_model_call_in_few_round_trips(
        org: Org, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    agent = org.create_agent(model="offline:default")
    sessions = [str(org.create_session(str(agent["id"]), user_id="end-user-1")["id"]) for _ in range(2)]
    monkeypatch.setattr(RunEmitter.__init__, "__kwdefaults__", {"window_s": 60.0})
    monkeypatch.setattr(core.db, "IDLE_BEFORE_CHECK_S", 3600.0)
    worker = settings.worker.model_copy(update={"cancel_poll_s": 60.0, "heartbeat_s": 60.0, "lease_s": 120.0})
    marks: dict[str, tuple[int, int]] = {}

    with TurnCounter(urlsplit(settings.database.url).port or 0) as pg, \
            TurnCounter(urlsplit(settings.redis.url).port or 0) as rd:
        def mark(name: str) -> Callable[[], None]:
            def note() -> None:  # the first time only: a later call (a retry) keeps the first counts
                marks.setdefault(name, (pg.snapshot()[0], rd.snapshot()[0]))
            return note

        _hook(monkeypatch, executor, "_deliver", mark("delivery"))
        _hook(monkeypatch, executor, "_execute", mark("executing"))
        _hook(monkeypatch, nodes, "_think_with", mark("model call"))
        _hook(monkeypatch, Meter, "model_call", mark("recording"), mark("recorded"))
        counted = settings.model_copy(update={
            "database": settings.database.model_copy(update={"url": via(settings.database.url, pg.port),
                                                             "pool_min": 4}),
            "redis": settings.redis.model_copy(update={"url": via(settings.redis.url, rd.port)}),
            "worker": worker})

        async def go() -> list[dict[str, tuple[int, int]]]:
            plain = await Services.open(settings.model_copy(update={"worker": worker}))
            opened = await Services.open(counted)
            # The checkpointer's own pool (and so the graph) goes around the counters.
            svc = dataclasses.replace(opened, checkpoint_pool=plain.checkpoint_pool, graph=plain.graph,
                                      checkpointer=plain.checkpointer)
            seen = []
            # Connections enough for the publish running beside the memory reads (a handshake
            # would add turns of its own).
            await asyncio.gather(*(opened.redis.ping() for _ in range(3)))
            try:
                # A warm-up run in another session (the org's embedding model, its size, the
                # pools), then a session's first run (no cached window) and its second.
                for session_id in [sessions[1], sessions[0], sessions[0]]:
                    run_id = await _stored_run(plain, org.id, str(agent["id"]), session_id)
                    marks.clear()
                    delivery = await executor.execute_run(svc, run_id, org.id)
                    assert delivery.outcome == "succeeded", delivery
                    mark("ended")()
                    seen.append(dict(marks))
            finally:
                await opened.close()
                await plain.close()
            return seen

        runs = asyncio.run(go())[1:]

    def turns(m: dict[str, tuple[int, int]], start: str, end: str) -> tuple[int, int]:
        return m[end][0] - m[start][0], m[end][1] - m[start][1]

    for m in runs:
        assert turns(m, "delivery", "executing") == CLAIM
        # The memory reads start with the graph (`memory_context.prefetch`) and run beside its
        # checkpoint read, as run.started's publish does: where their turns fall varies.
        assert turns(m, "delivery", "model call") == tuple(map(sum, zip(CLAIM, STARTED, MEMORY, strict=True)))
        assert turns(m, "recording", "recorded")[0] == RECORD_PG  # its publish goes on in the background
        assert turns(m, "delivery", "ended") == RUN


def test_a_batch_of_events_is_stored_in_one_round_trip(
        org: Org, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The emitter's window (or `flush()`) stores its events with BEGIN, the org and COMMIT in one
    batch (was four turns: BEGIN, the org, the events, COMMIT), then publishes them in one."""
    agent = org.create_agent(model="offline:default")
    session_id = str(org.create_session(str(agent["id"]))["id"])
    monkeypatch.setattr(core.db, "IDLE_BEFORE_CHECK_S", 3600.0)

    with TurnCounter(urlsplit(settings.database.url).port or 0) as pg, \
            TurnCounter(urlsplit(settings.redis.url).port or 0) as rd:
        counted = settings.model_copy(update={
            "database": settings.database.model_copy(update={"url": via(settings.database.url, pg.port)}),
            "redis": settings.redis.model_copy(update={"url": via(settings.redis.url, rd.port)})})

        async def go() -> tuple[tuple[int, int], list[int]]:
            svc = await Services.open(counted)
            try:
                run_id = await _stored_run(svc, org.id, str(agent["id"]), session_id)
                for pool in (svc.pool, svc.checkpoint_pool):  # opening connections is not counted
                    await pool.wait()
                await svc.redis.ping()  # nor Redis's connection handshake
                emitter = RunEmitter(svc.pool, svc.redis, org.id, session_id, run_id, maxlen=1000, ttl_s=60,
                                     window_s=60.0)
                await emitter.emit("step.started", {"step": "think", "agent_id": "a"})
                await emitter.delta("hel", "a")
                await emitter.delta("lo", "a")
                before = pg.snapshot()[0], rd.snapshot()[0]
                await emitter.flush()
                await emitter.published()  # in the background once stored
                after = pg.snapshot()[0], rd.snapshot()[0]
                async with tenant_tx(svc.pool, org.id) as conn:
                    rows = await (await conn.execute(
                        "SELECT seq FROM run_events WHERE run_id = %s ORDER BY seq", (run_id,))).fetchall()
                return (after[0] - before[0], after[1] - before[1]), [int(r["seq"]) for r in rows]
            finally:
                await svc.close()

        turned, seqs = asyncio.run(go())

    assert turned == (1, 1)
    # run.queued, then the two events (the deltas merged), gap-free
    assert seqs == [seqs[0], seqs[0] + 1, seqs[0] + 2]


class _CountingExecutor(ThreadPoolExecutor):
    """The loop's default executor, noting what is handed to its threads."""

    def __init__(self) -> None:
        super().__init__(max_workers=2)
        self.handed: list[str] = []

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        target = args[0] if args and callable(args[0]) else fn  # a context's run(fn, ...)
        self.handed.append(getattr(target, "__qualname__", repr(target)))
        return super().submit(fn, *args, **kwargs)


def test_a_run_hands_nothing_to_threads(org: Org, settings: Settings) -> None:
    """A hello run's steps stay on the event loop: the graph's routers are coroutines (LangGraph
    runs a plain function in the loop's executor) and the checkpointer serialises on the loop (the
    library's saver hands each step's values to a thread). Each hand-over to a thread and back
    was a wake-up on each side and a fight for the GIL."""
    agent = org.create_agent(model="offline:default")
    session_id = str(org.create_session(str(agent["id"]))["id"])

    async def go() -> list[str]:
        svc = await Services.open(settings)
        counting = _CountingExecutor()
        try:
            # A first run opens the pools' connections (their address lookups use the executor).
            await executor.execute_run(svc, await _stored_run(svc, org.id, str(agent["id"]), session_id), org.id)
            run_id = await _stored_run(svc, org.id, str(agent["id"]), session_id)
            asyncio.get_running_loop().set_default_executor(counting)
            delivery = await executor.execute_run(svc, run_id, org.id)
            assert delivery.outcome == "succeeded", delivery
            return counting.handed
        finally:
            await svc.close()

    assert asyncio.run(go()) == []


def test_a_publish_in_the_background_stays_in_order(org: Org, settings: Settings) -> None:
    """`publish_soon` (a run's `run.started`, while its graph starts) and the publishes after it
    reach the stream in seq order: the later ones wait for it, and so does a run's ending."""
    agent = org.create_agent(model="offline:default")
    session_id = str(org.create_session(str(agent["id"]))["id"])

    async def go() -> list[int]:
        svc = await Services.open(settings)
        try:
            run_id = await _stored_run(svc, org.id, str(agent["id"]), session_id)
            emitter = RunEmitter(svc.pool, svc.redis, org.id, session_id, run_id, maxlen=1000, ttl_s=60)
            start = datetime.now(UTC)
            made = [Event(seq=seq, type="step.started", run_id=run_id, session_id=session_id, ts=start,
                          data={"node": "think", "agent_id": "a"}) for seq in (101, 102, 103)]
            emitter.publish_soon(made[:1])
            emitter.publish_soon(made[1:2])
            emitter.publish_soon(made[2:])  # no await between: each must wait for the one before
            async with emitter.ending():  # the run's ending publishes after all of them
                entries = await svc.redis.xrange(session_stream_key(org.id, session_id), "101-0", "+")
            ids = [e.decode() if isinstance(e, bytes) else str(e) for e, _ in entries or []]
            return [int(entry_id.split("-")[0]) for entry_id in ids]
        finally:
            await svc.close()

    assert asyncio.run(go()) == [101, 102, 103]
