"""The one home of tenant scoping.

Every unit of work on tenant tables runs in a transaction that first does
`SET LOCAL app.org_id` (via `set_config(..., true)`), so the org can never leak to the next
user of a pooled connection. Row-level security does the filtering; queries may still say
`WHERE org_id = ...` for the planner, but correctness never depends on it.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg.rows import DictRow
from psycopg_pool import AsyncConnectionPool

from core.pg_pipeline import one_write_pipeline

SET_ORG_SQL = "SELECT set_config('app.org_id', %s, true)"

AsyncPool = AsyncConnectionPool[AsyncConnection[DictRow]]


@asynccontextmanager
async def tenant_tx(pool: AsyncPool, org_id: str) -> AsyncIterator[AsyncConnection[DictRow]]:
    """A connection inside a transaction scoped to `org_id`; commits on success."""
    if not org_id:
        raise ValueError("tenant_tx needs an org id")
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(SET_ORG_SQL, (org_id,))
        yield conn


@asynccontextmanager
async def tenant_pipeline_tx(pool: AsyncPool, org_id: str) -> AsyncIterator[AsyncConnection[DictRow]]:
    """`tenant_tx` in Postgres pipeline mode: statements are sent without waiting, and a round
    trip happens only where a result is read (a fetch) and at the end; BEGIN and the org travel
    with the first statements. So a transaction whose writes need no result of their own costs
    few round trips. An error surfaces at the next read or at the end, not at its statement:
    only for code that catches none mid-transaction (and uses no nested `conn.transaction()`)."""
    if not org_id:
        raise ValueError("tenant_pipeline_tx needs an org id")
    async with pool.connection() as conn, _pipeline_tx(conn, SET_ORG_SQL, org_id):
        yield conn


# One statement of a batch: SQL and its parameters.
Statement = tuple[str, Sequence[Any] | Mapping[str, Any]]


async def tenant_batch(pool: AsyncPool, org_id: str, *statements: Statement) -> list[list[DictRow]]:
    """Statements that do not depend on each other's results, in one `tenant_tx`-scoped
    transaction sent as one batch (Postgres pipeline mode): BEGIN, the org, the statements and
    COMMIT travel together, so the transaction costs one round trip instead of three plus one per
    statement. Each statement's rows, in order (empty for one that returns none). For the hot
    paths where round trips are the cost (a runner call's, docs/runners.md "Latency")."""
    if not org_id:
        raise ValueError("tenant_batch needs an org id")
    return await _batch(pool, SET_ORG_SQL, org_id, statements)


async def _batch(pool: AsyncPool, scope_sql: str, scope: str, statements: Sequence[Statement]) -> list[list[DictRow]]:
    async with pool.connection() as conn:
        async with _pipeline_tx(conn, scope_sql, scope):
            cursors = [await conn.execute(sql, params) for sql, params in statements]
        # The pipeline's end sent everything and read every result: no round trip from here on.
        return [await cur.fetchall() if cur.description is not None else [] for cur in cursors]


@asynccontextmanager
async def _pipeline_tx(conn: AsyncConnection[DictRow], scope_sql: str, scope: str) -> AsyncIterator[None]:
    """`conn` (idle, from the pool) in pipeline mode inside one transaction scoped by `scope_sql`.

    psycopg's own transaction handling waits for BEGIN (and COMMIT) with a round trip each in
    pipeline mode; in autocommit mode, BEGIN and COMMIT are plain statements of the batch and
    travel with it, in one write (`core.pg_pipeline`). The connection is left as it came, idle
    and not autocommit, or closed (the pool then discards it)."""
    await conn.set_autocommit(True)
    try:
        async with one_write_pipeline(conn):
            await conn.execute("BEGIN")
            await conn.execute(scope_sql, (scope,))
            yield
            await conn.execute("COMMIT")
    finally:
        try:
            if conn.info.transaction_status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
                await conn.execute("ROLLBACK")  # a failed statement (or an error in the block) left it open
            await conn.set_autocommit(False)
        except Exception:  # broken or busy: never hand it out again
            await conn.close()


SET_KEY_PREFIX_SQL = "SELECT set_config('app.api_key_prefix', %s, true)"


@asynccontextmanager
async def api_key_lookup_tx(pool: AsyncPool, prefix: str) -> AsyncIterator[AsyncConnection[DictRow]]:
    """The one unscoped entry: authentication finds a key by its public prefix before the org
    is known. The `api_key_lookup` policy shows exactly that key's row and nothing else."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(SET_KEY_PREFIX_SQL, (prefix,))
        yield conn


SET_RUNNER_PREFIX_SQL = "SELECT set_config('app.runner_prefix', %s, true)"


async def runner_lookup_batch(pool: AsyncPool, prefix: str, *statements: Statement) -> list[list[DictRow]]:
    """A runner's token names its row by a public prefix before the org is known: the
    `runner_lookup` policy shows exactly that runner's row and nothing else. One batch, like
    `tenant_batch` (every runner request authenticates, so it is on the hot path)."""
    return await _batch(pool, SET_RUNNER_PREFIX_SQL, prefix, statements)


SET_USER_SQL = "SELECT set_config('app.user_id', %s, true)"


@asynccontextmanager
async def user_memberships_tx(pool: AsyncPool, user_id: str) -> AsyncIterator[AsyncConnection[DictRow]]:
    """The signed-in user's own memberships in every org (read-only, `user_memberships` policy):
    what `GET /v1/me` lists and what sign-in chooses an org from. No other tenant row shows."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(SET_USER_SQL, (user_id,))
        yield conn


SET_INVITATION_SQL = "SELECT set_config('app.invitation_token_hash', %s, true)"


@asynccontextmanager
async def invitation_lookup_tx(pool: AsyncPool, token_hash: str) -> AsyncIterator[AsyncConnection[DictRow]]:
    """Accepting an invitation finds it by its token's hash before the org is known: the
    `invitation_lookup` policy shows that one row (read-only). Changes go through `tenant_tx`."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(SET_INVITATION_SQL, (token_hash,))
        yield conn


SET_WATCHDOG_SQL = "SELECT set_config('app.watchdog', 'on', true)"


@asynccontextmanager
async def watchdog_scan_tx(pool: AsyncPool) -> AsyncIterator[AsyncConnection[DictRow]]:
    """The watchdog's read-only view across orgs: the `watchdog_scan` policy shows `runs` rows
    (only) for this one transaction. Changes to a run still go through `tenant_tx`."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(SET_WATCHDOG_SQL)
        yield conn


SET_SECRET_ROTATION_SQL = "SELECT set_config('app.secret_rotation', 'on', true)"


@asynccontextmanager
async def secret_rotation_scan_tx(pool: AsyncPool) -> AsyncIterator[AsyncConnection[DictRow]]:
    """`agentos secrets rotate`'s read-only view across orgs: the `secret_rotation` policy shows
    `org_secrets` rows (only) for this one transaction. Each rewrap still goes through `tenant_tx`."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(SET_SECRET_ROTATION_SQL)
        yield conn


SET_LIFECYCLE_SQL = "SELECT set_config('app.lifecycle', 'on', true)"


@asynccontextmanager
async def lifecycle_scan_tx(pool: AsyncPool) -> AsyncIterator[AsyncConnection[DictRow]]:
    """The data-lifecycle jobs' read-only view across orgs (core.org_purge, core.retention): the
    `lifecycle_scan` policy shows `orgs` rows (only) for this one transaction. Every removal
    still goes through `tenant_tx`."""
    async with pool.connection() as conn, conn.transaction():
        await conn.execute(SET_LIFECYCLE_SQL)
        yield conn


# Redis keys and checkpoint thread ids: built here only, always from ids the server resolved
# (never from a client's string), and always carrying the org.


def org_key_pattern(org_id: str) -> str:
    """A SCAN pattern matching every Redis key of one org: each key below that holds an org's
    data starts `agentos:<org>:` (tests/test_org_deletion.py checks it), so deleting an org
    finds them all. Org ids are server-made (`org_` + base32), so hold no glob character."""
    return f"agentos:{org_id}:*"


def checkpoint_thread_prefix(org_id: str) -> str:
    """What every checkpoint thread id of the org starts with (see `checkpoint_thread_id`)."""
    return f"{org_id}:"


def session_stream_key(org_id: str, session_id: str) -> str:
    """The Redis Stream holding a session's live events (entry id `<seq>-0`)."""
    return f"agentos:{org_id}:session:{session_id}:events"


# The one platform-wide channel: API key invalidations (core.auth_cache), carrying ids only.
AUTH_INVALIDATIONS_CHANNEL = "agentos:auth:invalidations"


def event_hub_wake_key(token: str) -> str:
    """One API process's wake-up stream (`core.event_hub`): no org's data, only a nudge that
    makes the process's blocking read pick up newly followed sessions. `token` is random."""
    return f"agentos:event-hub:{token}:wake"


def run_cancel_key(org_id: str, run_id: str) -> str:
    """Set when a client asks to cancel a run; the executing worker polls it."""
    return f"agentos:{org_id}:run:{run_id}:cancel"


def session_window_key(org_id: str, session_id: str) -> str:
    """A session's short-term memory window (JSON; a cache of what Postgres holds)."""
    return f"agentos:{org_id}:session:{session_id}:window"


def run_scratch_key(org_id: str, run_id: str) -> str:
    """A run's scratch state (a hash), dropped when the run ends."""
    return f"agentos:{org_id}:run:{run_id}:scratch"


def checkpoint_thread_id(org_id: str, session_id: str) -> str:
    """The LangGraph checkpoint thread of a session's conversation."""
    return f"{org_id}:{session_id}"


def org_request_bucket_key(org_id: str) -> str:
    """The org's API request token bucket (a hash: tokens, last refill in ms)."""
    return f"agentos:{org_id}:limits:requests"


def org_active_runs_key(org_id: str) -> str:
    """The org's admitted, not yet ended runs (a sorted set: member -> admission time in ms)."""
    return f"agentos:{org_id}:limits:active_runs"


def org_sandbox_running_key(org_id: str) -> str:
    """The org's code executions in progress (a sorted set: execution id -> start time in ms)."""
    return f"agentos:{org_id}:limits:sandbox_running"


def org_sandbox_cpu_key(org_id: str, day: str) -> str:
    """CPU milliseconds the org's code executions used on one UTC day (`YYYYMMDD`; a counter)."""
    return f"agentos:{org_id}:limits:sandbox_cpu:{day}"


def memory_item_key(org_id: str, memory_id: str) -> str:
    """A short-lived memory item (a hash) of `memory.redis_store`."""
    return f"agentos:{org_id}:memory:item:{memory_id}"


def memory_index_key(org_id: str) -> str:
    """The org's short-lived memory ids (a sorted set, all scores 0: ordered by id)."""
    return f"agentos:{org_id}:memory:index"


def memory_user_key(org_id: str, user_id: str) -> str:
    """The ids of one end user's short-lived memories (a set). The end-user id is the client's
    string, so the key carries its SHA-256, never the string itself."""
    return f"agentos:{org_id}:memory:user:{hashlib.sha256(user_id.encode()).hexdigest()}"


def memory_dedup_key(org_id: str, fingerprint: str) -> str:
    """Claimed (SET NX) by the first write of one fact; holds that item's id. `fingerprint` is
    the hex digest of the fact's identity (scope, ids, kind, content hash, model)."""
    return f"agentos:{org_id}:memory:dedup:{fingerprint}"


def web_search_cache_key(org_id: str, request: str) -> str:
    """A cached `web_search` answer (JSON). `request` (provider, count and the query the model
    wrote) is hashed, so the key never carries the query itself."""
    return f"agentos:{org_id}:web_search:{hashlib.sha256(request.encode()).hexdigest()}"


def runner_calls_key(org_id: str, runner_id: str) -> str:
    """A runner's wake-up stream: an entry per call routed to it (the call's id only; the call
    itself is read from Postgres), read by the API process holding the runner's connection."""
    return f"agentos:{org_id}:runner:{runner_id}:calls"


def runner_online_key(org_id: str, runner_id: str) -> str:
    """Set (with a short expiry, renewed by each heartbeat) while a runner is connected; holds
    the connection's random token, so only that connection clears it."""
    return f"agentos:{org_id}:runner:{runner_id}:online"


def runner_result_key(org_id: str, call_id: str) -> str:
    """A list pushed once a routed call's result is stored; the waiting worker pops it."""
    return f"agentos:{org_id}:runner_call:{call_id}:result"
