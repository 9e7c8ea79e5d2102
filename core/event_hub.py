"""One per API process: reads every followed session stream with a few blocking `XREAD`s and
hands the events to the followers in process, so idle SSE clients cost no Redis connection each.

The followed keys are split over readers, each one blocking `XREAD` over at most
`keys_per_read` keys (`AGENTOS_EVENTS__KEYS_PER_READ`, 1,000) and a wake stream of its own: the
cost of a read (Redis registers and unregisters the client on every key it names; the hub packs
and re-issues the command after every batch of events) grows with its keys, and every event
delivered waits for it, so an event wakes one reader of a thousand keys instead of one of ten
thousand. A new key goes to the reader with the fewest keys, or to a new reader when every one
has `keys_per_read`, up to `READERS`; past that they share the keys. A key stays with its reader
until its last follower leaves, and a reader with no keys left ends: the cursor of a key (the
highest seq the hub has seen there) lives with the key, and a follower that joins later than the
cursor reads Postgres, so where a key is read changes nothing for ordering or gaps.

`EventHub` owns a small Redis connection pool of its own (`CONNECTIONS`): one connection per
reader, the rest for the short catch-up reads of followers that just arrived. A follower joins a
stream key at the seq it has caught up to. Adding a key while its reader blocks appends an entry
to the reader's wake stream, which is part of each of its reads, so the read returns and starts
again with the new key (an entry added before the read blocks is seen too: ids, not time, decide).

The hub also keeps idle streams alive: one timer for all followers marks each due a keep-alive
every `keepalive_s` and wakes it (`Follower.ping`), so an idle stream is one waiting coroutine,
not a sleeping task of its own. `drain()` ends every follower at once (the server is shutting
down; clients reconnect elsewhere with their cursor).

Postgres stays the record: a check every `check_s` (every `POLL_WHEN_REDIS_DOWN_S` while Redis
is down, and at once when it goes down or comes back) reads, in one query per org, the newest
seq of every followed session and tells each follower that is behind to read Postgres. That
covers events that never reached Redis and the whole outage; Redis errors are logged once per
`LOG_EVERY_S`, not per read.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import defaultdict
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.events import Event
from core.settings import Settings
from core.tenancy import AsyncPool, event_hub_wake_key, session_stream_key, tenant_tx

log = logging.getLogger("agentos.events")

PAGE = 500
# Followed keys per blocking XREAD (the default of `AGENTOS_EVENTS__KEYS_PER_READ`).
KEYS_PER_READ = 1000
# Blocking XREADs of one hub at most: past READERS x keys_per_read followed sessions the readers
# share the keys (more per read) instead of holding more connections.
READERS = 16
# Redis connections of one hub: one per reader plus short catch-up reads. The bound of what any
# number of followers costs an API process in Redis connections. They carry CLIENT_NAME.
CONNECTIONS = READERS + 3
CLIENT_NAME = "agentos-events"
POLL_WHEN_REDIS_DOWN_S = 0.5
LOG_EVERY_S = 30.0
# A follower that falls this far behind (a client not reading) drops its buffer and reads
# Postgres when it next runs, instead of holding events without limit.
MAX_PENDING = 2000
SESSION_SEQS_SQL = "SELECT id, event_seq FROM sessions WHERE id = ANY(%s)"
SEQS_PER_QUERY = 1000
# The keep-alive timer's tick, at most: a keep-alive goes out at most this late.
KEEPALIVE_TICK_S = 0.25


@dataclass(eq=False, slots=True)
class Follower:
    """One client following one session: where it is, and what the hub has for it. Ten thousand
    idle ones live in one process, so it is small: slots, and a future only while it waits."""

    org_id: str
    session_id: str
    key: str
    last: int
    pending: list[Event] = field(default_factory=list)
    # Postgres may hold events this follower has not got (missed, dropped or never published).
    stale: bool = False
    closed: bool = False
    # A keep-alive is due (the hub's timer); the reader clears it when it passes it on.
    ping: bool = False
    _waiter: asyncio.Future[None] | None = None

    @property
    def ready(self) -> bool:
        """Something for the reader: events, a Postgres read, a keep-alive or the end."""
        return bool(self.pending) or self.stale or self.ping or self.closed

    def waiter(self) -> asyncio.Future[None]:
        """A future that `wake()` completes: await it when not `ready` (a bare future, not a
        coroutine: one frame less per idle stream)."""
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter

    def wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def deliver(self, events: list[Event]) -> None:
        if len(self.pending) + len(events) > MAX_PENDING:
            self.pending.clear()
            self.stale = True
        else:
            self.pending.extend(events)
        self.wake()

    def poke(self) -> None:
        self.stale = True
        self.wake()

    def end(self) -> None:
        self.closed = True
        self.wake()

    @property
    def seen(self) -> int:
        """The newest seq this follower has or holds."""
        return max(self.last, self.pending[-1].seq if self.pending else 0)


@dataclass(eq=False, slots=True)
class _Stream:
    key: bytes  # the key as an encoded XREAD argument
    cursor: int  # the newest seq the hub has read from this key
    reader: _Reader
    # A list: most keys have one follower (a set of one costs 216 bytes, a list 64).
    followers: list[Follower] = field(default_factory=list)
    _id_arg: tuple[int, bytes] = (-1, b"")

    def id_arg(self) -> bytes:
        if self._id_arg[0] != self.cursor:
            self._id_arg = (self.cursor, _bulk(b"%d-0" % self.cursor))
        return self._id_arg[1]


def _bulk(value: bytes) -> bytes:
    """One argument of a Redis command, as the protocol sends it."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


class _Warner:
    """Logs a degraded path once per interval with a count of what it skipped."""

    def __init__(self, every_s: float) -> None:
        self._every = every_s
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = defaultdict(int)

    def warn(self, topic: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if now - self._last.get(topic, -self._every) < self._every:
            self._skipped[topic] += 1
            return
        skipped = self._skipped.pop(topic, 0)
        self._last[topic] = now
        log.warning(message + (f" ({skipped} more since the last report)" if skipped else ""), *args)


class EventHub:
    """Live events for every follower in this process. Use `async with EventHub(...)` or
    `open()` / `aclose()`; build it per process (`from_settings`), never at import."""

    def __init__(self, pool: AsyncPool, redis: aioredis.Redis, *, block_s: float, check_s: float,
                 keepalive_s: float | None = None, keys_per_read: int = KEYS_PER_READ) -> None:
        self.pool = pool
        self.redis = redis
        self._block_ms = max(int(block_s * 1000), 10)
        self._keys_per_read = max(keys_per_read, 1)
        self._check_s = check_s
        self._keepalive_s = keepalive_s
        # Every follower, the longest without a keep-alive first (dicts keep insertion order).
        self._quiet: dict[Follower, float] = {}
        self._draining = False
        self._streams: dict[str, _Stream] = {}
        self._readers: list[_Reader] = []
        self._check_now = asyncio.Event()
        self._redis_down = False
        self._open = False
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[Any]] = set()
        self._warner = _Warner(LOG_EVERY_S)
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, pool: AsyncPool) -> EventHub:
        """A hub with its own bounded Redis pool (waiting for a free connection, never failing
        with "Too many connections"). Reads block for less than the socket timeout."""
        timeout = settings.redis.socket_timeout_s
        redis_pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis.url, max_connections=CONNECTIONS, timeout=timeout,
            socket_timeout=timeout, socket_connect_timeout=timeout, client_name=CLIENT_NAME,
        )
        block_s = min(max(timeout - 1.0, timeout / 2), 10.0)
        return cls(pool, aioredis.Redis(connection_pool=redis_pool), block_s=block_s, check_s=max(block_s, 1.0),
                   keepalive_s=settings.events.keepalive_s, keys_per_read=settings.events.keys_per_read)

    async def open(self) -> EventHub:
        self._open = True
        for reader in self._readers:  # keys followed before the hub opened
            reader.start()
        self._tasks = [asyncio.create_task(self._check_loop(), name="event-hub-check")]
        if self._keepalive_s is not None:
            self._tasks.append(asyncio.create_task(self._keepalive_loop(self._keepalive_s), name="event-hub-keepalive"))
        return self

    def drain(self) -> None:
        """End every follower now and any that joins later (the server is shutting down), but
        keep reading: streams still catching up finish their page first."""
        self._draining = True
        for follower in list(self._quiet):
            follower.end()

    async def aclose(self) -> None:
        """Stop reading, end every follower (clients reconnect with `Last-Event-ID`), close Redis."""
        self._closed = True
        readers = [r.task for r in self._readers if r.task is not None]
        for task in [*self._tasks, *readers, *self._background]:
            task.cancel()
        await asyncio.gather(*self._tasks, *readers, *self._background, return_exceptions=True)
        self._tasks = []
        self._readers.clear()
        for stream in self._streams.values():
            for follower in stream.followers:
                follower.end()
        self._streams.clear()
        self._quiet.clear()
        await self.redis.aclose()

    async def __aenter__(self) -> EventHub:
        return await self.open()

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    @property
    def followers(self) -> int:
        return sum(len(s.followers) for s in self._streams.values())

    def warn(self, topic: str, message: str, *args: object) -> None:
        """Log a degraded path of followers once per `LOG_EVERY_S` (with a count), not per follower."""
        self._warner.warn(topic, message, *args)

    @property
    def draining(self) -> bool:
        """True once `drain()` ran: followers end as soon as they join."""
        return self._draining

    @property
    def degraded(self) -> bool:
        """True while the hub's reads cannot reach Redis (followers read Postgres)."""
        return self._redis_down

    @property
    def readers(self) -> list[int]:
        """The number of keys each of the hub's blocking reads names."""
        return [len(r.streams) for r in self._readers]

    # --- followers ------------------------------------------------------------------------

    async def read_once(self, key: str, after: int) -> list[Event] | None:
        """Up to `PAGE` entries of `key` after seq `after`, without blocking; None when Redis
        cannot answer."""
        if self._redis_down:  # known to be down: do not make every new follower wait for a timeout
            return None
        try:
            reply: Any = await self.redis.xread({key: f"{after}-0"}, count=PAGE)
        except (RedisError, OSError) as exc:
            self._warner.warn("catch-up", "reading event streams from Redis failed (%s); "
                                          "followers read Postgres instead", exc)
            return None
        return self._parse(str(key), [entry for entries in _entries(reply).values() for entry in entries])

    def join(self, org_id: str, session_id: str, last: int) -> Follower:
        """Start handing this session's live events (after seq `last`) to a new follower."""
        key = session_stream_key(org_id, session_id)
        follower = Follower(org_id, session_id, key, last)
        if self._closed or self._draining:
            follower.closed = True
            return follower
        stream = self._streams.get(key)
        if stream is None:
            stream = self._streams[key] = _Stream(_bulk(key.encode()), last, self._reader_for_one_more())
            stream.reader.add(key, stream)
        elif stream.cursor > last:
            follower.stale = True  # the hub already passed events this follower still needs
        stream.followers.append(follower)
        self._quiet[follower] = time.monotonic()
        return follower

    def leave(self, follower: Follower) -> None:
        self._quiet.pop(follower, None)
        stream = self._streams.get(follower.key)
        if stream is None:
            return
        with suppress(ValueError):
            stream.followers.remove(follower)
        if not stream.followers:
            del self._streams[follower.key]
            # Its reader stops naming it from its next read (and ends once it names none).
            del stream.reader.streams[follower.key]

    # --- the readers ------------------------------------------------------------------------

    def _reader_for_one_more(self) -> _Reader:
        """The reader with the fewest keys, or a new one when each has `keys_per_read` (and
        there are fewer than `READERS`)."""
        reader = min(self._readers, key=lambda r: len(r.streams), default=None)
        if reader is None or (len(reader.streams) >= self._keys_per_read and len(self._readers) < READERS):
            reader = _Reader(self)
            self._readers.append(reader)
            if self._open:
                reader.start()
        return reader

    def _read_failed(self, exc: Exception) -> None:
        if not self._redis_down:
            self._redis_down = True
            self._check_now.set()  # nothing may wait for Redis now: who is behind reads Postgres
        self._warner.warn("read", "reading event streams from Redis failed (%s); following %d "
                                  "streams from Postgres every %.1f s until it answers",
                          exc, len(self._streams), POLL_WHEN_REDIS_DOWN_S)

    def _read_answered(self) -> None:
        if self._redis_down:
            self._redis_down = False
            log.info("reading event streams from Redis again")
            self._check_now.set()  # whatever happened meanwhile is in Postgres

    def _parse(self, key: str, entries: list[Any]) -> list[Event]:
        """The events of stream entries; a malformed one is skipped (followers see the hole in
        the seqs and read it from Postgres)."""
        events: list[Event] = []
        for entry_id, fields in entries:
            try:
                events.append(Event.from_json(_field(fields, b"e")))
            except (KeyError, ValueError, TypeError) as exc:
                self._warner.warn("entry", "skipping malformed entry %r of %s: %r", entry_id, key, exc)
        return events

    # --- keep-alives ----------------------------------------------------------------------

    async def _keepalive_loop(self, every_s: float) -> None:
        """One timer for every follower: each is due a keep-alive `every_s` after its last one
        (or its join). A tick looks only at the front of `_quiet`, the followers due soonest, so
        its cost is the keep-alives it marks, not the number of idle streams."""
        tick = min(every_s / 4, KEEPALIVE_TICK_S)
        while True:
            await asyncio.sleep(tick)
            self._mark_keepalives(every_s, time.monotonic())

    def _mark_keepalives(self, every_s: float, now: float) -> None:
        due = []
        for follower, since in self._quiet.items():
            if now - since < every_s:
                break
            due.append(follower)
        for follower in due:
            del self._quiet[follower]
            self._quiet[follower] = now  # to the back: due again in `every_s`
            follower.ping = True
            follower.wake()

    # --- the Postgres check ---------------------------------------------------------------

    async def _check_loop(self) -> None:
        """Pokes only the followers that are behind Postgres, found with one query per org: when
        Redis goes down or comes back, ten thousand followers must not all read Postgres at
        once (the pool would time them out)."""
        while True:
            with suppress(TimeoutError):
                async with asyncio.timeout(POLL_WHEN_REDIS_DOWN_S if self._redis_down else self._check_s):
                    await self._check_now.wait()
            self._check_now.clear()
            by_org: dict[str, dict[str, list[Follower]]] = defaultdict(lambda: defaultdict(list))
            for stream in self._streams.values():
                for follower in stream.followers:
                    by_org[follower.org_id][follower.session_id].append(follower)
            for org_id, sessions in by_org.items():
                try:
                    seqs = await self._session_seqs(org_id, sessions)
                except Exception as exc:  # Postgres trouble: followers wait for it like everyone
                    self._warner.warn("check", "checking followed sessions in Postgres failed: %s", exc)
                    continue
                for session_id, seq in seqs:
                    for follower in sessions.get(session_id, ()):
                        if seq > follower.seen:
                            follower.poke()

    async def _session_seqs(self, org_id: str, session_ids: Iterable[str]) -> list[tuple[str, int]]:
        ids = list(session_ids)
        found: list[tuple[str, int]] = []
        async with tenant_tx(self.pool, org_id) as conn:
            for start in range(0, len(ids), SEQS_PER_QUERY):
                rows = await (await conn.execute(SESSION_SEQS_SQL, (ids[start:start + SEQS_PER_QUERY],))).fetchall()
                found.extend((str(r["id"]), int(r["event_seq"])) for r in rows)
        return found


class _Reader:
    """One blocking XREAD over a share of the hub's keys and a wake stream of its own, in a task
    that ends when the reader names no key any more."""

    __slots__ = ("hub", "streams", "task", "_wake_key", "_wake_id", "_reading", "_wake_sent")

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub
        self.streams: dict[str, _Stream] = {}
        self.task: asyncio.Task[None] | None = None
        self._wake_key = event_hub_wake_key(secrets.token_hex(8))
        self._wake_id = b"0-0"
        self._reading = False
        self._wake_sent = False

    def start(self) -> None:
        self.task = asyncio.create_task(self._loop(), name="event-hub-read")

    def add(self, key: str, stream: _Stream) -> None:
        self.streams[key] = stream
        self._wake()

    def _wake(self) -> None:
        """Make a blocked XREAD return so that the next one includes the new key."""
        if not self._reading or self._wake_sent:
            return
        self._wake_sent = True
        task = asyncio.create_task(self._send_wake())
        self.hub._background.add(task)
        task.add_done_callback(self.hub._background.discard)

    async def _send_wake(self) -> None:
        try:
            async with self.hub.redis.pipeline(transaction=False) as pipe:
                pipe.xadd(self._wake_key, {"w": b"1"}, maxlen=8, approximate=False)
                pipe.expire(self._wake_key, 3600)
                await pipe.execute()
        except (RedisError, OSError) as exc:  # the read loop reports the outage; it retries soon
            log.debug("waking the event reader failed: %s", exc)

    async def _loop(self) -> None:
        # Ends with no key left, at once (no await between the test and the removal): the hub
        # gives a new key to a reader in its list only.
        while self.streams:
            try:
                await self._step()
            except Exception:  # a bug must not silence every stream: the Postgres check goes on too
                log.exception("the event hub's read failed; trying again")
                await asyncio.sleep(POLL_WHEN_REDIS_DOWN_S)
        self.hub._readers.remove(self)

    async def _step(self) -> None:
        self._reading, self._wake_sent = True, False
        try:
            reply: Any = await self._xread()
        except (RedisError, OSError) as exc:
            self._reading = False
            self.hub._read_failed(exc)
            await asyncio.sleep(POLL_WHEN_REDIS_DOWN_S)
            return
        self._reading = False
        self.hub._read_answered()
        self._dispatch(reply)

    async def _xread(self) -> Any:
        """One blocking XREAD over this reader's keys and its wake stream, as the raw reply.

        The command is packed here from arguments encoded once per key: redis-py's generic
        packing costs about 6 ms per 1,000 keys, which every delivered event would wait for."""
        streams = list(self.streams.values())
        head = b"".join([b"*%d\r\n" % (6 + 2 * (len(streams) + 1)), _bulk(b"XREAD"), _bulk(b"COUNT"),
                         _bulk(b"%d" % PAGE), _bulk(b"BLOCK"), _bulk(b"%d" % self.hub._block_ms), _bulk(b"STREAMS")])
        packed = b"".join([head, _bulk(self._wake_key.encode()), *(s.key for s in streams),
                           _bulk(self._wake_id), *(s.id_arg() for s in streams)])
        pool = self.hub.redis.connection_pool
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(packed)
            return await conn.read_response()
        except BaseException:
            # Cancelled or failed mid-read: the reply would arrive on a reused connection.
            await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)

    def _dispatch(self, reply: Any) -> None:
        for raw_key, entries in _entries(reply).items():
            key = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
            if key == self._wake_key:
                last_id = entries[-1][0]
                self._wake_id = last_id if isinstance(last_id, bytes) else str(last_id).encode()
                continue
            # A key no longer followed here (left, perhaps followed again through another reader
            # at its own cursor) is not this reader's to deliver.
            stream = self.streams.get(key)
            if stream is None or not entries:
                continue
            events = self.hub._parse(key, entries)
            last_id = entries[-1][0]
            stream.cursor = max(stream.cursor, int((last_id.decode() if isinstance(last_id, bytes) else last_id)
                                                   .split("-")[0]))
            if events:
                for follower in stream.followers:
                    follower.deliver(events)


def _entries(reply: Any) -> dict[Any, list[Any]]:
    """An XREAD reply as {key: [(id, fields), ...]}, whatever shape the protocol gave it
    (RESP2: a list of [key, entries]; RESP3: a dict whose values may wrap the entries once)."""
    if not reply:
        return {}
    pairs = reply.items() if isinstance(reply, dict) else ((item[0], item[1]) for item in reply)
    found: dict[Any, list[Any]] = {}
    for key, value in pairs:
        if len(value) == 1 and isinstance(value[0], list) and (not value[0] or isinstance(value[0][0], (list, tuple))):
            value = value[0]
        found[key] = list(value)
    return found


def _field(fields: Any, name: bytes) -> Any:
    """A field of a stream entry, parsed (a dict) or raw (a flat [name, value, ...] list)."""
    if isinstance(fields, dict):
        return fields[name]
    return dict(zip(fields[::2], fields[1::2], strict=True))[name]
