"""Row-level security is the tenant boundary: it holds even for a query with no WHERE org_id."""

from __future__ import annotations

import asyncio

import psycopg
import pytest
from psycopg import sql

from core.db import TenantIsolationError, check_tenant_isolation, isolation_problems, open_pool
from core.migrations import MIGRATIONS, TENANT_TABLES, current_version, migrate
from core.tenancy import tenant_tx


def _run(coro):
    return asyncio.run(coro)


def test_pgvector_extension_is_installed(stack):
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        row = conn.execute("SELECT '[1,2,3]'::vector <-> '[1,2,4]'::vector").fetchone()
    assert row[0] == pytest.approx(1.0)


def test_every_tenant_table_forces_rls_and_the_app_role_is_not_privileged(settings):
    async def check():
        pool = await open_pool(settings.database)
        try:
            async with pool.connection() as conn:
                return await isolation_problems(conn)
        finally:
            await pool.close()

    assert _run(check()) == []


@pytest.mark.parametrize("table", TENANT_TABLES)
def test_unscoped_query_returns_no_rows(client, org, settings, table):
    org.create_session(org.create_agent()["id"])  # the org has rows in most tables now

    async def count(org_id):
        pool = await open_pool(settings.database)
        try:
            if org_id is None:
                async with pool.connection() as conn:  # no org set, no WHERE clause
                    cur = await conn.execute(sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier(table)))
                    return (await cur.fetchone())["n"]
            async with tenant_tx(pool, org_id) as conn:
                cur = await conn.execute(sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier(table)))
                return (await cur.fetchone())["n"]
        finally:
            await pool.close()

    assert _run(count(None)) == 0
    if table in ("orgs", "api_keys", "agents", "agent_versions", "sessions", "audit_logs"):
        assert _run(count(org.id)) > 0


def test_scoped_query_sees_only_its_own_org(client, org, other_org, settings):
    org.create_agent(name="only-in-a")
    other_org.create_agent(name="only-in-b")

    async def names(org_id):
        pool = await open_pool(settings.database)
        try:
            async with tenant_tx(pool, org_id) as conn:
                return {r["name"] for r in await (await conn.execute("SELECT name FROM agents")).fetchall()}
        finally:
            await pool.close()

    assert _run(names(org.id)) == {"only-in-a"}
    assert _run(names(other_org.id)) == {"only-in-b"}


def test_writing_a_row_for_another_org_is_refused(org, other_org, settings):
    async def write():
        pool = await open_pool(settings.database)
        try:
            async with tenant_tx(pool, org.id) as conn:
                await conn.execute(
                    "INSERT INTO agents (id, org_id, name, config) VALUES ('agt_x', %s, 'sneaky', '{}')",
                    (other_org.id,),
                )
        finally:
            await pool.close()

    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        _run(write())


def test_org_setting_does_not_leak_to_the_next_user_of_a_pooled_connection(org, settings):
    async def scenario():
        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
        try:
            async with tenant_tx(pool, org.id) as conn:
                await conn.execute("SELECT 1")
            async with pool.connection() as conn:  # the same single connection, reused
                cur = await conn.execute("SELECT current_setting('app.org_id', true) AS org, count(*) AS n FROM orgs")
                return await cur.fetchone()
        finally:
            await pool.close()

    row = _run(scenario())
    assert row["n"] == 0
    assert not row["org"]


def test_start_up_check_refuses_a_table_without_forced_rls(stack, settings):
    async def scenario():
        conn = await psycopg.AsyncConnection.connect(stack.database_url, row_factory=psycopg.rows.dict_row)
        try:
            await conn.execute("ALTER TABLE audit_logs NO FORCE ROW LEVEL SECURITY")  # inside a transaction
            await conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(settings.database.app_role)))
            return await isolation_problems(conn)
        finally:
            await conn.rollback()
            await conn.close()

    assert _run(scenario()) == ["table audit_logs does not ENABLE and FORCE row-level security"]


def test_start_up_check_refuses_a_superuser_connection(stack, settings):
    async def scenario():
        pool = await open_pool(settings.database.model_copy(update={"app_role": "postgres"}))
        try:
            await check_tenant_isolation(pool)
        finally:
            await pool.close()

    with pytest.raises(TenantIsolationError, match="superuser"):
        _run(scenario())


def test_migrate_is_idempotent(stack, settings):
    assert migrate(stack.database_url, settings.database.app_role) == 0
    assert current_version(stack.database_url) == len(MIGRATIONS)


def test_batched_transactions_are_scoped_atomic_and_give_the_connection_back_as_it_came(org, other_org, settings):
    """`tenant_batch` and `tenant_pipeline_tx` (one round trip for a hot path's transaction):
    the same scoping as `tenant_tx`, all or nothing, and the pooled connection reused after them
    is idle, transactional (not autocommit) and scoped to no org."""
    from core.tenancy import tenant_batch, tenant_pipeline_tx

    org.create_agent(name="batched-a")
    other_org.create_agent(name="batched-b")
    rename = "UPDATE agents SET name = 'renamed' WHERE name = 'batched-a'"

    async def scenario():
        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
        try:
            seen, updated = await tenant_batch(pool, org.id, ("SELECT name FROM agents", ()), (rename, ()))
            with pytest.raises(psycopg.errors.DivisionByZero):  # the rename before it is undone
                await tenant_batch(pool, org.id, ("UPDATE agents SET name = 'twice' WHERE name = 'renamed'", ()),
                                   ("SELECT 1 / 0", ()))
            with pytest.raises(RuntimeError):
                async with tenant_pipeline_tx(pool, org.id) as conn:
                    await conn.execute("UPDATE agents SET name = 'thrice' WHERE name = 'renamed'")
                    raise RuntimeError("the block failed")
            async with tenant_pipeline_tx(pool, other_org.id) as conn:
                theirs = await (await conn.execute("SELECT name FROM agents")).fetchall()
            async with pool.connection() as conn:  # the same single connection, reused
                autocommit = conn.autocommit
                cur = await conn.execute("SELECT current_setting('app.org_id', true) AS org, count(*) AS n FROM orgs")
                leak = await cur.fetchone()
            async with tenant_tx(pool, org.id) as conn:
                names = {r["name"] for r in await (await conn.execute("SELECT name FROM agents")).fetchall()}
            return seen, updated, theirs, autocommit, leak, names
        finally:
            await pool.close()

    seen, updated, theirs, autocommit, leak, names = _run(scenario())
    assert {r["name"] for r in seen} == {"batched-a"} and updated == []
    assert {r["name"] for r in theirs} == {"batched-b"}
    assert autocommit is False and leak["n"] == 0 and not leak["org"]
    assert names == {"renamed"}  # neither the failed batch nor the failed block changed anything
