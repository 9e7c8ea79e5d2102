"""Reading a session's events: replay after a given seq, then follow live.

Live delivery comes from the session's Redis Stream (blocking `XREAD`). Whenever the stream
skips a seq (it was trimmed, deleted, or an entry failed to publish) the missing events are
read from Postgres, which always holds every event up to the newest one the stream shows.
While Redis is unreachable the reader polls Postgres instead, so a stream never ends short.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.events import Event
from core.tenancy import AsyncPool, session_stream_key, tenant_tx

log = logging.getLogger("agentos.events")

LIST_EVENTS_SQL = """
SELECT seq, type, run_id, session_id, ts, data FROM run_events
WHERE session_id = %s AND seq > %s AND seq <= %s ORDER BY seq LIMIT %s
"""
PAGE = 500
# Blocking reads must end before the client's socket timeout; Postgres is checked in between.
POLL_WHEN_REDIS_DOWN_S = 0.5


async def from_postgres(
    pool: AsyncPool, org_id: str, session_id: str, after: int, upto: int | None = None, limit: int = PAGE
) -> list[Event]:
    """Stored events with `after < seq <= upto`, oldest first."""
    ceiling = upto if upto is not None else 2**62
    async with tenant_tx(pool, org_id) as conn:
        rows = await (await conn.execute(LIST_EVENTS_SQL, (session_id, after, ceiling, limit))).fetchall()
    return [Event.from_row(r) for r in rows]


class EventReader:
    """Follows one session's events for one client."""

    def __init__(
        self, pool: AsyncPool, redis: aioredis.Redis, org_id: str, session_id: str, *, block_s: float
    ) -> None:
        self._pool = pool
        self._redis = redis
        self._org_id = org_id
        self._session_id = session_id
        self._key = session_stream_key(org_id, session_id)
        self._block_ms = max(int(block_s * 1000), 10)

    async def _fill(self, after: int, upto: int | None) -> AsyncIterator[Event]:
        """Every stored event with `after < seq <= upto`, page by page."""
        while True:
            page = await from_postgres(self._pool, self._org_id, self._session_id, after, upto)
            for event in page:
                yield event
            if len(page) < PAGE:
                return
            after = page[-1].seq

    async def _read_stream(self, after: int, block: bool) -> list[Event] | None:
        """Entries after `after` from Redis; None when Redis cannot be reached."""
        try:
            reply: Any = await self._redis.xread(
                {self._key: f"{after}-0"}, count=PAGE, block=self._block_ms if block else None
            )
        except (RedisError, OSError) as exc:
            log.warning("reading events of session %s from Redis failed: %s", self._session_id, exc)
            return None
        if not reply:
            return []
        entries = reply[self._key.encode()] if isinstance(reply, dict) else reply[0][1]
        return [Event.from_json(fields[b"e"]) for _id, fields in entries]

    async def follow(self, after: int) -> AsyncIterator[Event]:
        """Every event with seq > `after`, in order, each once; never returns by itself."""
        last = after
        block = False  # the first read only looks: what Redis lacks is checked in Postgres at once
        while True:
            streamed = await self._read_stream(last, block)
            if streamed is None:
                async for event in self._fill(last, None):
                    yield event
                    last = event.seq
                await asyncio.sleep(POLL_WHEN_REDIS_DOWN_S)
                continue
            if not streamed:
                # Nothing new in Redis: catch up from Postgres in case the stream lost entries.
                async for event in self._fill(last, None):
                    yield event
                    last = event.seq
                block = True
                continue
            for event in streamed:
                if event.seq <= last:
                    continue
                if event.seq > last + 1:
                    async for missing in self._fill(last, event.seq - 1):
                        yield missing
                        last = missing.seq
                yield event
                last = event.seq
            block = True
