"""Runners and the tool calls routed to them.

A runner's token is `aosr_<prefix>_<secret>`: hashed like an API key (`core.store.api_keys`),
shown once, and a different shape, so `api.auth` never takes it for an API key or a JWT: a
runner token can only be a runner. A routed call's row is keyed by its tool call's id, so
whatever happens on the link the platform stores one result per call (the first one posted).
"""

from __future__ import annotations

import hmac
import re
import secrets
import string
from typing import Any, Literal, TypedDict

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from core.ids import new_id
from core.store.api_keys import hash_secret
from core.tenancy import AsyncPool, Statement, runner_lookup_batch, tenant_batch

TOKEN_RE = re.compile(r"^aosr_([a-z0-9]{10})_([A-Za-z0-9]{32})$")
_ALPHABET = string.ascii_letters + string.digits
_PREFIX_ALPHABET = string.ascii_lowercase + string.digits

RunnerCallStatus = Literal["waiting", "queued", "done"]

PUBLIC_COLUMNS = "id, name, labels, prefix, created_by, created_at, last_seen_at, revoked_at"
CALL_COLUMNS = ("id, runner_id, run_id, session_id, name, args, status, output, error, created_at, waiting_since, "
                "done_at, sent_at")

INSERT_SQL = f"""
INSERT INTO runners (id, org_id, name, labels, prefix, secret_hash, created_by)
VALUES (%s, agentos_current_org(), %s, %s, %s, %s, %s)
ON CONFLICT (org_id, name) WHERE revoked_at IS NULL DO NOTHING
RETURNING {PUBLIC_COLUMNS}
"""
LIST_SQL = f"""
SELECT {PUBLIC_COLUMNS} FROM runners
WHERE (%(cursor)s::text IS NULL OR id < %(cursor)s) ORDER BY id DESC LIMIT %(limit)s
"""
GET_SQL = f"SELECT {PUBLIC_COLUMNS} FROM runners WHERE id = %s"
LIVE_SQL = f"SELECT {PUBLIC_COLUMNS} FROM runners WHERE revoked_at IS NULL ORDER BY name"
REVOKE_SQL = f"""
UPDATE runners SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s RETURNING {PUBLIC_COLUMNS}
"""
LOOKUP_SQL = "SELECT id, org_id, name, secret_hash, revoked_at FROM runners WHERE prefix = %s"
SEEN_SQL = "UPDATE runners SET last_seen_at = now() WHERE id = %s"

# A call is stored once (its id is the tool call's); a replayed step finds the row it made.
# `queued` is the worker sending it (`sent_at`); `waiting`, the run waiting for its runner. A call
# sent once stays with its runner: only that runner's journal knows whether it ran.
UPSERT_CALL_SQL = f"""
INSERT INTO runner_calls (id, org_id, runner_id, run_id, session_id, name, args, status, waiting_since, sent_at)
VALUES (%(id)s, agentos_current_org(), %(runner_id)s, %(run_id)s, %(session_id)s, %(name)s, %(args)s, %(status)s,
        CASE WHEN %(status)s = 'waiting' THEN now() END, CASE WHEN %(status)s = 'queued' THEN now() END)
ON CONFLICT (id) DO UPDATE SET
    status = CASE WHEN runner_calls.status = 'done' THEN 'done' ELSE excluded.status END,
    runner_id = CASE WHEN runner_calls.status = 'done' OR runner_calls.sent_at IS NOT NULL THEN runner_calls.runner_id
                     ELSE excluded.runner_id END,
    waiting_since = CASE WHEN runner_calls.status = 'done' THEN runner_calls.waiting_since
                         WHEN excluded.status = 'waiting' THEN coalesce(runner_calls.waiting_since, now())
                         ELSE NULL END,
    sent_at = CASE WHEN runner_calls.status = 'done' THEN runner_calls.sent_at
                   ELSE coalesce(runner_calls.sent_at, excluded.sent_at) END
RETURNING {CALL_COLUMNS}
"""
# A wait for the runner ends (it connected, or the run goes on otherwise): a call sent before
# (its link dropped mid-call) is to be delivered again; one never sent is removed, and the
# worker sends it when the run goes on, after its `tool.call` event (so no runner gets a call
# the run's events do not show yet).
REQUEUE_SENT_SQL = "UPDATE runner_calls SET status = 'queued', waiting_since = NULL " \
                   "WHERE id = %s AND status = 'waiting' AND sent_at IS NOT NULL RETURNING id"
DROP_UNSENT_SQL = "DELETE FROM runner_calls WHERE id = %s AND status = 'waiting' AND sent_at IS NULL RETURNING id"
GET_CALL_SQL = f"SELECT {CALL_COLUMNS} FROM runner_calls WHERE id = %s"
OPEN_CALLS_SQL = f"""
SELECT {CALL_COLUMNS} FROM runner_calls WHERE runner_id = %s AND status = 'queued' ORDER BY created_at, id
"""
# The first result posted wins; later posts of the same call (a re-send after a lost answer)
# change nothing and are answered as acknowledged.
FINISH_CALL_SQL = f"""
UPDATE runner_calls SET status = 'done', output = %s, error = %s, done_at = now()
WHERE id = %s AND runner_id = %s AND status = 'queued' RETURNING {CALL_COLUMNS}
"""
WAITING_FOR_SQL = f"""
SELECT {CALL_COLUMNS} FROM runner_calls WHERE runner_id = %s AND status = 'waiting' ORDER BY created_at
"""



class RunnerRow(TypedDict):
    id: str
    name: str
    labels: dict[str, str]
    prefix: str
    created_by: str | None
    created_at: Any
    last_seen_at: Any
    revoked_at: Any


class RunnerCallRow(TypedDict):
    id: str
    runner_id: str
    run_id: str
    session_id: str
    name: str
    args: dict[str, Any]
    status: RunnerCallStatus
    output: Any
    error: str | None
    created_at: Any
    waiting_since: Any
    done_at: Any
    sent_at: Any


def generate() -> tuple[str, str, str]:
    """Return (full token, prefix, secret)."""
    prefix = "".join(secrets.choice(_PREFIX_ALPHABET) for _ in range(10))
    secret = "".join(secrets.choice(_ALPHABET) for _ in range(32))
    return f"aosr_{prefix}_{secret}", prefix, secret


async def create(conn: AsyncConnection[DictRow], *, name: str, labels: dict[str, str],
                 created_by: str | None) -> dict[str, Any] | None:
    """The new runner with its token (shown once), or None when a live runner has this name."""
    token, prefix, secret = generate()
    cur = await conn.execute(INSERT_SQL, (new_id("runner"), name, Jsonb(labels), prefix, hash_secret(secret),
                                          created_by))
    row = await cur.fetchone()
    return None if row is None else {**row, "token": token}


async def list_runners(conn: AsyncConnection[DictRow], cursor: str | None, limit: int) -> list[dict[str, Any]]:
    return list(await (await conn.execute(LIST_SQL, {"cursor": cursor, "limit": limit + 1})).fetchall())


async def get(conn: AsyncConnection[DictRow], runner_id: str) -> RunnerRow | None:
    return await (await conn.execute(GET_SQL, (runner_id,))).fetchone()  # type: ignore[return-value]


async def live(conn: AsyncConnection[DictRow]) -> list[RunnerRow]:
    return list(await (await conn.execute(LIVE_SQL)).fetchall())  # type: ignore[arg-type]


async def revoke(conn: AsyncConnection[DictRow], runner_id: str) -> dict[str, Any] | None:
    return await (await conn.execute(REVOKE_SQL, (runner_id,))).fetchone()


async def verify(pool: AsyncPool, token: str) -> dict[str, Any] | None:
    """The runner's id, org and name when `token` is a live runner token."""
    match = TOKEN_RE.match(token)
    if not match:
        return None
    prefix, secret = match.groups()
    [rows] = await runner_lookup_batch(pool, prefix, (LOOKUP_SQL, (prefix,)))  # one round trip
    row = rows[0] if rows else None
    if row is None or not hmac.compare_digest(row["secret_hash"], hash_secret(secret)) or row["revoked_at"]:
        return None
    return row


async def seen(conn: AsyncConnection[DictRow], runner_id: str) -> None:
    await conn.execute(SEEN_SQL, (runner_id,))


async def put_call(conn: AsyncConnection[DictRow], call_id: str, *, runner_id: str, run_id: str, session_id: str,
                   name: str, args: dict[str, Any], status: RunnerCallStatus) -> RunnerCallRow:
    row = await (await conn.execute(UPSERT_CALL_SQL, _call_params(call_id, runner_id, run_id, session_id, name, args,
                                                                   status))).fetchone()
    assert row is not None
    return row  # type: ignore[return-value]


def _call_params(call_id: str, runner_id: str, run_id: str, session_id: str, name: str, args: dict[str, Any],
                 status: RunnerCallStatus) -> dict[str, Any]:
    return {"id": call_id, "runner_id": runner_id, "run_id": run_id, "session_id": session_id, "name": name,
            "args": Jsonb(args), "status": status}


async def end_wait(conn: AsyncConnection[DictRow], call_id: str) -> bool:
    """End a call's wait for its runner (REQUEUE_SENT_SQL, DROP_UNSENT_SQL); False when it was
    not waiting."""
    requeued = await (await conn.execute(REQUEUE_SENT_SQL, (call_id,))).fetchone()
    return requeued is not None or await (await conn.execute(DROP_UNSENT_SQL, (call_id,))).fetchone() is not None


async def send_call(pool: AsyncPool, org_id: str, call_id: str, *, runner_id: str, run_id: str, session_id: str,
                    name: str, args: dict[str, Any]) -> RunnerCallRow:
    """`put_call(..., status="queued")` in its own transaction, in one round trip (the worker's
    hot path): the call, to be delivered, or as it already is when an earlier attempt stored it."""
    [rows] = await tenant_batch(pool, org_id, (UPSERT_CALL_SQL, _call_params(call_id, runner_id, run_id, session_id,
                                                                             name, args, "queued")))
    return rows[0]  # type: ignore[return-value]


async def read_call(pool: AsyncPool, org_id: str, call_id: str) -> RunnerCallRow | None:
    """`get_call` in its own transaction, in one round trip."""
    [rows] = await tenant_batch(pool, org_id, (GET_CALL_SQL, (call_id,)))
    return rows[0] if rows else None  # type: ignore[return-value]


async def read_runner(pool: AsyncPool, org_id: str, runner_id: str) -> RunnerRow | None:
    """`get` in its own transaction, in one round trip."""
    [rows] = await tenant_batch(pool, org_id, (GET_SQL, (runner_id,)))
    return rows[0] if rows else None  # type: ignore[return-value]


async def live_runners(pool: AsyncPool, org_id: str) -> list[RunnerRow]:
    """`live` in its own transaction, in one round trip."""
    [rows] = await tenant_batch(pool, org_id, (LIVE_SQL, ()))
    return rows  # type: ignore[return-value]


async def get_call(conn: AsyncConnection[DictRow], call_id: str) -> RunnerCallRow | None:
    return await (await conn.execute(GET_CALL_SQL, (call_id,))).fetchone()  # type: ignore[return-value]


async def open_calls(conn: AsyncConnection[DictRow], runner_id: str) -> list[RunnerCallRow]:
    return list(await (await conn.execute(OPEN_CALLS_SQL, (runner_id,))).fetchall())  # type: ignore[arg-type]


async def finish_call(conn: AsyncConnection[DictRow], call_id: str, runner_id: str, *, output: Any,
                      error: str | None) -> RunnerCallRow | None:
    """The call, now done; None when it was done already (or is not this runner's)."""
    cur = await conn.execute(FINISH_CALL_SQL, (Jsonb(output), error, call_id, runner_id))
    return await cur.fetchone()  # type: ignore[return-value]


async def waiting_for(conn: AsyncConnection[DictRow], runner_id: str) -> list[RunnerCallRow]:
    return list(await (await conn.execute(WAITING_FOR_SQL, (runner_id,))).fetchall())  # type: ignore[arg-type]



# Runs that ended with calls on this runner and whose workspace it has not reported yet.
ENDED_RUNS_SQL = """
SELECT DISTINCT rc.run_id, r.status FROM runner_calls rc JOIN runs r ON r.id = rc.run_id
WHERE rc.runner_id = %s AND r.status IN ('succeeded', 'failed', 'cancelled', 'timed_out')
  AND NOT EXISTS (SELECT 1 FROM runner_runs rr WHERE rr.run_id = rc.run_id AND rr.runner_id = rc.runner_id)
LIMIT 50
"""
HAS_CALLED_SQL = "SELECT 1 FROM runner_calls WHERE run_id = %s AND runner_id = %s LIMIT 1"
PUT_RUN_SQL = """
INSERT INTO runner_runs (org_id, run_id, runner_id, branch, commit, diff_stat)
VALUES (agentos_current_org(), %s, %s, %s, %s, %s)
ON CONFLICT (run_id, runner_id) DO NOTHING RETURNING run_id
"""
RUN_WORKSPACES_SQL = """
SELECT rr.runner_id, r.name AS runner, rr.branch, rr.commit, rr.diff_stat, rr.finished_at
FROM runner_runs rr JOIN runners r ON r.id = rr.runner_id WHERE rr.run_id = %s ORDER BY rr.finished_at
"""


def heartbeat_reads(runner_id: str) -> tuple[Statement, Statement, Statement]:
    """What the API does for a connected runner at each heartbeat, as one batch: note it was seen,
    the runs that ended (`ended_runs`), and its calls not yet answered (`open_calls`)."""
    return (SEEN_SQL, (runner_id,)), (ENDED_RUNS_SQL, (runner_id,)), (OPEN_CALLS_SQL, (runner_id,))


async def ended_runs(conn: AsyncConnection[DictRow], runner_id: str) -> list[dict[str, Any]]:
    return list(await (await conn.execute(ENDED_RUNS_SQL, (runner_id,))).fetchall())


async def put_run_workspace(conn: AsyncConnection[DictRow], run_id: str, runner_id: str, *, branch: str | None,
                            commit: str | None, diff_stat: str) -> bool | None:
    """Store what the runner did with the run's workspace: True when stored now, False when it
    was already (the first report stands), None when the runner had no call of this run."""
    if await (await conn.execute(HAS_CALLED_SQL, (run_id, runner_id))).fetchone() is None:
        return None
    cur = await conn.execute(PUT_RUN_SQL, (run_id, runner_id, branch, commit, diff_stat))
    return await cur.fetchone() is not None


async def run_workspaces(conn: AsyncConnection[DictRow], run_id: str) -> list[dict[str, Any]]:
    return list(await (await conn.execute(RUN_WORKSPACES_SQL, (run_id,))).fetchall())
