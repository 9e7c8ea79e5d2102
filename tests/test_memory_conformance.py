"""One suite for every `memory.store.MemoryStore` backend: Postgres (long-term) and Redis (session
notes), against the real servers. Scoping, isolation between orgs, dedup (also concurrent),
expiry, deletion, recall ordering, list paging, and the shape of a row."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis
from starlette.testclient import TestClient

from core.db import open_pool
from core.ids import new_id
from core.settings import Settings
from memory.embeddings import HashEmbedder
from memory.long_term import MemoryFilters, MemoryItem
from memory.redis_store import ROW_KEYS, RedisMemoryStore
from memory.store import MemoryStore, PostgresMemoryStore
from tests.helpers import new_org

MODEL = HashEmbedder.model
EMBEDDER = HashEmbedder()

Body = Callable[[MemoryStore, str, str], Awaitable[None]]


@dataclass
class Backend:
    """Runs a test body against a fresh store of one backend, with two fresh orgs A and B."""

    name: str
    settings: Settings
    client: TestClient

    def run(self, body: Body) -> None:
        asyncio.run(self._run(body))

    async def _run(self, body: Body) -> None:
        if self.name == "postgres":
            a, b = new_org(self.client, "conformance A").id, new_org(self.client, "conformance B").id
            pool = await open_pool(self.settings.database.model_copy(update={"pool_min": 1, "pool_max": 12}))
            try:
                await body(PostgresMemoryStore(pool), a, b)
            finally:
                await pool.close()
        else:
            redis = aioredis.Redis.from_url(self.settings.redis.url)
            try:
                await body(RedisMemoryStore(redis, default_ttl_s=3600), new_id("org"), new_id("org"))
            finally:
                await redis.aclose()


@pytest.fixture(params=["postgres", "redis"])
def backend(request: pytest.FixtureRequest, settings: Settings, client: TestClient) -> Iterator[Backend]:
    yield Backend(str(request.param), settings, client)


async def embed(text: str) -> list[float]:
    return (await EMBEDDER.embed([text]))[0]


async def put(store: MemoryStore, org: str, content: str, model: str = MODEL, **fields: Any) -> dict[str, Any]:
    row, created = await store.remember(org, MemoryItem(content, **fields), await embed(content), model)
    assert created, (content, fields)
    return row


def ids(rows: list[dict[str, Any]]) -> list[str]:
    return [r["id"] for r in rows]


async def find(store: MemoryStore, org: str, query: str, filters: MemoryFilters | None = None,
               limit: int = 10) -> list[str]:
    return ids(await store.search(org, await embed(query), MODEL, filters, limit))


# --- the row ------------------------------------------------------------------------------------


def test_a_row_has_the_postgres_shape(backend: Backend) -> None:
    async def body(store: MemoryStore, a: str, b: str) -> None:
        expires = datetime.now(UTC) + timedelta(minutes=5)
        row, created = await store.remember(
            a, MemoryItem("The user likes tea", scope="user", kind="preference", user_id="u1",
                          metadata={"n": 1, "tags": ["x"]}, source="chat", expires_at=expires),
            await embed("The user likes tea"), MODEL)
        assert created
        assert tuple(row) == ROW_KEYS
        assert row["id"].startswith("mem_") and row["content"] == "The user likes tea"
        assert (row["scope"], row["kind"], row["user_id"], row["agent_id"], row["session_id"]) == (
            "user", "preference", "u1", None, None)
        assert row["metadata"] == {"n": 1, "tags": ["x"]} and row["source"] == "chat"
        assert (row["embedding_model"], row["dims"]) == (MODEL, 384)
        assert isinstance(row["created_at"], datetime) and row["created_at"].tzinfo is not None
        assert abs(row["created_at"] - datetime.now(UTC)) < timedelta(seconds=30)
        assert row["expires_at"] == expires
        assert await store.get(a, row["id"]) == row
        assert (await store.list(a)) == [row]
        [found] = await store.search(a, await embed("tea"), MODEL)
        assert set(found) == {*ROW_KEYS, "score"} and isinstance(found["score"], float)
        assert {k: v for k, v in found.items() if k != "score"} == row

    backend.run(body)


def test_bad_items_are_refused(backend: Backend) -> None:
    async def body(store: MemoryStore, a: str, b: str) -> None:
        vec = await embed("x")
        for item, embedding in ((MemoryItem("x", scope="galaxy"), vec), (MemoryItem("x", kind="rumour"), vec),
                                (MemoryItem("x"), [])):
            with pytest.raises(ValueError):
                await store.remember(a, item, embedding, MODEL)
        assert await store.list(a) == []
        assert await store.get(a, "not-an-id") is None and await store.delete(a, "not-an-id") is False

    backend.run(body)


# --- scoping ------------------------------------------------------------------------------------


def test_filters_by_scope_agent_user_session_and_kind(backend: Backend) -> None:
    async def body(store: MemoryStore, a: str, b: str) -> None:
        org_wide = await put(store, a, "Coffee machines are on floor 3")
        agent = await put(store, a, "Coffee orders go through the bot", scope="agent", agent_id="agt_1")
        alice = await put(store, a, "I like my coffee black", scope="user", user_id="alice", kind="preference",
                          agent_id="agt_1")
        bob = await put(store, a, "I like my coffee with oat milk", scope="user", user_id="bob", kind="preference")
        session = await put(store, a, "Coffee talk so far: two cups", scope="session", session_id="ses_1",
                            kind="summary")
        cases = [
            (MemoryFilters(scope="org"), {org_wide["id"]}),
            (MemoryFilters(scope="agent"), {agent["id"]}),
            (MemoryFilters(agent_id="agt_1"), {agent["id"], alice["id"]}),
            (MemoryFilters(user_id="bob"), {bob["id"]}),
            (MemoryFilters(scope="user", user_id="alice"), {alice["id"]}),
            (MemoryFilters(session_id="ses_1"), {session["id"]}),
            (MemoryFilters(kinds=["preference"]), {alice["id"], bob["id"]}),
            (MemoryFilters(kinds=["summary", "fact"]), {org_wide["id"], agent["id"], session["id"]}),
            (MemoryFilters(user_id="carol"), set()),
            (MemoryFilters(), {org_wide["id"], agent["id"], alice["id"], bob["id"], session["id"]}),
        ]
        for filters, expected in cases:
            assert set(ids(await store.list(a, filters))) == expected, filters
            assert set(await find(store, a, "coffee", filters)) == expected, filters
        assert await find(store, a, "how do I like my coffee", MemoryFilters(user_id="bob")) == [bob["id"]]

    backend.run(body)


# --- isolation ----------------------------------------------------------------------------------


def test_org_b_never_sees_gets_or_deletes_org_a_items(backend: Backend) -> None:
    async def body(store: MemoryStore, a: str, b: str) -> None:
        secret = "Org A's launch code is 7-4-1-9"
        mine = await put(store, a, secret, scope="user", user_id="shared-user", metadata={"org": "A"})
        theirs = await put(store, b, "Org B's own note", scope="user", user_id="shared-user")
        vec = await embed(secret)
        for filters in (None, MemoryFilters(user_id="shared-user"), MemoryFilters(scope="user")):
            assert mine["id"] not in ids(await store.search(b, vec, MODEL, filters, 200))
            assert ids(await store.list(b, filters, None, 200)) == [theirs["id"]]
        assert await store.get(b, mine["id"]) is None
        assert await store.delete(b, mine["id"]) is False
        assert await store.delete_for_user(b, "shared-user") == 1
        # B writing A's exact fact makes B's own item: dedup never reaches across orgs
        copy, created = await store.remember(b, MemoryItem(secret, scope="user", user_id="shared-user"), vec, MODEL)
        assert created and copy["id"] != mine["id"] and copy["metadata"] == {}
        # A's item is untouched by all of it
        assert await store.get(a, mine["id"]) == mine
        assert (await store.search(a, vec, MODEL))[0]["id"] == mine["id"]
        assert ids(await store.list(a)) == [mine["id"]]

    backend.run(body)


# --- dedup --------------------------------------------------------------------------------------


def test_the_same_fact_written_concurrently_is_one_item(backend: Backend) -> None:
    async def body(store: MemoryStore, a: str, b: str) -> None:
        fact = "The build uses Python 3.11"
        vec = await embed(fact)
        results = await asyncio.gather(*(
            store.remember(a, MemoryItem(fact, metadata={f"k{i}": i}), vec, MODEL) for i in range(10)))
        assert sorted(created for _, created in results) == [False] * 9 + [True]
        assert len({row["id"] for row, _ in results}) == 1
        [stored] = await store.list(a)
        assert stored["metadata"] == {f"k{i}": i for i in range(10)}  # every write's metadata merged

    backend.run(body)


def test_writing_a_fact_again_merges_metadata_and_refreshes_expiry(backend: Backend) -> None:
    async def body(store: MemoryStore, a: str, b: str) -> None:
        soon = datetime.now(UTC) + timedelta(minutes=5)
        later = datetime.now(UTC) + timedelta(hours=2)
        vec = await embed("The user's timezone is Europe/Berlin")
        item = MemoryItem("The user's timezone is Europe/Berlin", scope="user", user_id="u1")
        first, created = await store.remember(a, replace(item, metadata={"a": 1, "b": 1}, expires_at=soon), vec,
                                              MODEL)
        again, created_again = await store.remember(a, replace(item, metadata={"b": 2}, expires_at=later), vec,
                                                    MODEL)
        assert created and not created_again and again["id"] == first["id"]
        assert again["metadata"] == {"a": 1, "b": 2} and again["expires_at"] == later
        assert await store.get(a, first["id"]) == again

    backend.run(body)


def test_differing_scope_user_kind_or_model_are_distinct_items(backend: Backend) -> None:
    async def body(store: MemoryStore, a: str, b: str) -> None:
        fact = "Standup is at 9:30"
        vec = await embed(fact)
        variants = [MemoryItem(fact), MemoryItem(fact, scope="user", user_id="u1"),
                    MemoryItem(fact, scope="user", user_id="u2"), MemoryItem(fact, kind="summary"),
                    MemoryItem(fact, scope="session", session_id="ses_1")]
        rows = [await store.remember(a, v, vec, MODEL) for v in variants]
        rows.append(await store.remember(a, MemoryItem(fact), vec, "test:other-model"))
        assert all(created for _, created in rows)
        assert len({row["id"] for row, _ in rows}) == len(rows) == len(await store.list(a))

    backend.run(body)


# --- expiry -------------------------------------------------------------------------------------


def test_expired_items_are_invisible(backend: Backend) -> None:
    async def body(store: MemoryStore, a: str, b: str) -> None:
        gone = await put(store, a, "A discount code SPRING24", user_id="u1",
                         expires_at=datetime.now(UTC) - timedelta(seconds=1))
        kept = await put(store, a, "The discount policy allows 10 percent at most")
        assert await store.get(a, gone["id"]) is None
        assert ids(await store.list(a)) == [kept["id"]]
        assert await find(store, a, "A discount code SPRING24") == [kept["id"]]

        brief = await put(store, a, "A one-time password 123456", user_id="u1",
                          expires_at=datetime.now(UTC) + timedelta(seconds=1.2))
        assert await store.get(a, brief["id"]) == brief
        assert ids(await store.list(a)) == [brief["id"], kept["id"]]
        assert (await find(store, a, "one-time password"))[0] == brief["id"]
        await asyncio.sleep(1.5)
        assert await store.get(a, brief["id"]) is None
        assert ids(await store.list(a)) == [kept["id"]]
        assert await find(store, a, "one-time password") == [kept["id"]]
        # An expired item is gone for deletes too: not found, and not counted.
        assert await store.delete(a, brief["id"]) is False
        assert await store.delete_for_user(a, "u1") == 0

    backend.run(body)


def test_redis_default_ttl_expires_items(settings: Settings) -> None:
    async def body() -> None:
        redis = aioredis.Redis.from_url(settings.redis.url)
        try:
            store = RedisMemoryStore(redis, default_ttl_s=1)
            org = new_id("org")
            row = await put(store, org, "Scratch note for this session", user_id="u1")
            assert row["expires_at"] is not None and row["expires_at"] - row["created_at"] == timedelta(seconds=1)
            assert 0 < await redis.pttl(f"agentos:{org}:memory:item:{row['id']}") <= 1000
            await asyncio.sleep(1.3)
            assert await store.get(org, row["id"]) is None and await store.list(org) == []
            assert await redis.keys(f"agentos:{org}:*") == []  # every key of the item went with it
            with pytest.raises(ValueError, match="decode_responses"):
                RedisMemoryStore(aioredis.Redis.from_url(settings.redis.url, decode_responses=True),
                                 default_ttl_s=None)
        finally:
            await redis.aclose()

    asyncio.run(body())


# --- deletion -----------------------------------------------------------------------------------


def test_delete_one(backend: Backend) -> None:
    async def body(store: MemoryStore, a: str, b: str) -> None:
        doomed = await put(store, a, "Delete me", user_id="u1")
        kept = await put(store, a, "Keep me")
        assert await store.delete(a, doomed["id"]) is True
        assert await store.get(a, doomed["id"]) is None
        assert await store.delete(a, doomed["id"]) is False
        assert ids(await store.list(a)) == [kept["id"]]
        assert await find(store, a, "Delete me") == [kept["id"]]
        # the fact can be written again: a new item
        again = await put(store, a, "Delete me", user_id="u1")
        assert again["id"] != doomed["id"]

    backend.run(body)


def test_delete_for_user_removes_only_that_users_items_in_that_org(backend: Backend) -> None:
    async def body(store: MemoryStore, a: str, b: str) -> None:
        for i in range(3):
            await put(store, a, f"Alice's memory {i}", scope="user", user_id="alice")
        bob = await put(store, a, "Bob's memory", scope="user", user_id="bob")
        general = await put(store, a, "An org-wide memory")
        alice_in_b = await put(store, b, "Alice's memory in org B", scope="user", user_id="alice")
        assert await store.delete_for_user(a, "alice") == 3
        assert set(ids(await store.list(a))) == {bob["id"], general["id"]}
        assert await find(store, a, "Alice's memory") == ids(await store.search(
            a, await embed("Alice's memory"), MODEL))
        assert not set(await find(store, a, "Alice's memory")) - {bob["id"], general["id"]}
        assert await store.delete_for_user(a, "alice") == 0
        assert ids(await store.list(b)) == [alice_in_b["id"]]

    backend.run(body)


# --- recall ordering ----------------------------------------------------------------------------

FACTS = [
    "The user prefers dark mode in the code editor",
    "Paris is the capital of France",
    "Deployments run on Fly.io in the Amsterdam region",
    "The quarterly report is due on the first Monday of April",
]
QUERIES = [
    "which editor theme does the user prefer? dark mode",
    "what is the capital city of France",
    "where do deployments run? fly.io",
    "when is the quarterly report due",
]


def test_recall_ranks_the_nearest_first_within_one_model(backend: Backend) -> None:
    async def body(store: MemoryStore, a: str, b: str) -> None:
        rows = [await put(store, a, fact) for fact in FACTS]
        # the same texts under another model (other vectors) are never compared with these queries
        for fact in FACTS:
            await store.remember(a, MemoryItem(fact), [1.0] + [0.0] * 383, "test:other-model")
        # nor are vectors of another dimension under the same model name
        await store.remember(a, MemoryItem("short vectors"), [1.0, 0.0, 0.0], "test:other-model")
        for row, query in zip(rows, QUERIES, strict=True):
            found = await store.search(a, await embed(query), MODEL)
            assert [f["id"] for f in found][0] == row["id"], query
            assert {f["id"] for f in found} == {r["id"] for r in rows}
            assert all(f["embedding_model"] == MODEL and f["dims"] == 384 for f in found)
            scores = [f["score"] for f in found]
            assert scores == sorted(scores, reverse=True) and scores[0] > scores[1]
        exact = await store.search(a, await embed(FACTS[1]), MODEL, limit=2)
        assert len(exact) == 2 and exact[0]["id"] == rows[1]["id"]
        assert exact[0]["score"] == pytest.approx(1.0, abs=1e-5)
        other = await store.search(a, [1.0] + [0.0] * 383, "test:other-model", limit=2)
        assert len(other) == 2 and all(f["embedding_model"] == "test:other-model" for f in other)
        short = await store.search(a, [1.0, 0.0, 0.0], "test:other-model")
        assert [(f["content"], f["dims"]) for f in short] == [("short vectors", 3)]
        assert await store.search(a, await embed(FACTS[1]), "test:unknown-model") == []

    backend.run(body)


# --- list paging --------------------------------------------------------------------------------


def test_list_is_newest_first_with_limit_plus_one_and_a_cursor(backend: Backend) -> None:
    async def body(store: MemoryStore, a: str, b: str) -> None:
        made = [(await put(store, a, f"note number {i}", kind="summary" if i % 2 else "fact"))["id"]
                for i in range(7)]
        newest_first = made[::-1]
        page1 = ids(await store.list(a, limit=3))
        assert page1 == newest_first[:4]  # limit + 1: the extra row says there is more
        page2 = ids(await store.list(a, cursor=page1[2], limit=3))
        assert page2 == newest_first[3:7]
        page3 = ids(await store.list(a, cursor=page2[2], limit=3))
        assert page3 == newest_first[6:]
        summaries = ids(await store.list(a, MemoryFilters(kinds=["summary"]), limit=2))
        assert summaries == [made[5], made[3], made[1]]
        assert ids(await store.list(a, MemoryFilters(kinds=["summary"]), cursor=made[3], limit=2)) == [made[1]]
        assert await store.list(a, cursor=made[0]) == []

    backend.run(body)


def test_list_pages_past_expired_items(backend: Backend) -> None:
    async def body(store: MemoryStore, a: str, b: str) -> None:
        past = datetime.now(UTC) - timedelta(seconds=1)
        live = [(await put(store, a, f"live {i}"))["id"] for i in range(2)]
        for i in range(5):
            await put(store, a, f"expired {i}", expires_at=past)
        newest = (await put(store, a, "newest"))["id"]
        assert ids(await store.list(a, limit=2)) == [newest, live[1], live[0]]
        assert ids(await store.list(a, limit=5)) == [newest, live[1], live[0]]

    backend.run(body)

