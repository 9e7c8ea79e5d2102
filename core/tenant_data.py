"""Where one org's data lives, found rather than listed, and how it is removed.

Other work adds tables all the time, so nothing here names the tenant tables: they are read
from the catalog (every table of the schema with an `org_id` column), ordered so that a table
is emptied before the tables its foreign keys point at. What has no `org_id` column is named
here, once: the LangGraph checkpoint tables (keyed by thread id, which starts with the org) and
the tables holding no org's data. tests/test_org_deletion.py fails when a table is neither.

Redis keys are found by pattern (core.tenancy: every key of an org starts `agentos:<org>:`),
uploaded files by the org's storage prefix (core.file_storage).

Every removal here goes through `tenant_tx` as the application role, in batches of
`batch_rows`, each its own short transaction: no statement holds locks other orgs' traffic
waits on for long, and a purge cut off half-way is simply run again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from psycopg import AsyncConnection, sql
from psycopg.rows import DictRow

from core.tenancy import AsyncPool, tenant_tx

# LangGraph's checkpoint tables (the library's own schema): no org column, but every thread id
# starts with the org (core.tenancy.checkpoint_thread_id).
CHECKPOINT_TABLES: tuple[str, ...] = ("checkpoint_writes", "checkpoint_blobs", "checkpoints")
# Tables that hold no org's data: people are global (a user may belong to several orgs; their
# membership and sign-in sessions in the org are tenant rows, and refresh tokens go with their
# sign-in session by cascade), as are password resets (per user).
GLOBAL_TABLES: tuple[str, ...] = ("agentos_schema_migrations", "checkpoint_migrations", "orgs", "users",
                                  "refresh_tokens", "password_resets")

TENANT_TABLES_SQL = """
SELECT c.relname AS name, has_table_privilege(c.oid, 'DELETE') AS deletable
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'org_id' AND NOT a.attisdropped
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY c.relname
"""
ALL_TABLES_SQL = """
SELECT c.relname AS name FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
ORDER BY c.relname
"""
FOREIGN_KEYS_SQL = """
SELECT DISTINCT child.relname AS child, parent.relname AS parent
FROM pg_constraint k
JOIN pg_class child ON child.oid = k.conrelid
JOIN pg_class parent ON parent.oid = k.confrelid
JOIN pg_namespace n ON n.oid = child.relnamespace
WHERE k.contype = 'f' AND n.nspname = current_schema() AND k.conrelid <> k.confrelid
"""


@dataclass(frozen=True)
class TenantTable:
    name: str
    # False: the application may not delete from it (the append-only audit log); its rows go
    # with the org row, by the foreign key's ON DELETE CASCADE (run as the table's owner).
    deletable: bool


async def tenant_tables(conn: AsyncConnection[DictRow]) -> list[TenantTable]:
    """Every table with an `org_id` column, children before the tables they reference."""
    rows = await (await conn.execute(TENANT_TABLES_SQL)).fetchall()
    found = [TenantTable(r["name"], bool(r["deletable"])) for r in rows]
    edges = [(r["child"], r["parent"]) for r in await (await conn.execute(FOREIGN_KEYS_SQL)).fetchall()]
    return _children_first(found, edges)


def _children_first(tables: list[TenantTable], edges: list[tuple[str, str]]) -> list[TenantTable]:
    """A table comes after every table that references it (so deleting in this order never
    trips a foreign key without ON DELETE CASCADE); a cycle, should one appear, keeps name order."""
    names = {t.name for t in tables}
    referenced_by: dict[str, set[str]] = {t.name: set() for t in tables}
    for child, parent in edges:
        if child in names and parent in names:
            referenced_by[parent].add(child)
    ordered: list[TenantTable] = []
    placed: set[str] = set()
    remaining = list(tables)
    while remaining:
        ready = [t for t in remaining if referenced_by[t.name] <= placed]
        if not ready:  # a cycle: break it in name order
            ready = remaining[:1]
        for t in ready:
            ordered.append(t)
            placed.add(t.name)
        remaining = [t for t in remaining if t.name not in placed]
    return ordered


async def untracked_tables(conn: AsyncConnection[DictRow]) -> list[str]:
    """Tables that have no `org_id` column and are named neither a checkpoint table nor global:
    a table nobody said how to remove an org's rows from."""
    tenant = {r["name"] for r in await (await conn.execute(TENANT_TABLES_SQL)).fetchall()}
    every = [r["name"] for r in await (await conn.execute(ALL_TABLES_SQL)).fetchall()]
    known = tenant | set(CHECKPOINT_TABLES) | set(GLOBAL_TABLES)
    return [name for name in every if name not in known]


@dataclass
class Removed:
    """What a removal took away: rows per table, Redis keys, stored files."""

    rows: dict[str, int] = field(default_factory=dict)
    redis_keys: int = 0
    files: int = 0
    workspaces: int = 0

    def add(self, table: str, count: int) -> None:
        if count:
            self.rows[table] = self.rows.get(table, 0) + count

    def summary(self) -> str:
        tables = ", ".join(f"{t} {n}" for t, n in sorted(self.rows.items()))
        return (f"{sum(self.rows.values())} rows ({tables or 'none'}), {self.redis_keys} Redis keys, "
                f"{self.files} files, {self.workspaces} workspaces")


def _batch_sql(table: str, partitioned: bool) -> sql.Composed:
    # ctid batches: one short statement per `limit` rows, whatever indexes the table has. A ctid
    # is a row's place in its own file, so in a partitioned table (run_events) it names a row in
    # each partition: there the partition (tableoid) is part of the row's address.
    # (The ctid list still lets each partition find its rows by a TID scan.)
    if partitioned:
        return sql.SQL(
            "WITH v AS MATERIALIZED (SELECT tableoid AS t, ctid AS c FROM {t} WHERE org_id = agentos_current_org() "
            "LIMIT %s) DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT c FROM v)) "
            "AND (tableoid, ctid) IN (SELECT t, c FROM v)"
        ).format(t=sql.Identifier(table))
    return sql.SQL(
        "DELETE FROM {t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {t} WHERE org_id = agentos_current_org() LIMIT %s))"
    ).format(t=sql.Identifier(table))


PARTITIONED_SQL = "SELECT relkind = 'p' AS partitioned FROM pg_class WHERE oid = to_regclass(%s)"


async def delete_in_batches(pool: AsyncPool, org_id: str, table: str, batch: int, removed: Removed) -> None:
    """Delete every row of the org in `table`, `batch` rows per transaction."""
    async with pool.connection() as conn:
        row = await (await conn.execute(PARTITIONED_SQL, (table,))).fetchone()
    statement = _batch_sql(table, bool(row and row["partitioned"]))
    while True:
        async with tenant_tx(pool, org_id) as conn:
            count = (await conn.execute(statement, (batch,))).rowcount
        removed.add(table, count)
        if count < batch:
            return


async def delete_checkpoints(conn: AsyncConnection[DictRow], thread_ids: Sequence[str], removed: Removed) -> None:
    """Every checkpoint row of these threads (by the tables' primary keys, which lead with thread_id)."""
    if not thread_ids:
        return
    for table in CHECKPOINT_TABLES:
        statement = sql.SQL("DELETE FROM {} WHERE thread_id = ANY(%s)").format(sql.Identifier(table))
        removed.add(table, (await conn.execute(statement, (list(thread_ids),))).rowcount)


async def delete_checkpoint_prefix(conn: AsyncConnection[DictRow], prefix: str, removed: Removed) -> None:
    """Every checkpoint row whose thread id starts with `prefix` (a sweep: threads of rows that
    are already gone)."""
    for table in CHECKPOINT_TABLES:
        statement = sql.SQL("DELETE FROM {} WHERE starts_with(thread_id, %s)").format(sql.Identifier(table))
        removed.add(table, (await conn.execute(statement, (prefix,))).rowcount)


async def unlink_matching(redis: aioredis.Redis, pattern: str, removed: Removed, count: int = 1000) -> None:
    """UNLINK every key matching `pattern` (SCAN: never blocks Redis the way KEYS would)."""
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=pattern, count=count):
        batch.append(key)
        if len(batch) >= count:
            removed.redis_keys += int(await redis.unlink(*batch))
            batch = []
    if batch:
        removed.redis_keys += int(await redis.unlink(*batch))
