"""The pool pings a connection before handing it out only when it may have gone stale: one that
sat idle past `core.db.IDLE_BEFORE_CHECK_S` (after a Postgres restart every idle connection is
dead). One just returned, or just opened and configured, goes out as it is: a ping there is a
round trip on the caller's path for nothing (a pool growing under load paid one per new
connection, on the next transaction)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from psycopg_pool import AsyncConnectionPool

import core.db
from core.db import open_pool
from core.settings import Settings


def test_a_fresh_connection_goes_out_unpinged_and_an_idle_one_is_pinged(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    pinged: list[int] = []
    original = AsyncConnectionPool.check_connection

    async def counted(conn: Any) -> None:
        pinged.append(id(conn))
        await original(conn)

    monkeypatch.setattr(AsyncConnectionPool, "check_connection", staticmethod(counted))

    async def scenario() -> list[int]:
        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
        try:
            counts = []
            async with pool.connection() as conn:  # opened moments ago
                await conn.execute("SELECT 1")
            counts.append(len(pinged))
            async with pool.connection() as conn:  # returned moments ago
                await conn.execute("SELECT 1")
            counts.append(len(pinged))
            await asyncio.sleep(core.db.IDLE_BEFORE_CHECK_S + 0.1)
            async with pool.connection() as conn:  # idle past the limit
                await conn.execute("SELECT 1")
            counts.append(len(pinged))
            return counts
        finally:
            await pool.close()

    assert asyncio.run(scenario()) == [0, 0, 1]
