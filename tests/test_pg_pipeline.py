"""A batched transaction goes to Postgres in one write (`core.pg_pipeline`): psycopg's own
pipeline wrote each statement as it was queued (ten writes, ten wake-ups of the backend, for a
batch of six). Counted on the connection's socket (the kernel's count of data segments sent;
libpq sets TCP_NODELAY, so each write is a segment), on the real embedded Postgres."""

from __future__ import annotations

import asyncio
import socket
import struct
from typing import Any

import psycopg
import pytest

from core import pg_pipeline
from core.db import open_pool
from core.settings import Settings
from core.tenancy import tenant_batch, tenant_pipeline_tx, tenant_tx
from tests.helpers import Org

# struct tcp_info (linux/tcp.h): tcpi_data_segs_out, after 152 bytes of earlier fields.
_DATA_SEGS_OUT = struct.Struct("=I")
_DATA_SEGS_OUT_AT = 156


def _segments_sent(conn: psycopg.AsyncConnection[Any]) -> int:
    with socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as sock:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(_DATA_SEGS_OUT.unpack_from(info, _DATA_SEGS_OUT_AT)[0])


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_the_installed_psycopg_has_what_the_one_write_pipeline_overrides() -> None:
    assert pg_pipeline.SUPPORTED


def test_a_batch_of_six_statements_is_one_write(org: Org, settings: Settings) -> None:
    statements = [("SELECT %s::int AS x", (i,)) for i in range(6)]

    async def scenario() -> tuple[list[list[Any]], list[int]]:
        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
        try:
            async with pool.connection() as conn:
                if conn.info.host.startswith("/"):
                    pytest.skip("the test database is reached over a Unix socket")
            writes, rows = [], []
            for _ in range(3):
                async with pool.connection() as conn:  # the pool's one connection, as the batch gets it
                    before = _segments_sent(conn)
                rows = await tenant_batch(pool, org.id, *statements)
                async with pool.connection() as conn:
                    writes.append(_segments_sent(conn) - before)
            return rows, writes
        finally:
            await pool.close()

    rows, writes = _run(scenario())
    assert [[r["x"] for r in rs] for rs in rows] == [[i] for i in range(6)]
    assert writes == [1, 1, 1]  # BEGIN, the org, the six, COMMIT and the Sync together (psycopg alone: 10)


def test_a_read_mid_batch_sends_what_is_queued_and_the_batch_goes_on(org: Org, settings: Settings) -> None:
    """`tenant_pipeline_tx` reads a result mid-way (the POST does, to decide before its COMMIT):
    the statements queued so far go out then, and the rest after."""
    org.create_agent(name="mid-batch")

    async def scenario() -> tuple[Any, Any, list[str]]:
        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
        try:
            async with tenant_pipeline_tx(pool, org.id) as conn:
                await conn.execute("UPDATE agents SET name = 'mid-batch-2' WHERE name = 'mid-batch'")
                counted = await conn.execute("SELECT count(*) AS n FROM agents WHERE name = 'mid-batch-2'")
                first = await counted.fetchone()
                later = await conn.execute("SELECT %s::text AS t", ("after the read",))
            async with tenant_tx(pool, org.id) as conn:
                names = [r["name"] for r in await (await conn.execute("SELECT name FROM agents")).fetchall()]
            return first, await later.fetchone(), names
        finally:
            await pool.close()

    first, later, names = _run(scenario())
    assert first["n"] == 1 and later["t"] == "after the read"
    assert "mid-batch-2" in names


def test_a_batch_past_libpqs_buffer_and_a_failing_batch(org: Org, settings: Settings) -> None:
    """A batch larger than libpq's 64 KiB threshold (libpq then writes part of it early) comes back
    whole; a failing statement raises its own error, undoes the batch, and the connection is
    reused as it came."""
    big = "x" * 300_000

    async def scenario() -> tuple[list[list[Any]], Any]:
        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
        try:
            rows = await tenant_batch(pool, org.id, *[("SELECT length(%s::text) AS n", (big,)) for _ in range(4)])
            with pytest.raises(psycopg.errors.DivisionByZero):
                await tenant_batch(pool, org.id, ("SELECT 1", ()), ("SELECT 1 / 0", ()), ("SELECT 2", ()))
            async with pool.connection() as conn:
                state = (conn.autocommit, conn.info.transaction_status, conn._pipeline)
            return rows, state
        finally:
            await pool.close()

    rows, (autocommit, status, pipeline) = _run(scenario())
    assert [rs[0]["n"] for rs in rows] == [300_000] * 4
    assert autocommit is False and status == psycopg.pq.TransactionStatus.IDLE and pipeline is None
