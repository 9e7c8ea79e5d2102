"""Runs: create (with idempotency and the per-session queue), claim with a lease, heartbeat,
finish, cancel. Every state change emits its event in the same transaction.

A session runs one run at a time, in the order their `run.queued` events were numbered
(`queue_seq`). Creating and claiming both lock the session row first, so a run is claimable
only when no earlier run of its session is still active, and whoever ends a run learns which
run is next and enqueues it after commit.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, TypedDict, cast

from psycopg import AsyncConnection, AsyncCursor
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from core import events
from core.agent_config import AgentLimits
from core.events import Event
from core.ids import new_id
from core.store.agents import AgentVersionRow
from core.store.errors import IdempotencyMismatch, SessionBusy
from core.store.skills import RUN_SKILL_VERSIONS
from core.tenancy import AsyncPool, Statement, tenant_batch


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    AWAITING_CONFIRMATION = "awaiting_confirmation"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


ACTIVE = frozenset({RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.AWAITING_CONFIRMATION})
TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED, RunStatus.TIMED_OUT})


class RunRow(TypedDict):
    """A run as the stores return it (`COLUMNS`)."""

    id: str
    session_id: str
    agent_id: str
    agent_version: int
    status: RunStatus
    multitask: str
    input: dict[str, Any] | None
    output: dict[str, Any] | None
    error: dict[str, Any] | None
    usage: dict[str, Any]
    metadata: dict[str, Any]
    skill_versions: dict[str, int] | None  # the org's skills at the versions the run uses (set at its start)
    attempt: int
    trace_id: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class RunDetail(RunRow):
    """A run with its place in the session's line, its lease and any cancel request (`get`)."""

    queue_seq: int | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    cancel_requested_at: datetime | None


class ClaimedRun(RunRow):
    """A run just claimed: its deadline and how often its workers' leases lapsed."""

    deadline_at: datetime
    lapses: int
    trace_parent: str | None  # the creating request's W3C traceparent, when it had one

COLUMNS = (
    "id, session_id, agent_id, agent_version, status, multitask, input, output, error, usage, metadata, "
    "skill_versions, attempt, trace_id, created_at, started_at, finished_at"
)
PUBLIC_FIELDS = (
    "id", "session_id", "agent_id", "agent_version", "status", "input", "output", "error", "usage",
    "metadata", "skill_versions", "attempt", "created_at", "started_at", "finished_at", "trace_id",
)

LOCK_SESSION_SQL = "SELECT id, agent_id, user_id FROM sessions WHERE id = %s AND deleted_at IS NULL FOR UPDATE"
# A POST's first statement: hold the session (no row: there is none) and say whether its agent is
# still there.
LOCK_FOR_CREATE_SQL = """
SELECT a.id IS NOT NULL AS agent_live
FROM sessions s LEFT JOIN agents a ON a.id = s.agent_id AND a.deleted_at IS NULL
WHERE s.id = %s AND s.deleted_at IS NULL FOR UPDATE OF s
"""
# Ending a run must work even after its session was deleted.
LOCK_ANY_SESSION_SQL = "SELECT id FROM sessions WHERE id = %s FOR UPDATE"
_ACTIVE = "('queued', 'running', 'awaiting_confirmation')"
# A POST's second statement, sent right behind `LOCK_FOR_CREATE_SQL` without waiting for it: it
# starts once that one holds the session row, so it sees every run committed before (a separate
# statement because one statement's reads use the snapshot taken when it started, before any wait
# for the lock). In one round trip: an earlier run with the same idempotency key (then nothing is
# written), else the session's first active run (with multitask `reject`, nothing is written),
# else the run with its queue place, the user's message and the `run.queued` event under the
# session's next seq (core.events' numbering: taken from the held session row). Foreign keys
# (the message's and the event's to the run) are checked at the end of the statement. One row
# comes back: `created`, `existing` (with its request hash) or `busy` (the active run); none when
# the session or its agent is gone.
CREATE_RUN_SQL = f"""
WITH agent AS (
  SELECT a.id, a.version FROM sessions s JOIN agents a ON a.id = s.agent_id AND a.deleted_at IS NULL
  WHERE s.id = %(session_id)s AND s.deleted_at IS NULL
), existing AS (
  SELECT {COLUMNS}, request_hash FROM runs WHERE session_id = %(session_id)s AND idempotency_key = %(idempotency_key)s
), active AS (
  SELECT {COLUMNS} FROM runs WHERE session_id = %(session_id)s AND status IN {_ACTIVE} ORDER BY queue_seq LIMIT 1
), go AS (
  SELECT agent.id, agent.version FROM agent
  WHERE NOT EXISTS (SELECT 1 FROM existing) AND (%(multitask)s <> 'reject' OR NOT EXISTS (SELECT 1 FROM active))
), seq AS (
  UPDATE sessions SET event_seq = event_seq + 1 WHERE id = %(session_id)s AND EXISTS (SELECT 1 FROM go)
  RETURNING event_seq
), r AS (
  INSERT INTO runs (id, org_id, session_id, agent_id, agent_version, multitask, input, metadata,
                    idempotency_key, request_hash, trace_id, trace_parent, created_by, deadline_at, queue_seq)
  SELECT %(id)s, agentos_current_org(), %(session_id)s, go.id, go.version, %(multitask)s, %(input)s, %(metadata)s,
         %(idempotency_key)s, %(request_hash)s, %(trace_id)s, %(trace_parent)s, %(created_by)s, NULL, seq.event_seq
  FROM go, seq
  RETURNING {COLUMNS}
), m AS (
  INSERT INTO messages (id, org_id, session_id, run_id, role, content)
  SELECT %(message_id)s, agentos_current_org(), r.session_id, r.id, 'user', %(text)s FROM r
), e AS (
  INSERT INTO run_events (org_id, session_id, seq, run_id, type, data, ts)
  SELECT agentos_current_org(), r.session_id, seq.event_seq, r.id, %(event_type)s, %(event_data)s, %(ts)s FROM r, seq
)
SELECT 'created' AS outcome, r.*, seq.event_seq AS seq, NOT EXISTS (SELECT 1 FROM active) AS first_in_line,
       NULL AS request_hash FROM r, seq
UNION ALL
SELECT 'existing', {COLUMNS}, NULL, false, request_hash FROM existing
UNION ALL
SELECT 'busy', {COLUMNS}, NULL, false, NULL FROM active
WHERE %(multitask)s = 'reject' AND NOT EXISTS (SELECT 1 FROM existing)
"""
GET_RUN_SQL = f"SELECT {COLUMNS}, queue_seq, lease_owner, lease_expires_at, cancel_requested_at FROM runs WHERE id = %s"
LIST_RUNS_SQL = f"""
SELECT {COLUMNS} FROM runs WHERE session_id = %(session_id)s
  AND (%(cursor)s::text IS NULL OR id < %(cursor)s)
ORDER BY id DESC LIMIT %(limit)s
"""
# A claim is three statements that need none of each other's results, so a worker sends them in
# one batch with its other reads (`claim_batch`: one round trip) or one by one (`claim`):
#
# 1. CLAIM_READ_SQL: the run, its agent version, and the session row, locked (FOR UPDATE): whoever
#    creates, claims or ends a run of the session holds it, which serialises the session's line.
# 2. CLAIM_SQL, a statement of its own so that it sees every run ended before the lock was granted:
#    claimable is queued (or running with a lapsed lease), first in its session's line, not being
#    cancelled, its session live and its agent version there. Its deadline comes from the agent
#    version's `limits.timeout_s` (the caller's `timeout` when given). It also says why not: the
#    run's status and lease as this statement sees them, beside the (empty) claimed columns.
# 3. core.events.STARTED_SQL: `run.started`, stored only if statement 2 made the owner the holder.
CLAIM_READ_SQL = f"""
WITH r AS MATERIALIZED (
  SELECT {COLUMNS}, queue_seq, lease_owner, lease_expires_at, cancel_requested_at FROM runs WHERE id = %(run_id)s
), s AS MATERIALIZED (
  SELECT id, user_id FROM sessions WHERE id = (SELECT session_id FROM r) AND deleted_at IS NULL FOR UPDATE
)
SELECT r.*, s.id IS NOT NULL AS session_live, s.user_id AS session_user_id,
       a.id AS version_agent_id, v.name AS version_name, v.version AS version_version, v.config AS version_config
FROM r LEFT JOIN s ON true
LEFT JOIN (agent_versions v JOIN agents a ON a.id = v.agent_id)
  ON v.agent_id = r.agent_id AND v.version = r.agent_version
"""
_RUN_VERSION = "v.agent_id = r.agent_id AND v.version = r.agent_version"
CLAIM_SQL = f"""
WITH c AS (
  UPDATE runs r SET status = 'running', attempt = attempt + 1, lease_owner = %(owner)s,
      lapses = lapses + (CASE WHEN r.status = 'running' THEN 1 ELSE 0 END),
      lease_expires_at = now() + %(lease)s, heartbeat_at = now(), started_at = coalesce(started_at, now()),
      deadline_at = coalesce(deadline_at, now() + coalesce(%(timeout)s::interval, (
        SELECT make_interval(secs => coalesce((v.config #>> '{{limits,timeout_s}}')::float8, %(default_timeout)s))
        FROM agent_versions v WHERE {_RUN_VERSION}))),
      skill_versions = {RUN_SKILL_VERSIONS}
  WHERE r.id = %(run_id)s
    AND (r.status = 'queued' OR (r.status = 'running' AND r.lease_expires_at < now()))
    AND r.cancel_requested_at IS NULL
    AND NOT EXISTS (SELECT 1 FROM runs e WHERE e.session_id = r.session_id AND e.queue_seq < r.queue_seq
                    AND e.status IN ('queued', 'running', 'awaiting_confirmation'))
    AND EXISTS (SELECT 1 FROM sessions s WHERE s.id = r.session_id AND s.deleted_at IS NULL)
    AND EXISTS (SELECT 1 FROM agent_versions v JOIN agents a ON a.id = v.agent_id WHERE {_RUN_VERSION})
  RETURNING {COLUMNS}, deadline_at, lapses, trace_parent
)
SELECT c.*, b.status AS blocker_status,
       extract(epoch FROM b.lease_expires_at - now())::float8 AS blocker_lease_left
FROM runs b LEFT JOIN c ON true WHERE b.id = %(run_id)s
"""
HEARTBEAT_SQL = """
UPDATE runs SET lease_expires_at = now() + %s, heartbeat_at = now()
WHERE id = %s AND status = 'running' AND lease_owner = %s RETURNING cancel_requested_at
"""
# The answer's message as `message.completed` carries it.
ANSWER_COLUMNS = ("id", "session_id", "run_id", "role", "content", "metadata", "created_at")
_ANSWER_RETURNING = ", ".join(ANSWER_COLUMNS)
_ANSWER_SELECT = ", ".join(f"answer.{c} AS answer_{c}" for c in ANSWER_COLUMNS)
# One statement: end the run, close its calls still waiting for a decision, find the run that is
# next in its session (every sub-statement sees the rows as they were before it, so the run being
# ended is left out by id), store the run's answer, if it has one, as the session's assistant
# message, and take the session's next `n` seqs for the ending's events: only when the run was
# ended here (held by the owner), like everything else. Also the org's enabled webhooks taking
# any of `hook_types` (id -> types), for the events' deliveries (`events.append_numbered`).
# The caller holds the session row, so no run joins meanwhile.
FINISH_SQL = f"""
WITH f AS (
  UPDATE runs SET status = %(status)s, output = %(output)s, error = %(error)s,
      finished_at = now(), lease_owner = NULL, lease_expires_at = NULL
  WHERE id = %(run_id)s AND status = ANY(%(from)s)
    AND (%(owner)s::text IS NULL OR lease_owner = %(owner)s)
  RETURNING {COLUMNS}
), abandoned AS (
  UPDATE tool_calls SET status = 'rejected', decision_reason = 'the run ended before a decision', decided_at = now()
  WHERE run_id IN (SELECT id FROM f) AND status = 'pending'
), nxt AS (
  SELECT id AS next_run_id, status AS next_status FROM runs
  WHERE session_id = %(session_id)s AND id <> %(run_id)s
    AND status IN ('queued', 'running', 'awaiting_confirmation')
  ORDER BY queue_seq LIMIT 1
), answer AS (
  INSERT INTO messages (id, org_id, session_id, run_id, role, content, metadata)
  SELECT %(message_id)s, agentos_current_org(), f.session_id, f.id, 'assistant', %(answer)s, %(answer_metadata)s
  FROM f WHERE %(message_id)s::text IS NOT NULL
  RETURNING {_ANSWER_RETURNING}
), seqs AS (
  UPDATE sessions SET event_seq = event_seq + %(n)s WHERE id = %(session_id)s AND EXISTS (SELECT 1 FROM f)
  RETURNING event_seq
), hooks AS (
  SELECT coalesce(jsonb_object_agg(id, events), '{{}}') AS webhooks FROM webhooks
  WHERE enabled AND events && %(hook_types)s::text[]
)
SELECT f.*, nxt.next_run_id, nxt.next_status, {_ANSWER_SELECT}, seqs.event_seq, hooks.webhooks
FROM f LEFT JOIN nxt ON true LEFT JOIN answer ON true LEFT JOIN seqs ON true CROSS JOIN hooks
"""
# A cancel asked for while the worker was stopping the graph wins over the pause (the caller
# then ends the run as cancelled): a paused run is only ever cancelled by the cancel route itself.
PAUSE_SQL = """
UPDATE runs SET status = 'awaiting_confirmation', paused_at = now(), lease_owner = NULL, lease_expires_at = NULL
WHERE id = %s AND status = 'running' AND lease_owner = %s AND cancel_requested_at IS NULL RETURNING id
"""
HELD_CANCEL_SQL = """
SELECT 1 FROM runs WHERE id = %s AND status = 'running' AND lease_owner = %s AND cancel_requested_at IS NOT NULL
"""
# Waiting for a human does not count against the run's time limit.
RESUME_SQL = f"""
UPDATE runs SET status = 'queued', deadline_at = deadline_at + (now() - paused_at), paused_at = NULL
WHERE id = %s AND status = 'awaiting_confirmation' RETURNING {COLUMNS}
"""
# A worker shutting down hands its run back: queued again (not a lapse: the next claim is an
# ordinary start, attempt + 1, resuming from the checkpoint). Its deadline keeps running.
RELEASE_SQL = """
UPDATE runs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL
WHERE id = %s AND status = 'running' AND lease_owner = %s RETURNING id
"""
REQUEST_CANCEL_SQL = "UPDATE runs SET cancel_requested_at = coalesce(cancel_requested_at, now()) WHERE id = %s"


# A run's `usage`: summed over every attempt by core.store.usage.RECORD_SQL as its calls are
# recorded (a run that made no call yet has {}).
ZERO_USAGE: dict[str, int | float] = {
    "input_tokens": 0, "output_tokens": 0, "cached_tokens": 0, "total_tokens": 0, "cost_usd": 0.0,
    "model_calls": 0, "sandbox_executions": 0, "sandbox_cpu_ms": 0,
}


def public_usage(stored: dict[str, Any] | None) -> dict[str, Any]:
    body = {**ZERO_USAGE, **(stored or {})}
    body["cost_usd"] = float(body["cost_usd"])
    return body


def to_public(row: RunRow) -> dict[str, Any]:
    body = {k: row.get(k) for k in PUBLIC_FIELDS}
    body["usage"] = public_usage(row.get("usage"))
    return body


async def lock_session(conn: AsyncConnection[DictRow], session_id: str) -> dict[str, Any] | None:
    return await (await conn.execute(LOCK_SESSION_SQL, (session_id,))).fetchone()


async def lock_any_session(conn: AsyncConnection[DictRow], session_id: str) -> bool:
    """Hold the session row even if the session was deleted (ending its runs must still work)."""
    return await (await conn.execute(LOCK_ANY_SESSION_SQL, (session_id,))).fetchone() is not None


async def lock_run(conn: AsyncConnection[DictRow], run_id: str) -> dict[str, Any] | None:
    """Hold the run row (take the session row first, see `lock_session`)."""
    return await (await conn.execute("SELECT id, status FROM runs WHERE id = %s FOR UPDATE", (run_id,))).fetchone()


async def get(conn: AsyncConnection[DictRow], run_id: str) -> RunDetail | None:
    return cast(RunDetail | None, await (await conn.execute(GET_RUN_SQL, (run_id,))).fetchone())


async def list_runs(conn: AsyncConnection[DictRow], session_id: str, cursor: str | None, limit: int) -> list[RunRow]:
    params = {"session_id": session_id, "cursor": cursor, "limit": limit + 1}
    return cast(list[RunRow], await (await conn.execute(LIST_RUNS_SQL, params)).fetchall())


@dataclass(frozen=True)
class Created:
    """What `create` did: the run, its events, and whether to enqueue it now."""

    run: RunRow
    events: list[Event]
    created: bool
    first_in_line: bool


class Absent(StrEnum):
    """Why no run could be made: the session is gone, or its agent is."""

    SESSION = "session"
    AGENT = "agent"


class Creating:
    """A run's creation, sent (`send_create`); `result` reads what it did."""

    def __init__(self, lock: AsyncCursor[DictRow], insert: AsyncCursor[DictRow], *, session_id: str,
                 idempotency_key: str | None, request_hash: str, ts: datetime) -> None:
        self._lock, self._insert = lock, insert
        self._session_id, self._key, self._hash, self._ts = session_id, idempotency_key, request_hash, ts
        self._done: Created | Absent | None = None

    async def result(self) -> Created | Absent:
        """The run made (or the earlier one an idempotency key names), or why there is none (read
        once; asking again answers the same).

        Raises `IdempotencyMismatch` for a reused idempotency key with another body, and
        `SessionBusy` when a run is active and `multitask` is `reject`."""
        if self._done is None:
            self._done = await self._read()
        return self._done

    async def _read(self) -> Created | Absent:
        # The second statement first: in pipeline mode reading it reads the first one's answer too.
        row = await self._insert.fetchone()
        held = await self._lock.fetchone()
        if held is None:
            return Absent.SESSION
        if not held["agent_live"] or row is None:  # (or deleted between the two statements)
            return Absent.AGENT
        outcome, seq, first = row.pop("outcome"), row.pop("seq"), row.pop("first_in_line")
        stored_hash = row.pop("request_hash")
        run = cast(RunRow, row)
        if outcome == "busy":
            raise SessionBusy(run["id"])
        if outcome == "existing":
            if stored_hash != self._hash:
                assert self._key is not None
                raise IdempotencyMismatch(self._key, run["id"])
            return Created(run, [], created=False, first_in_line=False)
        queued = Event(seq=int(seq), type=events.RUN_QUEUED, run_id=run["id"], session_id=self._session_id,
                       ts=self._ts, data=dict(QUEUED_DATA))
        return Created(run, [queued], created=True, first_in_line=bool(first))


QUEUED_DATA: dict[str, Any] = {"attempt": 0}


async def send_create(
    conn: AsyncConnection[DictRow],
    *,
    session_id: str,
    text: str,
    multitask: str,
    metadata: dict[str, Any],
    idempotency_key: str | None,
    request_hash: str,
    created_by: str | None,
    trace_parent: str | None = None,
    run_id: str | None = None,
) -> Creating:
    """Send what stores the user's message and a queued run of the session's agent, with its
    `run.queued` event, unless an earlier run has the same idempotency key, or a run is active and
    `multitask` is `reject`: two statements, the first holding the session row until the
    transaction ends (which serialises runs of one session). In pipeline mode nothing waits here:
    the answer comes with `Creating.result` (or with the transaction's end).

    `trace_parent`: the W3C traceparent of the creating request's span (or of the caller's
    incoming one); its trace id becomes the run's `trace_id`. Without it the run gets a fresh one.
    """
    ts = datetime.now(UTC)
    lock = await conn.execute(LOCK_FOR_CREATE_SQL, (session_id,))
    insert = await conn.execute(CREATE_RUN_SQL, {
        "id": run_id or new_id("run"), "session_id": session_id, "multitask": multitask,
        "input": Jsonb({"text": text}), "metadata": Jsonb(metadata), "idempotency_key": idempotency_key,
        "request_hash": request_hash, "trace_id": trace_parent[3:35] if trace_parent else new_trace_id(),
        "trace_parent": trace_parent, "created_by": created_by, "message_id": new_id("message"), "text": text,
        "event_type": events.RUN_QUEUED, "event_data": Jsonb(QUEUED_DATA), "ts": ts,
    })
    return Creating(lock, insert, session_id=session_id, idempotency_key=idempotency_key,
                    request_hash=request_hash, ts=ts)


async def create(
    conn: AsyncConnection[DictRow],
    *,
    session_id: str,
    text: str,
    multitask: str,
    metadata: dict[str, Any],
    idempotency_key: str | None,
    request_hash: str,
    created_by: str | None,
    trace_parent: str | None = None,
) -> Created:
    """`send_create` and its result, for a caller that knows the session and its agent exist
    (tests, benchmarks): raises `events.SessionGone` when they do not."""
    sent = await send_create(conn, session_id=session_id, text=text, multitask=multitask, metadata=metadata,
                             idempotency_key=idempotency_key, request_hash=request_hash, created_by=created_by,
                             trace_parent=trace_parent)
    done = await sent.result()
    if isinstance(done, Absent):
        raise events.SessionGone(session_id)
    return done


def new_trace_id() -> str:
    """A W3C trace id (32 hex) that follows the run through logs, events and spans."""
    return secrets.token_hex(16)


@dataclass(frozen=True)
class NotClaimed:
    """Why a run could not be claimed: its status (None: it or its session is gone), and for a
    running run how long the current holder's lease has left (then another delivery may take
    over once it lapses)."""

    status: RunStatus | None
    lease_left_s: float | None


@dataclass(frozen=True)
class Claimed:
    """A run this worker now holds, its `run.started` event to publish, and its session's end
    user (read by the lock the claim takes anyway)."""

    run: ClaimedRun
    events: list[Event]
    user_id: str | None = None


DEFAULT_TIMEOUT_S = AgentLimits.model_fields["timeout_s"].default  # an agent version's without one


def _claim_statements(run_id: str, owner: str, lease_s: float, timeout_s: float | None) -> list[Statement]:
    return [
        (CLAIM_READ_SQL, {"run_id": run_id}),
        (CLAIM_SQL, {"owner": owner, "lease": timedelta(seconds=lease_s), "run_id": run_id,
                     "timeout": timedelta(seconds=timeout_s) if timeout_s is not None else None,
                     "default_timeout": DEFAULT_TIMEOUT_S}),
        events.started_statement(run_id, owner),
    ]


@dataclass(frozen=True)
class ClaimBatch:
    """What a claiming batch found (`claim_batch`): the run as read before the claim (None: no
    such run), its agent version (None: gone), whether it was claimed, and the rows of the
    caller's own statements sent with it, in order."""

    run: RunDetail | None
    agent: AgentVersionRow | None
    claim: Claimed | NotClaimed
    also: list[list[DictRow]]


def _claim_result(run_id: str, read: list[DictRow], claimed: list[DictRow], started: list[DictRow],
                  ) -> tuple[RunDetail | None, AgentVersionRow | None, Claimed | NotClaimed]:
    if not read:
        return None, None, NotClaimed(None, None)
    row = dict(read[0])
    live, user_id = row.pop("session_live"), row.pop("session_user_id")
    version = {k: row.pop(f"version_{k}") for k in ("agent_id", "name", "version", "config")}
    agent = None if version["agent_id"] is None else cast(AgentVersionRow, {
        "id": version["agent_id"], "name": version["name"], "version": version["version"],
        "config": version["config"]})
    run = cast(RunDetail, row)
    if not live or not claimed:  # the session (or, since, the run) is gone
        return run, agent, NotClaimed(None, None)
    got = dict(claimed[0])
    status, lease_left = RunStatus(got.pop("blocker_status")), got.pop("blocker_lease_left")
    if got["id"] is None:
        return run, agent, NotClaimed(status, lease_left if status == RunStatus.RUNNING else None)
    event = events.started_event(run_id, row["session_id"], started)
    return run, agent, Claimed(cast(ClaimedRun, got), [event], user_id)


async def claim_batch(pool: AsyncPool, org_id: str, run_id: str, owner: str, lease_s: float,
                      *also: Statement) -> ClaimBatch:
    """Read the run and its agent version and take it for `owner` (with its `run.started`), or
    learn why not, in ONE round trip: the claim's statements (above) and the caller's `also`
    (reads that are only of use once the run is claimed, e.g. the org's budgets) in one batched
    transaction. Why not: finished, cancelled, held by a live lease, waiting behind an earlier
    run of its session (whose end will enqueue it), its session or its agent version gone."""
    rows = await tenant_batch(pool, org_id, *_claim_statements(run_id, owner, lease_s, None), *also)
    run, agent, claimed = _claim_result(run_id, *rows[:3])
    return ClaimBatch(run, agent, claimed, rows[3:])


async def claim(
    conn: AsyncConnection[DictRow], run_id: str, owner: str, lease_s: float, timeout_s: float | None = None
) -> Claimed | NotClaimed:
    """`claim_batch`'s claim inside the caller's transaction, one statement at a time (a run's
    time limit `timeout_s` instead of its agent's, when given)."""
    rows = [list(await (await conn.execute(sql, params)).fetchall())
            for sql, params in _claim_statements(run_id, owner, lease_s, timeout_s)]
    return _claim_result(run_id, *rows)[2]


async def heartbeat(conn: AsyncConnection[DictRow], run_id: str, owner: str, lease_s: float) -> tuple[bool, bool]:
    """Renew the lease: (still ours, cancel requested)."""
    row = await (await conn.execute(HEARTBEAT_SQL, (timedelta(seconds=lease_s), run_id, owner))).fetchone()
    if row is None:
        return False, False
    return True, row["cancel_requested_at"] is not None


TERMINAL_EVENT = {
    RunStatus.SUCCEEDED: events.RUN_SUCCEEDED,
    RunStatus.FAILED: events.RUN_FAILED,
    RunStatus.CANCELLED: events.RUN_CANCELLED,
    RunStatus.TIMED_OUT: events.RUN_TIMED_OUT,
}


@dataclass(frozen=True)
class Finished:
    """A run just ended: its row, its events (the terminal one last), the session's next
    queued run, which may start now, and the webhook deliveries its terminal event got."""

    run: RunRow
    events: list[Event]
    next_run_id: str | None
    deliveries: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Answer:
    """The answer a run ends with, stored by `finish` as the session's assistant message."""

    message_id: str
    text: str
    metadata: dict[str, Any]


async def finish(
    conn: AsyncConnection[DictRow],
    run_id: str,
    session_id: str,
    status: RunStatus,
    *,
    owner: str | None,
    from_status: tuple[RunStatus, ...] = (RunStatus.RUNNING,),
    output: dict[str, Any] | None = None,
    error: dict[str, Any] | None = None,
    answer: Answer | None = None,
    earlier_events: Sequence[tuple[str, str, dict[str, Any]]] = (),
) -> Finished | None:
    """Move the run to a terminal state and emit its terminal event; None if it was not in
    `from_status` (or not held by `owner`). Reports the run that is next in the session.

    `answer`: stored as the session's assistant message (its id in the run's `output` as
    `message_id`), announced by `message.completed` just before the terminal event.
    `earlier_events` (`(run_id, type, data)`): stored first, in order (a worker's events still
    buffered when the run ends). With None returned, the caller rolls the transaction back if
    it must undo them: nothing else was changed.

    One round trip when `conn` is in pipeline mode (`core.tenancy.tenant_pipeline_tx`): the
    session's lock and the run's end are sent together and read; the events are sent after them
    and read by nobody, so they travel with the COMMIT (an error in them surfaces there)."""
    if status not in TERMINAL_EVENT:
        raise ValueError(f"not a terminal status: {status}")
    if answer is not None:
        output = {**(output or {}), "message_id": answer.message_id}
    kinds = [kind for _, kind, _ in earlier_events] + [events.MESSAGE_COMPLETED] * (answer is not None) + \
        [TERMINAL_EVENT[status]]
    # The session row is taken first (as everywhere), then the run's; in pipeline mode both go in
    # one round trip. Without a session there is no run either (it is deleted with its session).
    locked = await conn.execute(LOCK_ANY_SESSION_SQL, (session_id,))
    ended = await conn.execute(FINISH_SQL, {
        "status": status, "output": Jsonb(output) if output is not None else None,
        "error": Jsonb(error) if error is not None else None,
        "run_id": run_id, "from": list(from_status), "owner": owner, "session_id": session_id,
        "message_id": answer.message_id if answer is not None else None,
        "answer": answer.text if answer is not None else None,
        "answer_metadata": Jsonb(answer.metadata) if answer is not None else None,
        "n": len(kinds), "hook_types": sorted(set(kinds) & events.WEBHOOK_EVENT_TYPES),
    })
    if await locked.fetchone() is None:
        return None
    row = await ended.fetchone()
    if row is None:
        return None
    next_run_id, next_status = row.pop("next_run_id"), row.pop("next_status")
    message = {c: row.pop(f"answer_{c}") for c in ANSWER_COLUMNS}
    first_seq = int(row.pop("event_seq")) - len(kinds) + 1
    hooks: dict[str, list[str]] = row.pop("webhooks")
    data: dict[str, Any]
    if status == RunStatus.SUCCEEDED:
        data = {"output": output, "usage": public_usage(row["usage"])}
    elif status in (RunStatus.FAILED, RunStatus.TIMED_OUT):
        data = {"error": error}
    else:
        data = {}
    items = list(earlier_events)
    if answer is not None:
        items.append((run_id, events.MESSAGE_COMPLETED, {"message": message}))
    items.append((run_id, TERMINAL_EVENT[status], data))
    stored = await events.append_numbered(conn, session_id, first_seq, items, hooks)
    next_id = next_run_id if next_status == RunStatus.QUEUED else None
    return Finished(cast(RunRow, row), stored.events, next_id, stored.deliveries)


async def request_cancel(conn: AsyncConnection[DictRow], run_id: str) -> None:
    await conn.execute(REQUEST_CANCEL_SQL, (run_id,))


ACTIVE_RUNS_SQL = """
SELECT id, status FROM runs WHERE session_id = %s AND status IN ('queued', 'running', 'awaiting_confirmation')
ORDER BY queue_seq
"""


async def cancel_all(conn: AsyncConnection[DictRow], session_id: str) -> tuple[list[Event], list[str]]:
    """Cancel every active run of a session (it is being deleted): waiting runs end at once;
    returns their events and the ids of running runs, whose workers must be told to stop."""
    emitted: list[Event] = []
    running: list[str] = []
    for run in await (await conn.execute(ACTIVE_RUNS_SQL, (session_id,))).fetchall():
        done = await finish(conn, run["id"], session_id, RunStatus.CANCELLED, owner=None,
                            from_status=(RunStatus.QUEUED, RunStatus.AWAITING_CONFIRMATION))
        if done is not None:
            emitted.extend(done.events)
        else:
            await request_cancel(conn, run["id"])
            running.append(run["id"])
    return emitted, running


class Pause(StrEnum):
    PAUSED = "paused"
    CANCEL_REQUESTED = "cancel requested"  # still ours and running: end it as cancelled
    LEASE_LOST = "lease lost"


async def pause(conn: AsyncConnection[DictRow], run_id: str, owner: str) -> Pause:
    """The run waits for a human: it holds no worker and no lease until `resume`; unless a cancel
    was asked for meanwhile, or the lease is no longer `owner`'s."""
    if await (await conn.execute(PAUSE_SQL, (run_id, owner))).fetchone() is not None:
        return Pause.PAUSED
    if await (await conn.execute(HELD_CANCEL_SQL, (run_id, owner))).fetchone() is not None:
        return Pause.CANCEL_REQUESTED
    return Pause.LEASE_LOST


async def release(conn: AsyncConnection[DictRow], run_id: str, owner: str) -> bool:
    """Hand a run this worker holds back to the queue (the worker is shutting down); False if the
    lease was no longer `owner`'s. The caller sends the run to the workers after commit."""
    return await (await conn.execute(RELEASE_SQL, (run_id, owner))).fetchone() is not None


async def resume(conn: AsyncConnection[DictRow], run_id: str) -> RunRow | None:
    """Back to `queued` after the human decided (the caller enqueues it after commit)."""
    return cast(RunRow | None, await (await conn.execute(RESUME_SQL, (run_id,))).fetchone())
