"""Reading a session's events: replay after a given seq, then follow live.

A reader first catches up on its own (a non-blocking read of the session's Redis Stream, and
Postgres for whatever the stream lacks), then joins the process's `EventHub`, which hands it
live events from one multiplexed `XREAD`. Whenever the events skip a seq (the stream was trimmed
or deleted, an entry failed to publish, the reader fell behind) the missing events are read from
Postgres, which always holds every event up to the newest one the stream shows. While Redis is
unreachable the hub has every reader read Postgres instead, so a stream never ends short.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import psycopg

from core.event_hub import PAGE, EventHub, Follower
from core.events import Event
from core.ids import created_ms
from core.tenancy import AsyncPool, session_stream_key, tenant_tx

# A follower whose Postgres read failed reads again after this long.
STALE_RETRY_S = 1.0

# The lower bound on `ts` lets the partitioned log (weekly partitions by `ts`) skip every week
# before the session existed. It must be at or before every event of the session, or a replay
# would silently miss events. It comes from the session's id (`core.ids`: the ms its API host
# drew it, before any of its events), given as a parameter, so the planner prunes the weeks
# before it when it plans instead of planning all of them; an id not drawn by `new_id` (rows
# written by other means) falls back to the session row's `created_at`, a subquery in the same
# statement that prunes only at execution. An event's `ts` is the writer's clock (core.events,
# `datetime.now()` on an API or worker host), which is another host's clock than the one that
# drew the id, or than the database's for `created_at`: the day's margin covers any plausible
# skew between them, and costs at most one more weekly partition's index probe.
CLOCK_MARGIN: Final = timedelta(days=1)
LIST_EVENTS_SQL = """
SELECT seq, type, run_id, session_id, ts, data FROM run_events
WHERE session_id = %(session)s AND seq > %(after)s AND seq <= %(upto)s
  AND ts >= COALESCE(%(since)s::timestamptz,
                     (SELECT created_at - interval '1 day' FROM sessions WHERE id = %(session)s))
ORDER BY seq LIMIT %(limit)s
"""


def replay_params(session_id: str, after: int, upto: int | None = None, limit: int = PAGE,
                  since: datetime | None = None) -> dict[str, object]:
    """`LIST_EVENTS_SQL`'s parameters; `since` (no event of the session is older) defaults to
    the time in the session's id less `CLOCK_MARGIN`."""
    if since is None and (ms := created_ms(session_id)) is not None:
        since = datetime.fromtimestamp(ms / 1000, UTC) - CLOCK_MARGIN
    return {"session": session_id, "after": after, "upto": upto if upto is not None else 2**62,
            "limit": limit, "since": since}


async def from_postgres(
    pool: AsyncPool, org_id: str, session_id: str, after: int, upto: int | None = None, limit: int = PAGE,
    since: datetime | None = None,
) -> list[Event]:
    """Stored events with `after < seq <= upto`, oldest first (`since`: see `replay_params`)."""
    params = replay_params(session_id, after, upto, limit, since)
    async with tenant_tx(pool, org_id) as conn:
        rows = await (await conn.execute(LIST_EVENTS_SQL, params)).fetchall()
    return [Event.from_row(r) for r in rows]


KEEPALIVE: Final = None
"""What `EventReader.follow_with_keepalives` yields when the stream has been quiet for the
hub's keep-alive interval (an SSE response sends a comment line)."""


class EventReader:
    """Follows one session's events for one client, through the process's hub."""

    __slots__ = ("_hub", "_org_id", "_session_id", "_key")  # one per open stream

    def __init__(self, hub: EventHub, org_id: str, session_id: str) -> None:
        self._hub = hub
        self._org_id = org_id
        self._session_id = session_id
        self._key = session_stream_key(org_id, session_id)

    async def _fill(self, after: int, upto: int | None) -> AsyncIterator[list[Event]]:
        """Every stored event with `after < seq <= upto`, page by page."""
        while True:
            page = await from_postgres(self._hub.pool, self._org_id, self._session_id, after, upto)
            if page:
                yield page
            if len(page) < PAGE:
                return
            after = page[-1].seq

    async def _in_order(self, events: list[Event], last: int) -> AsyncIterator[list[Event]]:
        """`events` after seq `last`, each once, with any seq they skip read from Postgres: in
        batches of consecutive seqs (a page at most), each sent to a client in one write."""
        batch: list[Event] = []
        for event in events:
            if event.seq <= last:
                continue
            if event.seq > last + 1:
                if batch:
                    yield batch
                    batch = []
                async for missing in self._fill(last, event.seq - 1):
                    yield missing
                    last = missing[-1].seq
            batch.append(event)
            last = event.seq
            if len(batch) >= PAGE:
                yield batch
                batch = []
        if batch:
            yield batch

    async def follow(self, after: int) -> AsyncIterator[Event]:
        """Every event with seq > `after`, in order, each once. Never returns by itself, only
        when the hub closes or drains (the process shuts down; the client reconnects with its
        cursor)."""
        async for batch in self.follow_with_keepalives(after):
            if batch is not None:  # not KEEPALIVE
                for event in batch:
                    yield event

    async def follow_with_keepalives(self, after: int, newest: int | None = None, first: Event | None = None,
                                     published: asyncio.Future[Any] | None = None,
                                     ) -> AsyncGenerator[list[Event] | None, None]:
        """`follow` in batches (the events at hand at once, in order: what one write to a client
        carries), with `KEEPALIVE` (None) between them whenever the hub's timer says the stream
        has been quiet for its keep-alive interval.

        `newest`: the session's newest seq as the caller just read it from Postgres. A stream
        that starts there has nothing to read from Postgres first (one transaction less per
        stream opened: a burst of clients reconnecting is a burst of these); whatever comes
        later reaches it through the hub, and the hub's Postgres check covers an event that
        never reached Redis.

        `first`: the event with seq `after + 1` when the caller holds it already (the POST's
        `run.queued`, to the stream the same process opens right after it): it is yielded before
        anything is read. The reads are those without it (the first still names it, so an empty
        answer means what it always meant); it is not yielded twice.

        `published`: with `first`, the caller's publish of it (and of whatever it sent along), still
        in flight: awaited (never cancelled from here) after `first` is yielded and before anything
        is read, so the reads find `first` in Redis and need no Postgres round trip."""
        last = after
        if first is not None and first.seq == after + 1:
            yield [first]
            last = first.seq
        if published is not None:
            await asyncio.shield(published)
        cursor = after
        while True:  # catch up from Redis while it has a full page, then from Postgres
            streamed = await self._hub.read_once(self._key, cursor)
            if streamed:
                async for batch in self._in_order(streamed, last):
                    yield batch
                    last = batch[-1].seq
            if streamed is None or len(streamed) < PAGE:
                break
            cursor = last
        if not streamed and (newest is None or last < newest):
            # The stream is empty, gone or unreachable: Postgres has the truth.
            async for batch in self._fill(last, None):
                yield batch
                last = batch[-1].seq
        follower = self._hub.join(self._org_id, self._session_id, last)
        try:
            while not follower.closed:
                if not follower.ready:
                    await follower.waiter()
                    continue
                if follower.ping:
                    follower.ping = False
                    yield KEEPALIVE
                if follower.pending or follower.stale:
                    async for batch in self._next(follower):
                        yield batch
        finally:
            self._hub.leave(follower)

    async def _next(self, follower: Follower) -> AsyncIterator[list[Event]]:
        """What the hub gave `follower` since its last turn (Postgres first, when it is stale, and
        for any seq its events skip), in batches."""
        try:
            if follower.stale:
                follower.stale = False
                async for batch in self._fill(follower.last, None):
                    yield batch
                    follower.last = batch[-1].seq
            events, follower.pending = follower.pending, []
            async for batch in self._in_order(events, follower.last):
                yield batch
                follower.last = batch[-1].seq
        except psycopg.OperationalError as exc:  # the pool is busy (PoolTimeout) or Postgres away
            # Keep the stream (keep-alives go on) and read again soon, instead of ending it: what
            # was not yet passed on is in Postgres after `follower.last`.
            self._hub.warn("fill", "reading missed events from Postgres failed (%s); the stream stays "
                                   "open and reads again in %.1f s", exc, STALE_RETRY_S)
            follower.stale = True
            await asyncio.sleep(STALE_RETRY_S)
