"""The event protocol of a run, and the one place events are written (but for a run's
`run.queued`, which `core.store.runs.CREATE_RUN_SQL` stores in the statement that makes the run,
by the same rule; no webhook subscribes to it).

Every event belongs to a session and gets that session's next sequence number (`seq`) in the
same Postgres transaction that stores it (`append`), taken while holding the session row, so
seqs increase with no gaps and no repeats. After the transaction commits the events are
published to the session's Redis Stream with the entry id `<seq>-0` (`publish`), which wakes
live readers. Postgres is the record; the stream is a bounded, best-effort cache of its tail,
so whoever reads (`core.event_reader`) fills any hole in the stream from Postgres.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property
from typing import Any

import orjson
import redis.asyncio as aioredis
from psycopg import AsyncConnection
from psycopg.errors import NoDataFound
from psycopg.rows import DictRow
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError, ResponseError

from core.storable import storable
from core.store import webhooks
from core.tenancy import AsyncPool, Statement, session_stream_key, tenant_batch, tenant_pipeline_tx

log = logging.getLogger("agentos.events")

RUN_QUEUED = "run.queued"
RUN_STARTED = "run.started"
STEP_STARTED = "step.started"
MESSAGE_DELTA = "message.delta"
TOOL_CALL = "tool.call"
TOOL_RESULT = "tool.result"
CONFIRMATION_REQUIRED = "confirmation.required"
CONFIRMATION_RESOLVED = "confirmation.resolved"
SUBAGENT_STARTED = "subagent.started"
SUBAGENT_COMPLETED = "subagent.completed"
MESSAGE_COMPLETED = "message.completed"
# What memory THINK gave the model: recalled items (ids, kinds, scores) and the session window.
MEMORY_RECALLED = "memory.recalled"
# Something degraded but the run goes on (e.g. recall failed: `{code, message}`).
RUN_WARNING = "run.warning"
# The org passed the warning share of a monthly budget (`{budget, limit, used, percent, warning,
# exceeded, resets_at}`); emitted once per budget per run (core.metering).
BUDGET_WARNING = "budget.warning"
# A call routed to a runner found it offline: the run waits (paused, no worker held) for it
# (`{tool_call_id, runner_id, runner, timeout_s}`); `runner.online` when it reconnects and the run
# goes on; `runner.delivered` when the runner has answered a call (`{tool_call_id, runner_id}`).
RUNNER_OFFLINE = "runner.offline"
RUNNER_ONLINE = "runner.online"
RUNNER_DELIVERED = "runner.delivered"
RUN_SUCCEEDED = "run.succeeded"
RUN_FAILED = "run.failed"
RUN_CANCELLED = "run.cancelled"
RUN_TIMED_OUT = "run.timed_out"

TERMINAL_TYPES = frozenset({RUN_SUCCEEDED, RUN_FAILED, RUN_CANCELLED, RUN_TIMED_OUT})
# What a webhook may subscribe to: a delivery is stored with the event (`append`).
WEBHOOK_EVENT_TYPES = TERMINAL_TYPES
EVENT_TYPES = frozenset({
    RUN_QUEUED, RUN_STARTED, STEP_STARTED, MESSAGE_DELTA, TOOL_CALL, TOOL_RESULT, CONFIRMATION_REQUIRED,
    CONFIRMATION_RESOLVED, SUBAGENT_STARTED, SUBAGENT_COMPLETED, MESSAGE_COMPLETED, MEMORY_RECALLED, RUN_WARNING,
    BUDGET_WARNING, RUNNER_OFFLINE, RUNNER_ONLINE, RUNNER_DELIVERED, *TERMINAL_TYPES,
})


@dataclass(frozen=True)
class Event:
    seq: int
    type: str
    run_id: str
    session_id: str
    ts: datetime
    data: dict[str, Any]

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_TYPES

    def to_json(self) -> bytes:
        """The SSE `data:` payload (docs/api.md, "Wire format")."""
        return self.wire

    @cached_property
    def wire(self) -> bytes:
        """`to_json`, encoded once per event: an event read from the stream keeps the bytes it was
        published as, so a thousand followers of a session do not encode it a thousand times."""
        return orjson.dumps({
            "seq": self.seq, "type": self.type, "run_id": self.run_id, "session_id": self.session_id,
            "ts": self.ts.astimezone(UTC).isoformat().replace("+00:00", "Z"), "data": self.data,
        })

    def webhook_payload(self) -> bytes:
        """The body of a webhook delivery (docs/integrations.md): Standard Webhooks' envelope."""
        return orjson.dumps({
            "type": self.type, "timestamp": self.ts.astimezone(UTC).isoformat().replace("+00:00", "Z"),
            "data": {"run_id": self.run_id, "session_id": self.session_id, "seq": self.seq, **self.data},
        })

    @classmethod
    def from_json(cls, raw: bytes | str) -> Event:
        doc = orjson.loads(raw)
        event = cls(
            seq=int(doc["seq"]), type=doc["type"], run_id=doc["run_id"], session_id=doc["session_id"],
            ts=datetime.fromisoformat(doc["ts"]), data=doc["data"],
        )
        # The stream holds exactly what `wire` made of it when it was published (`publish`).
        event.__dict__["wire"] = raw.encode() if isinstance(raw, str) else bytes(raw)
        return event

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> Event:
        return cls(seq=int(row["seq"]), type=row["type"], run_id=row["run_id"], session_id=row["session_id"],
                   ts=row["ts"], data=row["data"])


class SessionGone(Exception):
    """Events were emitted for a session that no longer exists (or is not this org's)."""


# One statement (one round trip) per batch: take the session's next `n` seqs, which locks its row
# until commit, and store the events under them. A data-modifying CTE runs to completion whether
# or not the outer query reads it; an unknown session (or another org's) yields no row at all.
APPEND_EVENTS_SQL = """
WITH s AS (
  UPDATE sessions SET event_seq = event_seq + %(n)s WHERE id = %(session_id)s RETURNING event_seq
), stored AS (
  INSERT INTO run_events (org_id, session_id, seq, run_id, type, data, ts)
  SELECT agentos_current_org(), %(session_id)s, s.event_seq - %(n)s + e.i, e.r, e.t, e.d::jsonb, %(ts)s
  FROM s, unnest(%(runs)s::text[], %(types)s::text[], %(datas)s::text[]) WITH ORDINALITY AS e(r, t, d, i)
)
SELECT event_seq FROM s
"""
# The same, for a batch whose transaction holds another write that must not outlive the events
# (a usage record, `RunEmitter.flush_with`): an unknown session aborts the transaction (the
# migration's `agentos_session_gone`, SQLSTATE P0002) instead of yielding no row.
APPEND_EVENTS_STRICT_SQL = APPEND_EVENTS_SQL.replace(
    "SELECT event_seq FROM s\n", "SELECT coalesce((SELECT event_seq FROM s), agentos_session_gone(%(session_id)s)) "
    "AS event_seq\n")


# A run's `run.started`, in the claim's batch (core.store.runs.claim_batch): stored only if the
# claim just before it in the same transaction made `owner` the run's holder (an owner is made
# for one delivery), with the attempt it counted; otherwise it stores nothing and yields no row.
# The session row is already held by the claim's lock.
STARTED_SQL = f"""
WITH c AS (
  SELECT session_id, attempt FROM runs WHERE id = %(run_id)s AND status = 'running' AND lease_owner = %(owner)s
), s AS (
  UPDATE sessions SET event_seq = event_seq + 1 WHERE id = (SELECT session_id FROM c) RETURNING event_seq
), stored AS (
  INSERT INTO run_events (org_id, session_id, seq, run_id, type, data, ts)
  SELECT agentos_current_org(), c.session_id, s.event_seq, %(run_id)s, '{RUN_STARTED}',
         jsonb_build_object('attempt', c.attempt), %(ts)s
  FROM s, c
)
SELECT s.event_seq, c.attempt, %(ts)s::timestamptz AS ts FROM s, c
"""


def started_statement(run_id: str, owner: str) -> tuple[str, dict[str, Any]]:
    """`STARTED_SQL` with its parameters (stamped now, as `append` stamps its events)."""
    return STARTED_SQL, {"run_id": run_id, "owner": owner, "ts": datetime.now(UTC)}


def started_event(run_id: str, session_id: str, rows: list[DictRow]) -> Event:
    """The `run.started` that `started_statement` stored (its rows)."""
    if not rows:
        raise SessionGone(session_id)
    row = rows[0]
    return Event(seq=int(row["event_seq"]), type=RUN_STARTED, run_id=run_id, session_id=session_id, ts=row["ts"],
                 data={"attempt": int(row["attempt"])})


@dataclass(frozen=True)
class Appended:
    """What `append_with_deliveries` stored: the events, and the webhook deliveries stored with
    them (their ids, for `core.webhooks.announce` after the commit)."""

    events: list[Event]
    deliveries: list[str]


async def append(
    conn: AsyncConnection[DictRow], session_id: str, items: list[tuple[str, str, dict[str, Any]]]
) -> list[Event]:
    """Store events `(run_id, type, data)` in order, inside the caller's tenant transaction.

    Taking the seqs locks the session row until the transaction ends, which is what keeps the
    numbering gap-free when the API and a worker emit for the same session at once.
    """
    return (await append_with_deliveries(conn, session_id, items)).events


async def append_with_deliveries(
    conn: AsyncConnection[DictRow], session_id: str, items: list[tuple[str, str, dict[str, Any]]]
) -> Appended:
    """`append`, also returning the ids of the webhook deliveries the events got (a delivery not
    announced by its caller is still sent by the watchdog once due)."""
    if not items:
        return Appended([], [])
    batch = EventBatch(session_id, items)
    events = batch.stored(await (await conn.execute(*batch.statement())).fetchone())
    deliveries = await webhooks.enqueue(conn, [(e.session_id, e.seq, e.run_id, e.type, e.webhook_payload().decode())
                                               for e in events if e.type in WEBHOOK_EVENT_TYPES])
    return Appended(events, deliveries)


class EventBatch:
    """Events `(run_id, type, data)` to store in order under their session's next seqs: the one
    statement that does it (`APPEND_EVENTS_SQL`), and the events as stored, from its row. Apart,
    so a caller may send the statement and read its row later (in a batch or a pipeline: the
    emitter's writes, one round trip). No webhook deliveries: `append_with_deliveries` adds them."""

    def __init__(self, session_id: str, items: list[tuple[str, str, dict[str, Any]]]) -> None:
        for _, kind, _ in items:
            if kind not in EVENT_TYPES:
                raise ValueError(f"unknown event type {kind!r}")
        self.session_id = session_id
        self.items = items
        self.ts = datetime.now(UTC)
        # Text a model or user produced may hold what Postgres cannot store (core.storable).
        self.datas = [storable(data) for _, _, data in items]

    def statement(self, *, strict: bool = False) -> tuple[str, dict[str, Any]]:
        """`strict`: a session gone aborts the transaction (`APPEND_EVENTS_STRICT_SQL`)."""
        return APPEND_EVENTS_STRICT_SQL if strict else APPEND_EVENTS_SQL, {
            "n": len(self.items), "session_id": self.session_id, "ts": self.ts,
            "runs": [run_id for run_id, _, _ in self.items], "types": [kind for _, kind, _ in self.items],
            "datas": [orjson.dumps(d).decode() for d in self.datas],
        }

    def stored(self, row: DictRow | None) -> list[Event]:
        """The events, numbered from the statement's row; SessionGone when it stored nothing."""
        if row is None:
            raise SessionGone(self.session_id)
        first = int(row["event_seq"]) - len(self.items) + 1
        return [Event(seq=first + i, type=kind, run_id=run_id, session_id=self.session_id, ts=self.ts, data=data)
                for i, ((run_id, kind, _), data) in enumerate(zip(self.items, self.datas, strict=True))]


# Events under seqs the caller took already in this transaction (a run's end takes them with the
# run's update: core.store.runs.FINISH_SQL), and their webhook deliveries: one statement whose
# result nobody reads, so in pipeline mode it travels with the COMMIT. A webhook deleted or
# disabled since the caller read it gets no delivery.
APPEND_NUMBERED_SQL = """
WITH stored AS (
  INSERT INTO run_events (org_id, session_id, seq, run_id, type, data, ts)
  SELECT agentos_current_org(), %(session_id)s, u.seq, u.r, u.t, u.d::jsonb, %(ts)s
  FROM unnest(%(seqs)s::bigint[], %(runs)s::text[], %(types)s::text[], %(datas)s::text[]) AS u(seq, r, t, d)
), delivered AS (
  INSERT INTO webhook_deliveries (id, org_id, webhook_id, event_type, session_id, seq, run_id, payload)
  SELECT d.id, agentos_current_org(), d.w, d.t, %(session_id)s, d.seq, d.r, d.p::jsonb
  FROM unnest(%(delivery_ids)s::text[], %(webhook_ids)s::text[], %(delivery_seqs)s::bigint[],
              %(delivery_runs)s::text[], %(delivery_types)s::text[], %(payloads)s::text[]) AS d(id, w, seq, r, t, p)
  JOIN webhooks w ON w.id = d.w AND w.enabled
  ON CONFLICT (webhook_id, session_id, seq) DO NOTHING
)
SELECT 1
"""


async def append_numbered(
    conn: AsyncConnection[DictRow], session_id: str, first_seq: int, items: list[tuple[str, str, dict[str, Any]]],
    webhooks_by_id: dict[str, list[str]],
) -> Appended:
    """`append_with_deliveries` for events whose seqs (`first_seq` on) the caller took in this
    transaction, raising the session's `event_seq` by `len(items)` (which holds its row until
    commit: the numbering stays gap-free), with deliveries to the org's enabled webhooks the
    caller read in it too (`webhooks_by_id`: id -> the event types it takes). Nothing is read
    back: in pipeline mode (`core.tenancy.tenant_pipeline_tx`) the statement costs no round trip
    of its own, and an error surfaces at the end of the transaction."""
    for _, kind, _ in items:
        if kind not in EVENT_TYPES:
            raise ValueError(f"unknown event type {kind!r}")
    ts = datetime.now(UTC)
    # Text a model or user produced may hold what Postgres cannot store (core.storable).
    events = [Event(seq=first_seq + i, type=kind, run_id=run_id, session_id=session_id, ts=ts, data=storable(data))
              for i, (run_id, kind, data) in enumerate(items)]
    deliveries = [(webhooks.delivery_id(webhook_id, session_id, e.seq), webhook_id, e)
                  for e in events if e.type in WEBHOOK_EVENT_TYPES
                  for webhook_id, kinds in sorted(webhooks_by_id.items()) if e.type in kinds]
    await conn.execute(APPEND_NUMBERED_SQL, {
        "session_id": session_id, "ts": ts, "seqs": [e.seq for e in events], "runs": [e.run_id for e in events],
        "types": [e.type for e in events], "datas": [orjson.dumps(e.data).decode() for e in events],
        "delivery_ids": [d for d, _, _ in deliveries], "webhook_ids": [w for _, w, _ in deliveries],
        "delivery_seqs": [e.seq for _, _, e in deliveries], "delivery_runs": [e.run_id for _, _, e in deliveries],
        "delivery_types": [e.type for _, _, e in deliveries],
        "payloads": [e.webhook_payload().decode() for _, _, e in deliveries],
    })
    return Appended(events, [d for d, _, _ in deliveries])


async def publish(
    redis: aioredis.Redis, org_id: str, events: list[Event], *, maxlen: int, ttl_s: int
) -> None:
    """Add committed events to their session's stream. Never raises: Postgres already has them,
    and readers fill from Postgres whatever the stream lacks."""
    if not events:
        return
    try:
        # MULTI/EXEC: Redis answers a follower's blocked XREAD after each command, so the events
        # of a batch reached the hub one XREAD (and one write to each client) at a time; in one
        # transaction they are added together and read together.
        async with redis.pipeline(transaction=True) as pipe:
            stage_publish(pipe, org_id, events, maxlen=maxlen, ttl_s=ttl_s)
            results = await pipe.execute(raise_on_error=False)
    except (RedisError, OSError) as exc:
        not_published(events, exc)
        return
    check_published(events, results)


def stage_publish(pipe: Pipeline, org_id: str, events: list[Event], *, maxlen: int, ttl_s: int) -> int:
    """`publish`'s commands, added to the caller's pipeline (which runs them in order, after its
    earlier commands); how many were added (one per event and the expiry), whose results go to
    `check_published`."""
    if not events:
        return 0
    key = session_stream_key(org_id, events[0].session_id)
    for event in events:
        pipe.xadd(key, {"e": event.to_json()}, id=f"{event.seq}-0", maxlen=maxlen, approximate=True)
    pipe.expire(key, ttl_s)
    return len(events) + 1


def not_published(events: list[Event], exc: BaseException) -> None:
    log.warning("events %s..%s of session %s not published to Redis: %s",
                events[0].seq, events[-1].seq, events[0].session_id, exc)


def check_published(events: list[Event], results: list[Any]) -> None:
    """Log what the stream refused of `stage_publish`'s commands (their results)."""
    for result in results:
        # "ID ... equal or smaller": a later event reached the stream first. Readers see the
        # hole in the ids and read it from Postgres.
        if isinstance(result, ResponseError):
            log.info("event out of order for session %s: %s", events[0].session_id, result)
        elif isinstance(result, Exception):
            log.warning("publishing an event failed: %s", result)


class RunEmitter:
    """Emits one run's events in order, batched: an event is buffered and the buffer is written
    (one transaction) and published `window_s` after the first event entered it, or at
    `flush()`/`close()`. Consecutive `message.delta`s of one agent merge into one event. That
    keeps streaming live (a 15 ms delay at most) without one transaction per token or step.
    """

    def __init__(
        self,
        pool: AsyncPool,
        redis: aioredis.Redis,
        org_id: str,
        session_id: str,
        run_id: str,
        *,
        maxlen: int,
        ttl_s: int,
        window_s: float = 0.015,
    ) -> None:
        self.org_id = org_id
        self.session_id = session_id
        self.run_id = run_id
        self._pool = pool
        self._redis = redis
        self._maxlen = maxlen
        self._ttl_s = ttl_s
        self._window = window_s
        self._lock = asyncio.Lock()
        self._pending: list[tuple[str, dict[str, Any]]] = []
        # Statements that go with the next write, after the events (`defer`), by their key.
        self._deferred: dict[str, Statement] = {}
        self._timer: asyncio.Task[None] | None = None
        self._publishing: asyncio.Task[None] | None = None  # `publish_soon`'s, not awaited yet
        self.emitted = 0

    async def emit(self, kind: str, data: dict[str, Any]) -> None:
        if kind not in EVENT_TYPES:
            raise ValueError(f"unknown event type {kind!r}")
        await self._add(kind, data)

    async def delta(self, text: str, agent_id: str) -> None:
        if text:
            await self._add(MESSAGE_DELTA, {"text": text, "agent_id": agent_id})

    async def flush(self) -> None:
        async with self._lock:
            await self._write()

    async def flush_with(self, then: Statement) -> DictRow:
        """Flush, with `then` (one statement that returns one row: a usage record) in the same
        transaction after the events, and that row: one transaction and one round trip for both,
        how a model call's usage is recorded without a transaction of its own. A session gone
        rolls `then` back too (SessionGone)."""
        async with self._lock:
            row = await self._write(then)
        assert row is not None
        return row

    async def flush_along(self, statement: Statement) -> None:
        """Flush, with `statement` (its rows unread) after the events and the deferred statements,
        in the same transaction: how a step's checkpoint is stored with the step's events and
        usage records (`orchestrator.checkpointer.StepSaver.attach_writer`), so the checkpoint
        never commits without them. A session gone rolls it back too (SessionGone)."""
        async with self._lock:
            await self._write(statement)

    def defer(self, key: str, statement: Statement) -> None:
        """Store `statement` with the next write (the next checkpoint's, the window's, a flush or
        the ending), after its events; one per `key` (a step that runs again defers the same
        key). For a usage record whose answer nobody waits for (`core.metering`): it leaves the
        step's path and travels with the step's checkpoint instead of in a round trip of its own.
        No await: it never waits for a write in progress."""
        self._deferred[key] = statement
        self._arm()

    async def close(self) -> None:
        await self.flush()
        self._disarm()
        await self.published()

    @asynccontextmanager
    async def ending(self) -> AsyncIterator[list[tuple[str, str, dict[str, Any]]]]:
        """The events still buffered, `(run_id, type, data)`, for the transaction that ends the run
        to store before its own (one transaction for both instead of a flush just before it). The
        buffer stays locked and its timer stopped meanwhile, so nothing else writes them; if the
        block raises (its transaction rolled back), they are buffered again, ahead of any newer."""
        async with self._lock:
            if self._deferred:  # rare (a record no checkpoint followed): stored first, with the events
                await self._write()
            self._disarm()
            await self.published()  # the ending's publish comes after it
            pending, self._pending = self._pending, []
            try:
                yield [(self.run_id, kind, data) for kind, data in pending]
            except BaseException:
                self._pending = pending + self._pending
                raise
            self.emitted += len(pending)

    def discard(self) -> None:
        """Forget the buffered events (the run is no longer this emitter's to report)."""
        if self._pending or self._deferred:
            log.warning("%d event(s) and %d record(s) of run %s not stored: the run is no longer this worker's",
                        len(self._pending), len(self._deferred), self.run_id)
        self._pending = []
        self._deferred = {}
        self._disarm()

    def _disarm(self) -> None:
        """Stop the window's timer: the buffer it was started for is written (or handed over)."""
        if self._timer is not None and self._timer is not asyncio.current_task():
            self._timer.cancel()
        self._timer = None

    def publish_soon(self, events: list[Event]) -> None:
        """Publish stored events in the background (a run's `run.started`, stored by the claim,
        while its graph starts; a batch once stored): each publish waits for the one before, and
        `ending` and `close` for all of them, so the stream gets the events in order. The caller
        awaits `published()` (or `close()`) before letting the emitter go."""
        self._publishing = asyncio.create_task(self._publish_after(self._publishing, events))

    async def _publish_after(self, earlier: asyncio.Task[None] | None, events: list[Event]) -> None:
        if earlier is not None:
            await earlier
        await publish(self._redis, self.org_id, events, maxlen=self._maxlen, ttl_s=self._ttl_s)

    async def published(self) -> None:
        """`publish_soon`'s publishes are done (they never raise: see `publish`). The last one
        stays set while awaited, so one started meanwhile still comes after it."""
        while (publishing := self._publishing) is not None:
            await publishing
            if self._publishing is publishing:
                self._publishing = None

    async def _add(self, kind: str, data: dict[str, Any]) -> None:
        async with self._lock:
            last = self._pending[-1] if self._pending else None
            if (kind == MESSAGE_DELTA and last is not None and last[0] == MESSAGE_DELTA
                    and last[1]["agent_id"] == data["agent_id"]):
                self._pending[-1] = (kind, {**last[1], "text": last[1]["text"] + data["text"]})
            else:
                self._pending.append((kind, data))
            self._arm()

    def _arm(self) -> None:
        """Start the window's timer, unless one runs for what is buffered already."""
        if self._timer is None:
            self._timer = asyncio.create_task(self._flush_later())

    async def _flush_later(self) -> None:
        await asyncio.sleep(self._window)
        async with self._lock:
            self._timer = None
            try:
                await self._write()
            except Exception as exc:  # kept in the buffer; the next flush tries again
                log.warning("writing events of run %s failed: %s", self.run_id, exc)

    async def _write(self, then: Statement | None = None) -> DictRow | None:
        if not self._pending and not self._deferred and then is None:
            return None
        pending, self._pending = self._pending, []
        deferred, self._deferred = self._deferred, {}
        try:
            stored, row = await self._store([(self.run_id, kind, data) for kind, data in pending],
                                            [*deferred.values(), *([then] if then is not None else [])])
        except BaseException:
            self._pending = pending + self._pending
            self._deferred = {**deferred, **self._deferred}
            raise
        # The window started by the first of these is over: the next event starts its own (a timer
        # left running would write it early, in a transaction of its own). A statement deferred
        # during the write (`defer` does not wait for the lock) keeps the timer it found.
        if not self._deferred:
            self._disarm()
        self.emitted += len(stored)
        # Stored: the step goes on while Redis gets them (in order; see `publish_soon`).
        self.publish_soon(stored)
        return row

    async def _store(self, items: list[tuple[str, str, dict[str, Any]]],
                     then: list[Statement]) -> tuple[list[Event], DictRow | None]:
        """One transaction in one round trip: BEGIN, the org, the events (one statement), the
        statements `then` and COMMIT sent together (`tenant_batch`). The stored events, and the
        first row of the last statement's (None if none)."""
        if any(kind in WEBHOOK_EVENT_TYPES for _, kind, _ in items):
            # Deliveries to number too (a run's ending stores its terminal events itself, so this
            # is rare): one statement after another.
            async with tenant_pipeline_tx(self._pool, self.org_id) as conn:
                stored = (await append_with_deliveries(conn, self.session_id, items)).events
                row = None
                for statement in then:
                    cur = await conn.execute(*statement)
                    row = await cur.fetchone() if cur.description is not None else None
            return stored, row
        batch = EventBatch(self.session_id, items) if items else None
        statements = [*([batch.statement(strict=bool(then))] if batch else []), *then]
        try:
            rows = await tenant_batch(self._pool, self.org_id, *statements)
        except NoDataFound as exc:  # the strict batch's session is gone: all rolled back
            raise SessionGone(self.session_id) from exc
        stored = batch.stored(rows[0][0] if rows[0] else None) if batch else []
        found = rows[-1] if then else []
        return stored, found[0] if found else None
