"""Counting what one piece of code asks Postgres and Redis, and how often it waits for them.

Round trips, not milliseconds: on loopback each one costs ~0.2-1 ms of wall time (and CPU on
both sides), but counting them is deterministic, so a test can pin a hot path's count and a
later change cannot add one unnoticed.

Only code running in the context `counting()` was entered from is counted (child tasks and
threads started from it inherit the context); the process's background tasks are not.

- Postgres: a round trip is each time psycopg waits for the server's answer: a statement
  outside pipeline mode, BEGIN/COMMIT of `conn.transaction()`, a pipeline's fetch or sync (a
  statement sent in pipeline mode is counted as a statement, not a trip). The pool's liveness
  ping of an idle connection is left out (it depends on time, not on the code).
- Redis (asyncio client): each command outside a pipeline, each pipeline's execution, and each
  command a pipeline sends ahead of its batch (SCRIPT EXISTS for a script queued in it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio.client as redis_client
from psycopg import AsyncConnection
from psycopg.pq import TransactionStatus
from psycopg_pool import AsyncConnectionPool


@dataclass
class Trips:
    """What was counted: each round trip and each Postgres statement, labelled, in order."""

    pg: list[str] = field(default_factory=list)
    statements: list[str] = field(default_factory=list)
    redis: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"{len(self.pg)} Postgres round trips {self.pg}\n{len(self.statements)} statements "
                f"{self.statements}\n{len(self.redis)} Redis round trips {self.redis}")


_current: ContextVar[Trips | None] = ContextVar("round_trips", default=None)
_pinging: ContextVar[bool] = ContextVar("round_trips_pinging", default=False)

# psycopg generators that send without waiting for an answer (or do no I/O at all).
_NO_WAIT_IN_PIPELINE = ("BaseCursor._execute_gen", "BasePipeline._enter_gen")
_NO_IO = ("BaseConnection._set_autocommit_gen",)


def _label(query: Any) -> str:
    text = query.decode() if isinstance(query, bytes) else str(query)
    return " ".join(text.split())[:60]


def _pg_event(conn: AsyncConnection[Any], gen: Any) -> tuple[str | None, str | None]:
    """(statement, round trip) labels of one `conn.wait(gen)`; None where it is not one."""
    name = getattr(gen, "__qualname__", "")
    frame = getattr(gen, "gi_frame", None)
    local = frame.f_locals if frame is not None else {}
    in_pipeline = conn._pipeline is not None
    if name == "BaseCursor._execute_gen":
        statement = _label(local.get("query", "?"))
        return statement, None if in_pipeline else statement
    if name in _NO_WAIT_IN_PIPELINE or name in _NO_IO:
        return None, None
    if name == "BaseTransaction._enter_gen":
        return "BEGIN", "BEGIN"
    if name == "BaseTransaction._exit_gen":
        end = "COMMIT" if local.get("exc_val") is None else "ROLLBACK"
        return end, end
    if name in ("BaseConnection._commit_gen", "BaseConnection._rollback_gen"):
        if conn.pgconn.transaction_status == TransactionStatus.IDLE:
            return None, None  # the pool's `with conn` after a block that ended its transaction
        end = "COMMIT" if name.endswith("_commit_gen") else "ROLLBACK"
        return end, end
    return None, f"pipeline {name.rsplit('.', 1)[-1].strip('_')}"


@contextmanager
def counting() -> Iterator[Trips]:
    """Count the round trips of the code run inside the block (see the module docstring)."""
    trips = Trips()
    token = _current.set(trips)
    wait, check = AsyncConnection.wait, AsyncConnectionPool.check_connection
    command, pipe_execute, immediate = (redis_client.Redis.execute_command, redis_client.Pipeline.execute,
                                        redis_client.Pipeline.immediate_execute_command)

    async def counted_wait(self: AsyncConnection[Any], gen: Any, *args: Any, **kwargs: Any) -> Any:
        seen = _current.get()
        if seen is not None and not _pinging.get():
            statement, trip = _pg_event(self, gen)
            if statement is not None:
                seen.statements.append(statement)
            if trip is not None:
                seen.pg.append(trip)
        return await wait(self, gen, *args, **kwargs)

    async def counted_check(conn: AsyncConnection[Any]) -> None:
        reset = _pinging.set(True)
        try:
            await check(conn)
        finally:
            _pinging.reset(reset)

    async def counted_command(self: Any, *args: Any, **options: Any) -> Any:
        seen = _current.get()
        if seen is not None:
            seen.redis.append(str(args[0]))
        return await command(self, *args, **options)  # type: ignore[no-untyped-call]

    async def counted_pipeline(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen = _current.get()
        if seen is not None and self.command_stack:
            seen.redis.append("pipeline " + ",".join(str(c[0][0]) for c in self.command_stack))
        return await pipe_execute(self, *args, **kwargs)

    async def counted_immediate(self: Any, *args: Any, **options: Any) -> Any:
        seen = _current.get()
        if seen is not None:
            seen.redis.append(str(args[0]))
        return await immediate(self, *args, **options)  # type: ignore[no-untyped-call]

    AsyncConnection.wait = counted_wait  # type: ignore[method-assign]
    AsyncConnectionPool.check_connection = staticmethod(counted_check)  # type: ignore[method-assign]
    redis_client.Redis.execute_command = counted_command  # type: ignore[method-assign]
    redis_client.Pipeline.execute = counted_pipeline  # type: ignore[method-assign]
    redis_client.Pipeline.immediate_execute_command = counted_immediate  # type: ignore[method-assign]
    try:
        yield trips
    finally:
        AsyncConnection.wait = wait  # type: ignore[method-assign]
        AsyncConnectionPool.check_connection = staticmethod(check)  # type: ignore[method-assign]
        redis_client.Redis.execute_command = command  # type: ignore[method-assign]
        redis_client.Pipeline.execute = pipe_execute  # type: ignore[method-assign]
        redis_client.Pipeline.immediate_execute_command = immediate  # type: ignore[method-assign]
        _current.reset(token)
