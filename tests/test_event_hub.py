"""The process's event hub: followers of one session share it and each gets every event once, in
order, whatever its cursor; with Redis down they read Postgres (and the outage is logged once,
not per read); once Redis is back the hub reads it again."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from agentos.stack.redis import EmbeddedRedis
from api.app import create_app
from core import event_hub, event_reader, events
from core.db import open_pool
from core.event_hub import EventHub
from core.event_reader import EventReader
from core.settings import Settings
from core.tenancy import AsyncPool, session_stream_key, tenant_tx
from tests.helpers import RsaKeys, make_settings, new_org

pytestmark = pytest.mark.timeout(90)

SESSIONS = 4


@dataclass
class Setup:
    settings: Settings
    redis: EmbeddedRedis
    org_id: str
    # (session id, id of its queued run) for each of SESSIONS sessions of the org.
    sessions: list[tuple[str, str]]

    @property
    def session_id(self) -> str:
        return self.sessions[0][0]

    @property
    def run_id(self) -> str:
        return self.sessions[0][1]

    @property
    def other_session_id(self) -> str:
        return self.sessions[1][0]

    @property
    def other_run_id(self) -> str:
        return self.sessions[1][1]


@pytest.fixture
def setup(stack: StackUrls, rsa_keys: RsaKeys, tmp_path: Path) -> Iterator[Setup]:
    """SESSIONS sessions with one queued run each (its `run.queued` is seq 1) on a Redis of this
    test's own, which no worker reads: only the test writes events."""
    own = EmbeddedRedis(tmp_path, durable=False)
    own.start()
    settings = make_settings(stack, rsa_keys, redis={"url": own.url, "socket_timeout_s": 1.0})
    try:
        with TestClient(create_app(settings)) as client:
            org = new_org(client)
            agent_id = str(org.create_agent()["id"])
            sessions: list[tuple[str, str]] = []
            for _ in range(SESSIONS):
                session = org.create_session(agent_id)
                r = client.post(f"/v1/sessions/{session['id']}/runs", json={"input": "hi"}, headers=org.headers)
                assert r.status_code == 202, r.text
                sessions.append((str(session["id"]), str(r.json()["id"])))
        yield Setup(settings, own, org.id, sessions)
    finally:
        own.stop()


async def _emit(pool: AsyncPool, s: Setup, count: int, *, publish: bool, other: bool = False,
                session: int | None = None) -> list[events.Event]:
    """`count` events stored in Postgres (in the other session when `other`, in `sessions[session]`
    when given), and published to Redis when `publish`."""
    session_id, run_id = s.sessions[session if session is not None else 1 if other else 0]
    items = [(run_id, events.RUN_WARNING, {"code": "TEST", "message": str(i)}) for i in range(count)]
    async with tenant_tx(pool, s.org_id) as conn:
        stored = await events.append(conn, session_id, items)
    if publish:
        await _publish(s, stored)
    return stored


async def _publish(s: Setup, stored: list[events.Event]) -> None:
    client = aioredis.Redis.from_url(s.settings.redis.url)
    try:
        await events.publish(client, s.org_id, stored, maxlen=1000, ttl_s=600)
    finally:
        await client.aclose()


async def _until(check: Callable[[], bool], limit_s: float = 30) -> None:
    for _ in range(int(limit_s / 0.05)):
        if check():
            return
        await asyncio.sleep(0.05)


def _collect(hub: EventHub, s: Setup, after: int, into: list[int], *, other: bool = False,
             session: int | None = None) -> asyncio.Task[Any]:
    session_id = s.sessions[session if session is not None else 1 if other else 0][0]

    async def run() -> None:
        async for event in EventReader(hub, s.org_id, session_id).follow(after):
            into.append(event.seq)

    return asyncio.create_task(run())


def test_followers_of_one_session_share_one_key_and_each_gets_every_event_once(setup: Setup):
    async def scenario() -> tuple[list[int], list[int], list[int], int]:
        pool = await open_pool(setup.settings.database, name="test-hub")
        try:
            async with EventHub.from_settings(setup.settings, pool) as hub:
                early: list[int] = []
                tasks = [_collect(hub, setup, 0, early)]
                await _emit(pool, setup, 5, publish=True)  # seqs 2..6
                await _until(lambda: len(early) == 6)
                # Joins after the hub passed seq 6, from a cursor before it, and one from "now".
                late: list[int] = []
                live: list[int] = []
                tasks += [_collect(hub, setup, 2, late), _collect(hub, setup, 6, live)]
                await _until(lambda: len(late) == 4 and hub.followers == 3)
                followers = hub.followers
                await _emit(pool, setup, 3, publish=True)  # seqs 7..9
                await _until(lambda: len(early) == 9 and len(late) == 7 and len(live) == 3)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                assert hub.followers == 0
        finally:
            await pool.close()
        return early, late, live, followers

    early, late, live, followers = asyncio.run(scenario())
    assert followers == 3
    assert early == list(range(1, 10))
    assert late == list(range(3, 10))
    assert live == [7, 8, 9]


def test_a_reader_hands_over_the_events_at_hand_in_one_batch_gaps_filled_in_order(setup: Setup):
    """What a stream sends in one write: the events a read brought at once, in order, with a gap
    (an event that never reached Redis) filled from Postgres in its place, and the live events a
    publish added together."""
    async def scenario() -> list[list[int] | None]:
        pool = await open_pool(setup.settings.database, name="test-hub")
        try:
            async with EventHub.from_settings(setup.settings, pool) as hub:
                stored = await _emit(pool, setup, 6, publish=False)  # seqs 2..7
                await _publish(setup, stored[:2] + stored[3:])  # seq 4 never reached Redis
                follow = EventReader(hub, setup.org_id, setup.session_id).follow_with_keepalives(1)
                seen: list[list[int] | None] = [[e.seq for e in await anext(follow)]]
                seen.append([e.seq for e in await anext(follow)])
                seen.append([e.seq for e in await anext(follow)])
                live = asyncio.ensure_future(anext(follow))
                await _until(lambda: hub.followers == 1)
                # Seqs 8..10, through the hub: published in one transaction, so the hub's blocked
                # XREAD gets them together (Redis answers it after each command otherwise).
                await _emit(pool, setup, 3, publish=True)
                batch = await asyncio.wait_for(live, 10)
                seen.append(None if batch is None else [e.seq for e in batch])
                await follow.aclose()
                return seen
        finally:
            await pool.close()

    seen = asyncio.run(scenario())
    # From Redis up to the gap, the gap from Postgres, the rest from Redis; then the live ones.
    assert seen == [[2, 3], [4], [5, 6, 7], [8, 9, 10]]


def test_a_reader_given_its_first_event_sends_it_then_waits_for_its_publish(setup: Setup):
    """A streaming POST's reader: the event in hand (`first`) goes out at once; nothing is read
    until the POST's publish (`published`) is done, so the read finds the events in Redis; a
    client that leaves meanwhile does not cancel the publish."""
    async def scenario() -> tuple[list[int], bool, list[int], bool]:
        pool = await open_pool(setup.settings.database, name="test-hub")
        try:
            async with EventHub.from_settings(setup.settings, pool) as hub:
                stored = await _emit(pool, setup, 3, publish=False)
                gate = asyncio.Event()

                async def publish() -> None:
                    await gate.wait()
                    await _publish(setup, stored)

                published = asyncio.ensure_future(publish())
                after = stored[0].seq - 1
                reader = EventReader(hub, setup.org_id, setup.session_id)
                follow = reader.follow_with_keepalives(after, first=stored[0], published=published)
                head = [e.seq for e in await anext(follow) or []]
                rest = asyncio.ensure_future(anext(follow))
                await asyncio.sleep(0.3)
                waited = not rest.done()
                gate.set()
                batch = await asyncio.wait_for(rest, 10)
                await follow.aclose()

                # A second stream whose client leaves while the publish is in flight.
                gate.clear()
                published = asyncio.ensure_future(publish())
                left = reader.follow_with_keepalives(after, first=stored[0], published=published)
                await anext(left)
                pending = asyncio.ensure_future(anext(left))
                await asyncio.sleep(0.05)
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pending
                gate.set()
                await asyncio.wait_for(published, 10)
                return head, waited, [e.seq for e in batch or []], published.cancelled()
        finally:
            await pool.close()

    head, waited, batch, cancelled = asyncio.run(scenario())
    assert len(head) == 1 and waited, "the reader read before the publish was done"
    assert batch == [head[0] + 1, head[0] + 2]
    assert not cancelled


def test_with_redis_down_followers_read_postgres_and_the_hub_recovers(setup: Setup, caplog: pytest.LogCaptureFixture):
    async def scenario() -> tuple[list[int], bool, bool]:
        pool = await open_pool(setup.settings.database, name="test-hub")
        try:
            async with EventHub.from_settings(setup.settings, pool) as hub:
                seen: list[int] = []
                task = _collect(hub, setup, 0, seen)
                await _until(lambda: seen == [1])
                setup.redis.stop()
                await _emit(pool, setup, 3, publish=False)  # seqs 2..4, only in Postgres
                await _until(lambda: len(seen) == 4)
                was_degraded = hub.degraded
                # A follower arriving during the outage catches up from Postgres too.
                other: list[int] = []
                second = _collect(hub, setup, 0, other)
                await _until(lambda: len(other) == 4)
                await asyncio.sleep(1.5)  # several failed reads: still one warning
                setup.redis.start()  # same port, empty
                await _until(lambda: not hub.degraded)
                recovered = not hub.degraded
                await _emit(pool, setup, 2, publish=True)  # seqs 5..6, through Redis again
                await _until(lambda: len(seen) == 6 and len(other) == 6)
                for t in (task, second):
                    t.cancel()
                await asyncio.gather(task, second, return_exceptions=True)
        finally:
            await pool.close()
        assert other == list(range(1, 7))
        return seen, was_degraded, recovered

    with caplog.at_level(logging.INFO, logger="agentos.events"):
        seen, was_degraded, recovered = asyncio.run(scenario())
    assert seen == list(range(1, 7))
    assert was_degraded and recovered
    warnings = [r.getMessage() for r in caplog.records if r.name == "agentos.events" and r.levelno >= logging.WARNING]
    assert 1 <= len(warnings) <= 2, warnings  # the read loop's, and at most one for catch-up reads
    assert any("Redis again" in r.getMessage() for r in caplog.records)


def test_a_malformed_stream_entry_is_skipped_and_its_event_read_from_postgres(setup: Setup):
    async def scenario() -> list[int]:
        pool = await open_pool(setup.settings.database, name="test-hub")
        redis = aioredis.Redis.from_url(setup.settings.redis.url)
        try:
            async with EventHub.from_settings(setup.settings, pool) as hub:
                seen: list[int] = []
                task = _collect(hub, setup, 0, seen)
                await _until(lambda: seen == [1] and hub.followers == 1)
                await _emit(pool, setup, 1, publish=False)  # seq 2 in Postgres only...
                await redis.xadd(session_stream_key(setup.org_id, setup.session_id), {"e": b"not json"}, id="2-0")
                await _emit(pool, setup, 1, publish=True)  # ...its entry garbage, then seq 3
                await _until(lambda: len(seen) == 3)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        finally:
            await redis.aclose()
            await pool.close()
        return seen

    assert asyncio.run(scenario()) == [1, 2, 3]


def _count_postgres_reads(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts the followers' Postgres reads (`from_postgres`) per session; they still read."""
    reads: Counter[str] = Counter()
    real = event_reader.from_postgres

    async def counted(pool: AsyncPool, org_id: str, session_id: str, *args: Any, **kwargs: Any) -> list[events.Event]:
        reads[session_id] += 1
        return await real(pool, org_id, session_id, *args, **kwargs)

    monkeypatch.setattr(event_reader, "from_postgres", counted)
    return reads


@pytest.mark.parametrize("keys_per_read", [1000, 1])
def test_redis_going_down_and_coming_back_sends_only_the_followers_behind_to_postgres(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, keys_per_read: int
):
    """Ten thousand followers reading Postgres at once when Redis goes away would time out the
    pool: the hub asks Postgres who is behind (one query per org) and pokes only those. The same
    with one read for both sessions and with a read for each."""

    async def scenario() -> tuple[list[list[int]], list[list[int]], Counter[str]]:
        pool = await open_pool(setup.settings.database, name="test-hub")
        try:
            # No periodic check: only the outage and the recovery make the hub look at Postgres.
            async with _hub_without_periodic_check(setup.settings, pool, keys_per_read) as hub:
                behind: list[list[int]] = [[] for _ in range(3)]
                current: list[list[int]] = [[] for _ in range(3)]
                tasks = [_collect(hub, setup, 0, seen) for seen in behind]
                tasks += [_collect(hub, setup, 0, seen, other=True) for seen in current]
                await _until(lambda: hub.followers == 6 and all(seen == [1] for seen in behind + current))
                reads = _count_postgres_reads(monkeypatch)
                setup.redis.stop()
                await _emit(pool, setup, 2, publish=False)  # seqs 2..3 of the first session, only in Postgres
                await _until(lambda: all(len(seen) == 3 for seen in behind))
                setup.redis.start()  # same port, empty
                await _until(lambda: not hub.degraded)
                await _emit(pool, setup, 1, publish=True, other=True)  # seq 2 of the other, through Redis
                await _until(lambda: all(len(seen) == 2 for seen in current))
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await pool.close()
        return behind, current, reads

    behind, current, reads = asyncio.run(scenario())
    assert behind == [[1, 2, 3]] * 3 and current == [[1, 2]] * 3
    assert reads[setup.other_session_id] == 0, reads  # never behind: never sent to Postgres
    assert reads[setup.session_id] == 3, reads  # each follower behind read once


@pytest.mark.parametrize("why", ["stale", "gap"])
def test_a_followers_failed_postgres_read_keeps_its_stream_and_reads_again(
    setup: Setup, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, why: str
):
    """A follower that must read Postgres while the pool has no connection to give (PoolTimeout)
    keeps following, and reads again (here after 0.05 s instead of 1 s): sent there by the hub
    (`stale`: more events than it may buffer), or to fill a seq its events skip (`gap`)."""
    if why == "stale":
        monkeypatch.setattr(event_hub, "MAX_PENDING", 0)  # any event overflows it
    monkeypatch.setattr(event_reader, "STALE_RETRY_S", 0.05, raising=False)

    async def scenario() -> tuple[list[int], bool, int]:
        one = setup.settings.database.model_copy(update={"connect_timeout_s": 0.2})
        pool = await open_pool(one, name="test-hub", max_size=1)
        try:
            async with EventHub.from_settings(setup.settings, pool) as hub:
                seen: list[int] = []
                task = _collect(hub, setup, 0, seen)
                await _until(lambda: seen == [1] and hub.followers == 1)
                stored = await _emit(pool, setup, 2, publish=False)
                async with pool.connection():  # the pool's one connection: the follower's read times out
                    reads = _count_postgres_reads(monkeypatch)
                    await _publish(setup, stored if why == "stale" else stored[1:])
                    await _until(lambda: reads[setup.session_id] >= 1 and (task.done() or _warned(caplog)))
                await _until(lambda: len(seen) == 3 or task.done())
                following = not task.done()
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        finally:
            await pool.close()
        return seen, following, reads[setup.session_id]

    with caplog.at_level(logging.WARNING, logger="agentos.events"):
        seen, following, reads = asyncio.run(scenario())
    assert following and seen == [1, 2, 3]
    assert reads >= 2 and _warned(caplog)  # the read that timed out, and the one after it


def _warned(caplog: pytest.LogCaptureFixture) -> bool:
    return any("reading missed events from Postgres failed" in r.getMessage() for r in caplog.records)


def _hub_without_periodic_check(settings: Settings, pool: AsyncPool, keys_per_read: int) -> EventHub:
    hub = _hub_reading(settings, pool, keys_per_read)
    hub._check_s = 3600.0
    return hub


def _hub_reading(settings: Settings, pool: AsyncPool, keys_per_read: int) -> EventHub:
    events_settings = settings.events.model_copy(update={"keys_per_read": keys_per_read})
    return EventHub.from_settings(settings.model_copy(update={"events": events_settings}), pool)


@pytest.mark.parametrize(("keys_per_read", "readers"), [(1, [1, 1, 1, 1]), (3, [1, 3]), (1000, [4])])
def test_followed_keys_are_split_over_readers_and_every_follower_gets_every_event(
    setup: Setup, keys_per_read: int, readers: list[int]
):
    """At most `keys_per_read` keys per blocking read: an event wakes one reader of a few keys.
    However the keys are split, every follower of every session gets every event once, in order;
    a reader whose keys are all left ends."""

    async def scenario() -> tuple[list[int], list[list[int]], list[int]]:
        pool = await open_pool(setup.settings.database, name="test-hub")
        try:
            async with _hub_reading(setup.settings, pool, keys_per_read) as hub:
                seen: list[list[int]] = [[] for _ in range(2 * SESSIONS)]
                tasks = [_collect(hub, setup, 0, into, session=i % SESSIONS) for i, into in enumerate(seen)]
                await _until(lambda: hub.followers == 2 * SESSIONS and all(into == [1] for into in seen))
                split = sorted(hub.readers)
                for round_ in range(3):
                    for i in range(SESSIONS):
                        await _emit(pool, setup, round_ + 1, publish=True, session=i)
                await _until(lambda: all(len(into) == 7 for into in seen))
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                await _until(lambda: not hub.readers)
                left = hub.readers
        finally:
            await pool.close()
        return split, seen, left

    split, seen, left = asyncio.run(scenario())
    assert split == readers
    assert seen == [list(range(1, 8))] * (2 * SESSIONS)
    assert left == []


def test_a_session_followed_again_through_another_reader_loses_nothing(setup: Setup):
    """One key per read: leaving a session frees its reader, another session takes it, and the
    first, followed again, lands on a new reader (while the old one may still be blocked naming
    it). Its followers, old cursor or new, get every event once, in order."""

    async def scenario() -> tuple[list[int], list[int], list[int], list[int], list[int]]:
        pool = await open_pool(setup.settings.database, name="test-hub")
        try:
            async with _hub_reading(setup.settings, pool, 1) as hub:
                first: list[int] = []
                steady: list[int] = []
                tasks = [_collect(hub, setup, 0, first, session=0), _collect(hub, setup, 0, steady, session=1)]
                await _until(lambda: first == [1] and steady == [1])
                await _emit(pool, setup, 2, publish=True, session=0)  # seqs 2..3
                await _until(lambda: len(first) == 3)
                tasks[0].cancel()
                await asyncio.gather(tasks[0], return_exceptions=True)
                # Session 0's reader names no key now; session 2 may take it before it ends.
                third: list[int] = []
                tasks.append(_collect(hub, setup, 0, third, session=2))
                await _emit(pool, setup, 2, publish=True, session=0)  # seqs 4..5, while nobody follows
                await _emit(pool, setup, 1, publish=True, session=1)
                # Followed again: from where the first follower stopped, and from the start.
                again: list[int] = []
                fresh: list[int] = []
                tasks += [_collect(hub, setup, 3, again, session=0), _collect(hub, setup, 0, fresh, session=0)]
                await _until(lambda: len(again) == 2 and len(fresh) == 5 and third == [1])
                spread = sorted(hub.readers)
                for i in (0, 1, 2, 0):
                    await _emit(pool, setup, 2, publish=True, session=i)
                await _until(lambda: len(again) == 6 and len(fresh) == 9 and len(steady) == 4 and len(third) == 3)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            await pool.close()
        return again, fresh, steady, third, spread

    again, fresh, steady, third, spread = asyncio.run(scenario())
    assert again == list(range(4, 10))
    assert fresh == list(range(1, 10))
    assert steady == [1, 2, 3, 4]
    assert third == [1, 2, 3]
    assert spread == [1, 1, 1]
