"""A run's first THINK reads memory in one batched transaction (memory.store.PostgresMemoryStore.
search_after, memory.short_term window statements): the recall finds exactly what the search in
its own transaction (`long_term.search_with_plan`) finds, by either plan, also once psycopg has
prepared the statement (the batch forces custom plans); and a rebuilt window reads the runs after
the latest summary in the same batch as the summary."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from core.db import open_pool
from core.settings import Settings
from core.tenancy import tenant_batch, tenant_tx
from memory import long_term
from memory.long_term import MemoryFilters, RecallScope
from memory.short_term import ShortTermMemory, Window
from memory.store import PostgresMemoryStore
from tests.helpers import Org

N_ITEMS = 300


def _add_items(url: str, org_id: str) -> None:
    """Items of every scope and kind with random vectors (as the owner, in one statement)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO memories (id, org_id, scope, agent_id, user_id, session_id, kind, content, content_hash,
                                  embedding, embedding_model, dims)
            SELECT 'membatch' || %(org)s || g, %(org)s, (ARRAY['org', 'agent', 'user', 'session'])[1 + g %% 4],
                   CASE WHEN g %% 4 IN (1, 2, 3) THEN 'agent-' || (g %% 2) END,
                   CASE WHEN g %% 4 IN (2, 3) THEN 'user-' || (g %% 3) END,
                   CASE WHEN g %% 4 = 3 THEN 'session-' || (g %% 5) END,
                   (ARRAY['fact', 'preference', 'summary'])[1 + g %% 3], 'item ' || g, md5(%(org)s || g),
                   ('[' || array_to_string(array(SELECT random() - 0.5 FROM generate_series(1, 384) WHERE g >= 0),
                                           ',') || ']')::vector,
                   'offline:hash', 384
            FROM generate_series(1, %(n)s) AS g
            """, {"org": org_id, "n": N_ITEMS})
        conn.execute("ANALYZE memories")


@pytest.fixture
def items(org: Org, settings: Settings) -> Iterator[None]:
    """The org's items, removed afterwards (the index maintenance tests count every org's)."""
    _add_items(settings.database.url, org.id)
    yield
    with psycopg.connect(settings.database.url, autocommit=True) as conn:
        conn.execute("DELETE FROM memories WHERE org_id = %s", (org.id,))


@pytest.mark.parametrize("plan", ["exact", "hnsw"])
def test_a_batched_search_finds_what_its_own_transaction_finds(
        org: Org, settings: Settings, monkeypatch: pytest.MonkeyPatch, plan: str, items: None) -> None:
    if plan == "hnsw":  # the org counts as large: HNSW with the iterative scan
        monkeypatch.setattr(long_term, "EXACT_SCAN_MAX_ROWS", N_ITEMS // 2)
    long_term.forget_plans()
    query = [float((i * 7919) % 13 - 6) / 10 for i in range(384)]
    filters = [
        None,
        MemoryFilters(kinds=["fact", "preference", "summary"],
                      recall_for=RecallScope(agent_id="agent-1", user_id="user-2", session_id="session-3")),
        MemoryFilters(kinds=["fact"], recall_for=RecallScope(agent_id="agent-0", user_id=None, session_id="s")),
        MemoryFilters(user_id="user-1"),
    ]

    async def go() -> list[tuple[Any, Any, str]]:
        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
        store = PostgresMemoryStore(pool)
        found = []
        try:
            for _ in range(7):  # psycopg prepares a statement at its fifth use on the connection
                for f in filters:
                    async with tenant_tx(pool, org.id) as conn:
                        alone, used = await long_term.search_with_plan(conn, query, "offline:hash", f, 10)
                    batched, before = await store.search_after(org.id, [("SELECT 1 AS one", ())], query,
                                                               "offline:hash", f, 10)
                    assert before == [[{"one": 1}]]
                    found.append((alone, batched, used))
        finally:
            await pool.close()
        return found

    found = asyncio.run(go())
    assert {used for _, _, used in found} == ({"exact"} if plan == "exact" else {"hnsw", "exact"})
    for alone, batched, _ in found:
        assert [(r["id"], r["score"]) for r in batched] == [(r["id"], r["score"]) for r in alone]
        assert batched == alone
    assert any(len(alone) == 10 for alone, _, _ in found)


def test_a_rebuilt_window_reads_the_runs_after_the_latest_summary_in_one_batch(
        org: Org, settings: Settings) -> None:
    """No cached window: the summary and the runs ended after its `upto` (not before) come back
    from one batch; a cached window reads the runs after its own `upto`."""
    agent = org.create_agent()
    session = str(org.create_session(str(agent["id"]))["id"])
    with psycopg.connect(settings.database.url, autocommit=True) as conn:
        conn.execute("SELECT set_config('app.org_id', %s, false)", (org.id,))
        for i, (finished, text) in enumerate([("2026-01-01T10:00:00Z", "old"), ("2026-01-01T12:00:00Z", "new")]):
            conn.execute(
                "INSERT INTO runs (id, org_id, session_id, agent_id, agent_version, status, input, finished_at, "
                "trace_id) VALUES (%s, %s, %s, %s, 1, 'succeeded', '{}', %s, 'trace')",
                (f"run_batch{i}", org.id, session, agent["id"], finished))
            conn.execute("INSERT INTO messages (id, org_id, session_id, run_id, role, content) "
                         "VALUES (%s, %s, %s, %s, 'user', %s)", (f"msg_batch{i}", org.id, session, f"run_batch{i}",
                                                                 text))
        conn.execute(
            "INSERT INTO memories (id, org_id, scope, session_id, kind, content, content_hash, embedding, "
            "embedding_model, dims, metadata) VALUES ('mem_batchsum', %s, 'session', %s, 'summary', 'so far', 'h', "
            "%s::vector, 'offline:hash', 384, %s)",
            (org.id, session, "[" + ",".join(["0.05"] * 384) + "]", '{"upto": "2026-01-01T11:00:00+00:00"}'))

    async def go() -> tuple[tuple[Window, bool], tuple[Window, bool]]:
        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
        try:
            rebuilt = ShortTermMemory.window_from(None, await tenant_batch(
                pool, org.id, *ShortTermMemory.window_statements(session, None)))
            cached = Window(upto="2026-01-01T12:00:00+00:00")
            later = ShortTermMemory.window_from(cached, await tenant_batch(
                pool, org.id, *ShortTermMemory.window_statements(session, cached)))
            return rebuilt, later
        finally:
            await pool.close()

    (window, changed), (later, later_changed) = asyncio.run(go())
    assert changed and window.summary == "so far" and window.summary_upto == "2026-01-01T11:00:00+00:00"
    assert [(t.run_id, t.content) for t in window.turns] == [("run_batch1", "new")]
    assert window.upto is not None and window.upto.startswith("2026-01-01T12:00:00")
    assert not later_changed and later.turns == []


def test_a_search_failing_in_the_batch_warns_and_the_window_is_still_read(
        org: Org, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The search shares its transaction with the window's reads: if it fails there, recall is
    given up with a warning, as before, and the window is read by itself (the run goes on)."""
    from core.store import runs
    from runtime.executor import execute_run
    from runtime.services import Services

    agent = org.create_agent()
    session = str(org.create_session(str(agent["id"]))["id"])

    async def run(svc: Services) -> str:
        async with tenant_tx(svc.pool, org.id) as conn:
            created = await runs.create(conn, session_id=session, text="hello again", multitask="enqueue",
                                        metadata={}, idempotency_key=None, request_hash="-", created_by=None)
        assert (await execute_run(svc, created.run["id"], org.id)).outcome == "succeeded"
        return created.run["id"]

    async def go() -> str:
        svc = await Services.open(settings)
        try:
            await run(svc)
            monkeypatch.setattr(long_term, "search_statements", lambda *a, **k: [("SELECT 1 / 0 AS broken", ())])
            return await run(svc)
        finally:
            await svc.close()

    run_id = asyncio.run(go())
    with psycopg.connect(settings.database.url) as conn:
        found = conn.execute("SELECT type, data FROM run_events WHERE run_id = %s ORDER BY seq", (run_id,)).fetchall()
    kinds = [kind for kind, _ in found]
    warning = next(data for kind, data in found if kind == "run.warning")
    recalled = next(data for kind, data in found if kind == "memory.recalled")
    assert warning["code"] == "MEMORY_UNAVAILABLE" and "DivisionByZero" in warning["message"]
    assert kinds.index("run.warning") < kinds.index("memory.recalled") and kinds[-1] == "run.succeeded"
    # Read before THINK (`memory_context.prefetch`), reported by THINK, in its order.
    assert kinds.index("step.started") < kinds.index("run.warning")
    assert recalled["items"] == [] and recalled["turns"] == 2  # the first run's message and answer


def _executed(settings: Settings, org: Org, session_id: str, text: str) -> str:
    """A run of `text` stored as the API stores it and executed in this process, as a worker
    would (it must succeed); its id."""
    from core.store import runs
    from runtime.executor import execute_run
    from runtime.services import Services

    async def go() -> str:
        svc = await Services.open(settings)
        try:
            async with tenant_tx(svc.pool, org.id) as conn:
                created = await runs.create(conn, session_id=session_id, text=text, multitask="enqueue",
                                            metadata={}, idempotency_key=None, request_hash="-", created_by=None)
            assert (await execute_run(svc, created.run["id"], org.id)).outcome == "succeeded"
            return str(created.run["id"])
        finally:
            await svc.close()

    return asyncio.run(go())


def test_the_first_think_s_memory_is_read_while_the_graph_starts(
        org: Org, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The executor starts the first THINK's memory reads with the graph (its checkpoint read
    and first steps), once per run; THINK takes them, and what it emits comes as before."""
    from orchestrator import memory_context, nodes

    agent = org.create_agent()
    session = str(org.create_session(str(agent["id"]))["id"])
    seen: list[str] = []
    fetch, step = memory_context._fetch, nodes._step

    async def fetching(ctx: Any, query: str) -> Any:
        seen.append(f"fetch {query}")
        return await fetch(ctx, query)

    async def stepping(ctx: Any, node: str) -> None:
        seen.append(f"step {node}")
        await step(ctx, node)

    monkeypatch.setattr(memory_context, "_fetch", fetching)
    monkeypatch.setattr(nodes, "_step", stepping)

    run_id = _executed(settings, org, session, "hello there")
    assert seen == ["fetch hello there", "step think", "step respond"]
    with psycopg.connect(settings.database.url) as conn:
        kinds = [k for (k,) in conn.execute("SELECT type FROM run_events WHERE run_id = %s ORDER BY seq",
                                             (run_id,)).fetchall()]
    assert kinds.index("step.started") < kinds.index("memory.recalled") < kinds.index("message.completed")


def test_what_think_keeps_in_redis_is_written_behind_the_model_call_and_before_the_run_ends(
        org: Org, settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """THINK's Redis write (the recall kept for a later attempt, the session window) does not hold
    up the model call; the run ends after it: the window is cached for the session's next run,
    and the run's scratch state, deleted by the ending, is not written back after it."""
    import redis as sync_redis

    from core.tenancy import run_scratch_key, session_window_key
    from memory.service import MemoryService
    from orchestrator import nodes

    agent = org.create_agent()
    session = str(org.create_session(str(agent["id"]))["id"])
    seen: list[str] = []
    keep, think_with = MemoryService.keep, nodes._think_with

    async def slow_keep(self: MemoryService, *args: Any) -> None:
        seen.append("keep starts")
        await asyncio.sleep(0.3)
        await keep(self, *args)
        seen.append("keep ends")

    async def thinking(*args: Any) -> Any:
        seen.append("model call")
        return await think_with(*args)

    monkeypatch.setattr(MemoryService, "keep", slow_keep)
    monkeypatch.setattr(nodes, "_think_with", thinking)

    run_id = _executed(settings, org, session, "hello there")
    seen.append("run ended")
    assert sorted(seen) == sorted(["keep starts", "model call", "keep ends", "run ended"]), seen
    assert seen.index("model call") < seen.index("keep ends") < seen.index("run ended"), seen
    client = sync_redis.Redis.from_url(settings.redis.url)
    assert client.exists(session_window_key(org.id, session)) == 1  # kept for the next run
    assert client.exists(run_scratch_key(org.id, run_id)) == 0  # deleted by the ending, after the write
