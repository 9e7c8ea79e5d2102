"""Per-org vector indexes, kept by a maintenance job (runtime/maintenance.py runs `run_job`).

Search (memory/long_term.py) is exact for an org with few items of the offline model and goes
through HNSW above `long_term.EXACT_SCAN_MAX_ROWS`. The shared HNSW index, filtered by org
afterwards, has poor recall for an org holding a few % of the table; an org's own partial index
(`WHERE embedding_model = 'offline:hash' AND org_id = '<org>'`) does not (docs/benchmarks.md,
"Memory recall"). This job gives every org that grows past `settings.memory.index_create_rows`
its own such index and drops it when the org falls below `index_drop_rows`.

- **Never blocking writes**: indexes are built and dropped `CONCURRENTLY`, on a connection of
  their own as the table owner (DDL needs the owner; the application role is not).
- **Used only once valid**: the planner ignores an index whose build has not finished
  (`pg_index.indisvalid` false), so searches keep their old plan until the switch. The search
  query names the model as a literal and the org as a bound value, which is how the planner
  proves the partial index's predicate.
- **Interrupted builds**: a build that died (a killed process, a cancelled statement, a lost
  connection) leaves an invalid index behind; the next pass drops it and builds it again.
- **Bounded**: at most `index_build_concurrency` builds at once, each with
  `index_maintenance_work_mem_mb` and `index_build_workers` parallel workers; the number of
  indexes is bounded by the table's size over `index_create_rows`.

Counting needs a view across orgs: the `index_maintenance` policy (switched on for one
transaction) shows `memories` rows to this job only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from dataclasses import dataclass, field

import psycopg
from psycopg import AsyncConnection, sql
from psycopg.rows import DictRow, dict_row

from core.infra import Infra
from core.settings import MemorySettings, Settings
from memory.long_term import OFFLINE_MODEL

log = logging.getLogger("agentos.memory.indexes")

SHARED_INDEX = "memories_offline_hnsw"
PREFIX = "memories_offline_hnsw_"
_SAFE_ORG = re.compile(r"[a-z0-9_]{1,40}")
_ORG_IN_PREDICATE = re.compile(r"org_id = '((?:[^']|'')*)'::text")

COUNTS_SQL = f"""
SELECT org_id, count(*) AS n FROM memories WHERE embedding_model = '{OFFLINE_MODEL}' GROUP BY org_id
"""
SCAN_ON_SQL = "SELECT set_config('app.index_maintenance', 'on', true)"
# The per-org indexes of `memories`, with their state: a build in progress and an interrupted
# one are both not valid yet; only the first has a row in pg_stat_progress_create_index.
INDEXES_SQL = r"""
SELECT c.relname AS name, i.indisvalid AS valid, pg_get_expr(i.indpred, i.indrelid) AS predicate,
       pg_relation_size(c.oid) AS bytes,
       EXISTS (SELECT 1 FROM pg_stat_progress_create_index p WHERE p.index_relid = c.oid) AS building
FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
WHERE i.indrelid = 'memories'::regclass AND c.relname LIKE 'memories\_offline\_hnsw\_%'
ORDER BY c.relname
"""


def index_name(org_id: str) -> str:
    """The org's index name: the id itself when it is a plain identifier, else a hash of it."""
    if _SAFE_ORG.fullmatch(org_id):
        return PREFIX + org_id
    return PREFIX + "h" + hashlib.sha256(org_id.encode()).hexdigest()[:24]


def create_sql(org_id: str) -> sql.Composed:
    """The org's index: pgvector's default m and ef_construction (a bigger graph looked dearer
    to the planner, which then chose the shared index), the predicate the search query repeats."""
    return sql.SQL(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON memories USING hnsw ((embedding::vector(384)) "
        "vector_cosine_ops) WHERE embedding_model = {} AND org_id = {}"
    ).format(sql.Identifier(index_name(org_id)), sql.Literal(OFFLINE_MODEL), sql.Literal(org_id))


@dataclass(frozen=True)
class OrgIndex:
    name: str
    org_id: str
    state: str  # valid | building | invalid
    bytes: int


@dataclass(frozen=True)
class Plan:
    """What one pass does: build for `create` (org ids, largest first), drop `drop` (index
    names), and `rebuild` (invalid indexes, dropped first and built again if still wanted)."""

    create: list[str] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)
    rebuild: list[str] = field(default_factory=list)


def plan(counts: dict[str, int], indexes: list[OrgIndex], memory: MemorySettings) -> Plan:
    """The decisions of one pass (pure): hysteresis between `index_create_rows` and `index_drop_rows`."""
    by_org = {ix.org_id: ix for ix in indexes}
    out = Plan()
    for ix in indexes:
        n = counts.get(ix.org_id, 0)
        if ix.state == "building":
            continue  # someone else's build (a manual one): leave it alone
        if n < memory.index_drop_rows:
            out.drop.append(ix.name)
        elif ix.state == "invalid":
            out.rebuild.append(ix.name)
            out.create.append(ix.org_id)
    for org_id, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        if n >= memory.index_create_rows and org_id not in by_org:
            out.create.append(org_id)
    out.create.sort(key=lambda org: -counts.get(org, 0))
    return out


async def owner_connection(settings: Settings) -> AsyncConnection[DictRow]:
    """A connection as the login role of the database URL (the schema's owner), autocommit:
    CREATE/DROP INDEX CONCURRENTLY run outside transactions and need the table's owner."""
    return await AsyncConnection.connect(
        settings.database.url, autocommit=True, row_factory=dict_row,
        connect_timeout=max(1, int(settings.database.connect_timeout_s)),
        application_name="agentos-index-maintenance",
    )


async def counts_of(conn: AsyncConnection[DictRow]) -> dict[str, int]:
    """Each org's number of items of the offline model (across orgs, for this job only)."""
    async with conn.transaction():
        await conn.execute(SCAN_ON_SQL)
        rows = await (await conn.execute(COUNTS_SQL)).fetchall()
    return {str(r["org_id"]): int(r["n"]) for r in rows}


async def indexes_of(conn: AsyncConnection[DictRow]) -> list[OrgIndex]:
    out = []
    for r in await (await conn.execute(INDEXES_SQL)).fetchall():
        found = _ORG_IN_PREDICATE.search(str(r["predicate"] or ""))
        if found is None:
            continue  # not one of ours (an operator's index by a similar name)
        state = "valid" if r["valid"] else ("building" if r["building"] else "invalid")
        out.append(OrgIndex(str(r["name"]), found.group(1).replace("''", "'"), state, int(r["bytes"])))
    return out


@dataclass
class PassReport:
    created: list[tuple[str, float, int]] = field(default_factory=list)  # org, seconds, bytes
    dropped: list[str] = field(default_factory=list)
    rebuilt: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # org, error

    def line(self) -> str | None:
        if not (self.created or self.dropped or self.rebuilt or self.failed):
            return None
        parts = [f"created {len(self.created)}"
                 + (" (" + ", ".join(f"{o} in {s:.1f}s, {b / 2**20:.1f} MiB" for o, s, b in self.created) + ")"
                    if self.created else ""),
                 f"dropped {len(self.dropped)}", f"redone after an interrupted build {len(self.rebuilt)}"]
        if self.failed:
            parts.append("failed " + ", ".join(f"{o} ({e})" for o, e in self.failed))
        return "; ".join(parts)


async def _drop(conn: AsyncConnection[DictRow], name: str) -> None:
    await conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(name)))


async def _build(settings: Settings, org_id: str, rows: int, report: PassReport) -> None:
    memory = settings.memory
    t0 = time.monotonic()
    log.info("building the vector index of org %s (%d items)", org_id, rows)
    try:
        conn = await owner_connection(settings)
        try:
            await conn.execute(sql.SQL("SET maintenance_work_mem = {}").format(
                sql.Literal(f"{memory.index_maintenance_work_mem_mb}MB")))
            await conn.execute(sql.SQL("SET max_parallel_maintenance_workers = {}").format(
                sql.Literal(memory.index_build_workers)))
            await conn.execute("SET statement_timeout = 0")  # a large org's build takes minutes
            await conn.execute(create_sql(org_id))
            size = await (await conn.execute("SELECT pg_relation_size(%s::regclass) AS b",
                                             (index_name(org_id),))).fetchone()
        finally:
            await conn.close()
    except psycopg.Error as exc:  # the invalid index it leaves is redone at the next pass
        log.warning("the vector index of org %s failed: %s", org_id, exc)
        report.failed.append((org_id, type(exc).__name__))
        return
    seconds = time.monotonic() - t0
    report.created.append((org_id, seconds, int(size["b"]) if size else 0))
    log.info("built the vector index of org %s in %.1f s", org_id, seconds)


async def maintain(settings: Settings) -> PassReport:
    """One pass: count, decide (`plan`), drop, then build with bounded concurrency."""
    report = PassReport()
    conn = await owner_connection(settings)
    try:
        counts = await counts_of(conn)
        decided = plan(counts, await indexes_of(conn), settings.memory)
        for name in decided.rebuild:
            log.info("dropping %s, left invalid by an interrupted build, to build it again", name)
            await _drop(conn, name)
            report.rebuilt.append(name)
        for name in decided.drop:
            log.info("dropping %s: its org fell below %d items", name, settings.memory.index_drop_rows)
            await _drop(conn, name)
            report.dropped.append(name)
    finally:
        await conn.close()
    limit = asyncio.Semaphore(settings.memory.index_build_concurrency)

    async def one(org_id: str) -> None:
        async with limit:
            await _build(settings, org_id, counts.get(org_id, 0), report)

    await asyncio.gather(*(one(org_id) for org_id in decided.create))
    return report


async def run_job(infra: Infra) -> str | None:
    """The maintenance job (runtime/maintenance.py JOBS)."""
    return (await maintain(infra.settings)).line()


@dataclass(frozen=True)
class IndexRow:
    """One line of `agentos memory indexes`."""

    org_id: str
    items: int
    state: str  # valid | building | invalid | wanted (the next pass builds it)
    name: str | None
    bytes: int


async def list_indexes(settings: Settings) -> list[IndexRow]:
    """Every per-org index with its org's size and state, and orgs due for one, largest first."""
    conn = await owner_connection(settings)
    try:
        counts = await counts_of(conn)
        indexes = await indexes_of(conn)
    finally:
        await conn.close()
    rows = [IndexRow(ix.org_id, counts.get(ix.org_id, 0), ix.state, ix.name, ix.bytes) for ix in indexes]
    have = {ix.org_id for ix in indexes}
    rows += [IndexRow(org, n, "wanted", None, 0) for org, n in counts.items()
             if n >= settings.memory.index_create_rows and org not in have]
    return sorted(rows, key=lambda r: (-r.items, r.org_id))
