"""Per-org vector indexes kept by the maintenance job (memory/index_maintenance.py), against the
real Postgres with low thresholds: built for an org past the threshold, kept inside the
hysteresis band, dropped below it; a build in progress is left alone and not used by the
planner; an interrupted build (an invalid index) is redone; `agentos memory indexes` lists them."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from agentos.cli import app
from core.db import open_pool
from core.settings import Settings
from core.tenancy import tenant_tx
from memory import long_term
from memory.index_maintenance import OrgIndex, index_name, indexes_of, list_indexes, maintain, owner_connection, plan
from runtime.maintenance import JOBS
from tests.helpers import Org, until

CREATE, DROP = 200, 100


def low(settings: Settings) -> Settings:
    memory = settings.memory.model_copy(update={"index_create_rows": CREATE, "index_drop_rows": DROP})
    return settings.model_copy(update={"memory": memory})


def add_items(url: str, org_id: str, n: int, start: int = 0) -> None:
    """n offline-model items with random unit-ish vectors (one statement, as the owner)."""
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT set_config('app.org_id', %s, true)", (org_id,))
        conn.execute(
            """
            INSERT INTO memories (id, org_id, scope, kind, content, content_hash, embedding, embedding_model, dims)
            SELECT 'memidx' || %(org)s || g, %(org)s, 'org', 'fact', 'item ' || g, md5(%(org)s || g),
                   ('[' || array_to_string(array(SELECT random() - 0.5 FROM generate_series(1, 384) WHERE g >= 0),
                                           ',') || ']')::vector,
                   'offline:hash', 384
            FROM generate_series(%(start)s::int, %(end)s::int) AS g
            """, {"org": org_id, "start": start, "end": start + n - 1})
        conn.execute("ANALYZE memories")


def delete_items(url: str, org_id: str, keep: int) -> None:
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute("SELECT set_config('app.org_id', %s, true)", (org_id,))
        # The org named explicitly too: the suite's owner may be a superuser, beyond row-level security.
        conn.execute("DELETE FROM memories WHERE org_id = %s AND id IN "
                     "(SELECT id FROM memories WHERE org_id = %s ORDER BY id OFFSET %s)", (org_id, org_id, keep))


def states(settings: Settings) -> dict[str, str]:
    async def go() -> list[OrgIndex]:
        conn = await owner_connection(settings)
        try:
            return await indexes_of(conn)
        finally:
            await conn.close()

    return {ix.org_id: ix.state for ix in asyncio.run(go())}


def explain_search(settings: Settings, org_id: str) -> str:
    """The plan of the HNSW search query of `org_id`, as memory.long_term runs it (above the
    exact-search threshold)."""
    async def go() -> str:
        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
        try:
            async with tenant_tx(pool, org_id) as conn:
                await conn.execute(long_term.HNSW_SETTINGS_SQL, {"iterative": "relaxed_order", "ef_search": "400",
                                                                  "max_scan_tuples": "20000"})
                # A few hundred rows are cheaper to sort than to read through any HNSW index; the
                # product makes that choice itself (exact below EXACT_SCAN_MAX_ROWS). Sorting is
                # ruled out here so that the plan shows which HNSW index the planner picks.
                await conn.execute("SET LOCAL enable_sort = off")
                params = long_term.MemoryFilters().params() | {
                    "query": long_term.vector_literal([0.05] * 384), "model": "offline:hash", "dims": 384,
                    "limit": 10, "org_id": org_id}
                rows = await (await conn.execute("EXPLAIN " + long_term.SEARCH_OFFLINE_SQL, params,
                                                 prepare=False)).fetchall()
                return "\n".join(str(r["QUERY PLAN"]) for r in rows)
        finally:
            await pool.close()

    return asyncio.run(go())


@pytest.fixture
def tidy(settings: Settings) -> Iterator[list[str]]:
    """Org ids whose items (and so indexes) are removed afterwards."""
    orgs: list[str] = []
    yield orgs
    for org_id in orgs:
        delete_items(settings.database.url, org_id, 0)
    asyncio.run(maintain(low(settings)))


def test_the_job_is_registered_with_the_maintenance_home() -> None:
    assert [job.name for job in JOBS].count("memory-indexes") == 1


def test_plan_has_hysteresis_and_redoes_invalid_indexes(settings: Settings) -> None:
    memory = low(settings).memory
    indexes = [OrgIndex("ix_a", "a", "valid", 1), OrgIndex("ix_b", "b", "valid", 1),
               OrgIndex("ix_c", "c", "invalid", 1), OrgIndex("ix_d", "d", "building", 0),
               OrgIndex("ix_e", "e", "invalid", 1)]
    counts = {"a": 150, "b": 99, "c": 500, "d": 5, "e": 10, "f": 199, "g": 200, "h": 900}
    decided = plan(counts, indexes, memory)
    assert decided.create == ["h", "c", "g"]  # largest first; a (inside the band) kept; f below
    assert sorted(decided.drop) == ["ix_b", "ix_e"]  # below DROP (an invalid one too), never d's build
    assert decided.rebuild == ["ix_c"]


def test_indexes_follow_org_sizes_and_the_planner_uses_only_valid_ones(
        settings: Settings, org: Org, other_org: Org, tidy: list[str]) -> None:
    url = settings.database.url
    tidy += [org.id, other_org.id]
    add_items(url, org.id, CREATE + 300)
    add_items(url, other_org.id, CREATE - 1)
    before = explain_search(settings, org.id)
    assert index_name(org.id) not in before and "memories_offline_hnsw on memories" in before, before

    first = asyncio.run(maintain(low(settings)))
    assert [o for o, _s, _b in first.created] == [org.id] and first.line() is not None
    assert states(settings).get(org.id) == "valid" and other_org.id not in states(settings)
    plan_text = explain_search(settings, org.id)
    assert index_name(org.id) in plan_text, plan_text
    assert index_name(org.id) not in explain_search(settings, other_org.id)
    assert asyncio.run(maintain(low(settings))).line() is None  # settled: nothing to do

    delete_items(url, org.id, DROP + 1)  # shrunk, but inside the band: kept
    assert asyncio.run(maintain(low(settings))).line() is None and states(settings).get(org.id) == "valid"
    delete_items(url, org.id, DROP - 1)
    assert asyncio.run(maintain(low(settings))).dropped == [index_name(org.id)]
    assert org.id not in states(settings)


def test_a_build_in_progress_is_not_used_and_an_interrupted_one_is_redone(
        settings: Settings, org: Org, tidy: list[str]) -> None:
    url = settings.database.url
    tidy.append(org.id)
    add_items(url, org.id, CREATE + 50)
    # A write transaction left open makes a concurrent build wait for it (after the index is in
    # the catalog, not valid yet); cancelling the build then leaves an invalid index behind.
    blocker = psycopg.connect(url)
    blocker.execute("SELECT set_config('app.org_id', %s, true)", (org.id,))
    blocker.execute("UPDATE memories SET source = 'blocking' WHERE id = (SELECT min(id) FROM memories)")
    failure: list[BaseException] = []

    def build() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            try:
                conn.execute(f"CREATE INDEX CONCURRENTLY {index_name(org.id)} ON memories USING hnsw "
                             "((embedding::vector(384)) vector_cosine_ops) "
                             f"WHERE embedding_model = 'offline:hash' AND org_id = '{org.id}'")
            except psycopg.Error as exc:
                failure.append(exc)

    thread = threading.Thread(target=build)
    thread.start()
    try:
        until(lambda: states(settings).get(org.id) == "building", 30)
        assert index_name(org.id) not in explain_search(settings, org.id)  # not valid: not planned
        rows = asyncio.run(list_indexes(low(settings)))
        assert any(r.org_id == org.id and r.state == "building" for r in rows)
        busy = asyncio.run(maintain(low(settings)))  # someone's build: left alone
        assert busy.line() is None
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("SELECT pg_cancel_backend(pid) FROM pg_stat_progress_create_index "
                         "WHERE index_relid = %s::regclass", (index_name(org.id),))
        thread.join(30)
    finally:
        blocker.rollback()
        blocker.close()
        thread.join(30)
    assert failure and states(settings).get(org.id) == "invalid"

    redone = asyncio.run(maintain(low(settings)))
    assert redone.rebuilt == [index_name(org.id)] and [o for o, _s, _b in redone.created] == [org.id]
    assert states(settings).get(org.id) == "valid"
    assert index_name(org.id) in explain_search(settings, org.id)


def test_cli_lists_indexes_with_state_and_size(settings: Settings, org: Org, tidy: list[str],
                                               tmp_path: Path) -> None:
    tidy.append(org.id)
    add_items(settings.database.url, org.id, CREATE)
    asyncio.run(maintain(low(settings)))
    env = {"AGENTOS_DATABASE_URL": settings.database.url, "AGENTOS_REDIS_URL": settings.redis.url,
           "AGENTOS_ENV": "test", "AGENTOS_MEMORY__INDEX_CREATE_ROWS": str(CREATE),
           "AGENTOS_MEMORY__INDEX_DROP_ROWS": str(DROP)}
    result = CliRunner().invoke(app, ["memory", "indexes", "--data-dir", str(tmp_path)], env=env)
    assert result.exit_code == 0, result.output
    line = next((ln for ln in result.output.splitlines() if org.id in ln), result.output)
    assert "valid" in line and f"{CREATE:,}" in line and "MiB" in line
