"""Long-term memory in Postgres + pgvector.

Every function takes a connection inside `core.tenancy.tenant_tx`: row-level security keeps each
org to its own rows, the SQL never needs (nor trusts) an org id from the caller. Embeddings are
made by the caller (`memory.embeddings`) outside the transaction.

Dedup: a unique index over (org, scope, agent, user, session, kind, content hash, embedding
model) makes the same fact one row, however many writers race; writing it again refreshes its
expiry and merges its metadata, and `remember` says it was not created.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from core.ids import new_id

SCOPES = ("org", "agent", "user", "session")
KINDS = ("summary", "preference", "fact", "document")
OFFLINE_MODEL = "offline:hash"
OFFLINE_DIMS = 384

COLUMNS = (
    "id, scope, agent_id, user_id, session_id, kind, content, metadata, source, embedding_model, dims, "
    "created_at, expires_at, document_id"
)

INSERT_SQL = f"""
INSERT INTO memories (id, org_id, scope, agent_id, user_id, session_id, kind, content, content_hash,
                      embedding, embedding_model, dims, metadata, source, expires_at, document_id)
VALUES (%(id)s, agentos_current_org(), %(scope)s, %(agent_id)s, %(user_id)s, %(session_id)s, %(kind)s,
        %(content)s, %(content_hash)s, %(embedding)s::vector, %(model)s, %(dims)s, %(metadata)s, %(source)s,
        %(expires_at)s, %(document_id)s)
ON CONFLICT (org_id, scope, coalesce(agent_id, ''), coalesce(user_id, ''), coalesce(session_id, ''), kind,
             content_hash, embedding_model, coalesce(document_id, ''))
DO UPDATE SET expires_at = EXCLUDED.expires_at, metadata = memories.metadata || EXCLUDED.metadata
RETURNING {COLUMNS}, (xmax = 0) AS created
"""

_FILTERS = """
  AND (expires_at IS NULL OR expires_at > now())
  AND (%(scope)s::text IS NULL OR scope = %(scope)s)
  AND (%(agent_id)s::text IS NULL OR agent_id = %(agent_id)s)
  AND (%(user_id)s::text IS NULL OR user_id = %(user_id)s)
  AND (%(session_id)s::text IS NULL OR session_id = %(session_id)s)
  AND (%(kinds)s::text[] IS NULL OR kind = ANY(%(kinds)s))
  AND (%(metadata)s::jsonb IS NULL OR metadata @> %(metadata)s::jsonb)
  AND (%(document_ids)s::text[] IS NULL OR document_id = ANY(%(document_ids)s))
  AND (NOT %(recall)s::boolean OR (
        (scope = 'org' OR (scope = 'agent' AND agent_id = %(recall_agent)s)
         OR (scope = 'user' AND user_id = %(recall_user)s) OR (scope = 'session' AND session_id = %(recall_session)s))
        AND NOT (kind = 'summary' AND session_id IS NOT DISTINCT FROM %(recall_session)s)))
"""

# How search picks its plan (measured by bench/memory.py; see docs/memory.md and the "Memory
# recall" section of docs/benchmarks.md). An org with few items of the offline model, or a search
# filtered by end user or session, is exact: every matching row is compared, read from the
# covering btree memories_offline_exact_idx, with a recall of 1. A larger org goes through HNSW
# with pgvector's iterative scan: its own partial index if an operator created one (`WHERE
# embedding_model = 'offline:hash' AND org_id = '<org>'`, matched because the query repeats the
# org id as a value), else the shared memories_offline_hnsw, whose results are filtered by org
# afterwards (lower recall for orgs that hold a few % of the table).
EXACT_SCAN_MAX_ROWS = 10_000  # at most this many rows of the model in the org: exact search
HNSW_EF_SEARCH = 400  # candidate list per index scan step (pgvector's default is 40)
HNSW_MAX_SCAN_TUPLES = 20_000  # iterative scan budget, then the exact search below takes over
HNSW_ITERATIVE_SCAN = "relaxed_order"  # re-sorted below, so relaxed order costs nothing

PLAN_CACHE_S = 60.0  # how long a process reuses an org's count (below) before counting again

# How many rows of the offline model the org holds, up to a cap: an index-only scan of
# memories_org_model_idx (row-level security adds the org), bounded by the cap, but still about
# 1 ms per 10,000 rows, so each process keeps the answer for PLAN_CACHE_S.
COUNT_OFFLINE_SQL = f"""
SELECT count(*) AS n FROM (
  SELECT 1 FROM memories WHERE embedding_model = '{OFFLINE_MODEL}' LIMIT %(cap)s
) AS capped
"""
# The offline model's rows are searched through a partial HNSW index: the model is a literal and
# the org a bound value (so the planner can prove an index predicate; row-level security checks
# the org anyway) and both sides are cast to vector(384). With
# relaxed order the scan may return rows slightly out of order, so the materialised CTE keeps
# the index scan together and the outer query re-sorts its `limit` rows.
SEARCH_OFFLINE_SQL = f"""
WITH nearest AS MATERIALIZED (
  SELECT {COLUMNS}, (embedding::vector(384)) <=> %(query)s::vector(384) AS distance
  FROM memories
  WHERE embedding_model = '{OFFLINE_MODEL}' AND org_id = %(org_id)s
  {_FILTERS}
  ORDER BY (embedding::vector(384)) <=> %(query)s::vector(384)
  LIMIT %(limit)s
)
SELECT {COLUMNS}, 1 - distance AS score FROM nearest ORDER BY distance
"""
# Exact search for the offline model: the CTE cannot be read in distance order from the HNSW
# index, so the planner compares every row that passes the filters (found through an
# org_id-leading btree) and keeps the `limit` nearest; only those rows are then read in full.
SEARCH_OFFLINE_EXACT_SQL = f"""
WITH distances AS MATERIALIZED (
  SELECT id, (embedding::vector(384)) <=> %(query)s::vector(384) AS distance
  FROM memories
  WHERE embedding_model = '{OFFLINE_MODEL}'
  {_FILTERS}
), nearest AS (
  SELECT id, distance FROM distances ORDER BY distance LIMIT %(limit)s
)
SELECT {COLUMNS}, 1 - nearest.distance AS score
FROM nearest JOIN memories USING (id)
ORDER BY nearest.distance
"""
# Other models have no index: always an exact search.
SEARCH_SQL = f"""
SELECT {COLUMNS}, 1 - (embedding <=> %(query)s::vector) AS score
FROM memories
WHERE embedding_model = %(model)s AND dims = %(dims)s
{_FILTERS}
ORDER BY embedding <=> %(query)s::vector
LIMIT %(limit)s
"""
# Transaction-local (set_config(..., true)): they end with the caller's tenant transaction.
# Sequential and bitmap scans are off for the search itself (and put back after it): where one
# org holds a large share of a small table the planner would rather read the table than the org's
# entries in memories_offline_exact_idx, which is 2-3x slower.
HNSW_SETTINGS_SQL = """
SELECT agentos_current_org() AS org_id,
       current_setting('enable_seqscan') || ',' || current_setting('enable_bitmapscan') AS scans,
       set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true),
       set_config('hnsw.iterative_scan', %(iterative)s, true),
       set_config('hnsw.ef_search', %(ef_search)s, true),
       set_config('hnsw.max_scan_tuples', %(max_scan_tuples)s, true)
"""

HAS_MODEL_SQL = "SELECT EXISTS (SELECT 1 FROM memories WHERE embedding_model = %s) AS found"

LIST_SQL = f"""
SELECT {COLUMNS} FROM memories
WHERE (%(cursor)s::text IS NULL OR id < %(cursor)s)
{_FILTERS}
ORDER BY id DESC LIMIT %(limit)s
"""
GET_SQL = f"SELECT {COLUMNS} FROM memories WHERE id = %s AND (expires_at IS NULL OR expires_at > now())"
# Expired rows are deleted too (they are invisible anyway) but do not count as found.
_LIVE = "(expires_at IS NULL OR expires_at > now()) AS live"
DELETE_SQL = f"DELETE FROM memories WHERE id = %s RETURNING {_LIVE}"
DELETE_FOR_USER_SQL = f"DELETE FROM memories WHERE user_id = %s RETURNING {_LIVE}"


@dataclass(frozen=True)
class MemoryItem:
    """What to remember. The embedding is made from `content` by the caller."""

    content: str
    scope: str = "org"
    kind: str = "fact"
    agent_id: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    source: str | None = None
    expires_at: datetime | None = None
    # A knowledge-base chunk: the document it belongs to (deleted with it).
    document_id: str | None = None


@dataclass(frozen=True)
class MemoryFilters:
    """Exact-match filters; None matches anything."""

    scope: str | None = None
    agent_id: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    kinds: list[str] | None = None
    # Items whose metadata contains this object (`metadata @> filter`): for each top-level key,
    # an equal scalar, or an array/object holding the given elements.
    metadata: dict[str, Any] | None = None
    # Knowledge chunks of these documents only.
    document_ids: list[str] | None = None
    # Recall for one conversation: items of the org, of this agent, of this end user and of this
    # session, except this session's own summaries (the session window already holds them).
    recall_for: RecallScope | None = None

    def params(self) -> dict[str, Any]:
        recall = self.recall_for
        return {
            "scope": self.scope,
            "agent_id": self.agent_id,
            "user_id": self.user_id,
            "session_id": self.session_id,
            "kinds": list(self.kinds) if self.kinds else None,
            "metadata": Jsonb(self.metadata) if self.metadata else None,
            "document_ids": list(self.document_ids) if self.document_ids is not None else None,
            "recall": recall is not None,
            "recall_agent": recall.agent_id if recall else None,
            "recall_user": recall.user_id if recall else None,
            "recall_session": recall.session_id if recall else None,
        }


@dataclass(frozen=True)
class RecallScope:
    """Whose memories a conversation may recall."""

    agent_id: str
    user_id: str | None
    session_id: str


def content_hash(content: str) -> str:
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def vector_literal(values: list[float]) -> str:
    """pgvector's text form, e.g. `[0.1,0.2]` (cast with ::vector in SQL)."""
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


def check_item(item: MemoryItem, embedding: list[float]) -> None:
    """ValueError for an item no backend may store."""
    if item.scope not in SCOPES:
        raise ValueError(f"unknown scope {item.scope!r}")
    if item.kind not in KINDS:
        raise ValueError(f"unknown kind {item.kind!r}")
    if not embedding:
        raise ValueError("an embedding needs at least one dimension")


async def remember(
    conn: AsyncConnection[DictRow], item: MemoryItem, embedding: list[float], model: str
) -> tuple[dict[str, Any], bool]:
    """Store `item` (or find the same fact already stored); returns (row, created)."""
    check_item(item, embedding)
    params = {
        "id": new_id("memory"),
        "scope": item.scope,
        "agent_id": item.agent_id,
        "user_id": item.user_id,
        "session_id": item.session_id,
        "kind": item.kind,
        "content": item.content,
        "content_hash": content_hash(item.content),
        "embedding": vector_literal(embedding),
        "model": model,
        "dims": len(embedding),
        "metadata": Jsonb(item.metadata),
        "source": item.source,
        "expires_at": item.expires_at,
        "document_id": item.document_id,
    }
    row = await (await conn.execute(INSERT_SQL, params)).fetchone()
    assert row is not None
    created = bool(row.pop("created"))
    return row, created


async def search(
    conn: AsyncConnection[DictRow],
    query_embedding: list[float],
    model: str,
    filters: MemoryFilters | None = None,
    limit: int = 10,
) -> list[dict[str, Any]]:
    """The `limit` live items nearest to the query among those made by the same `model`, best
    first, each with `score` (cosine similarity, 1 is identical)."""
    rows, _plan = await search_with_plan(conn, query_embedding, model, filters, limit)
    return rows


_org_counts: dict[str, tuple[float, int]] = {}  # org id -> (when counted, capped count)


def forget_plans() -> None:
    """Drop the cached counts (after changing the knobs above, e.g. in a benchmark)."""
    _org_counts.clear()


RESTORE_SCANS_SQL = "SELECT set_config('enable_seqscan', %s, true), set_config('enable_bitmapscan', %s, true)"


async def _offline_plan(
    conn: AsyncConnection[DictRow], model: str, dims: int, limit: int, filters: MemoryFilters | None
) -> tuple[str, str | None, str | None]:
    """(`exact` or `hnsw`, the current org, the scan settings to put back) for a search among
    the org's items of `model`; sets the scan settings for this transaction."""
    if model != OFFLINE_MODEL or dims != OFFLINE_DIMS:
        return "exact", None, None
    row = await (await conn.execute(HNSW_SETTINGS_SQL, _hnsw_settings(limit))).fetchone()
    org_id = row["org_id"] if row else None
    scans = row["scans"] if row else None
    if org_id is None or (filters is not None and (filters.user_id or filters.session_id)):
        # One end user's or one session's items are few, and found through their own btree
        # (memories_offline_exact_idx, memories_session_idx); through HNSW they would be rare
        # among the org's neighbours.
        return "exact", None, scans
    now = time.monotonic()
    cached = _org_counts.get(org_id)
    if cached is None or now - cached[0] > PLAN_CACHE_S:
        note_count(org_id, await (await conn.execute(*count_statement())).fetchall())
        cached = _org_counts[org_id]
    return ("hnsw" if cached[1] > EXACT_SCAN_MAX_ROWS else "exact"), org_id, scans


# A batched search (`search_statements`) is a prepared statement after its fifth use on a pooled
# connection (psycopg's default); forcing a custom plan each time plans it with its values, as
# the unprepared statement of `search_with_plan` is (NULL filters, the limit, the org's index).
CUSTOM_PLANS_SQL = "SELECT set_config('plan_cache_mode', 'force_custom_plan', true)"


def known_plan(org_id: str, model: str, dims: int, filters: MemoryFilters | None) -> str | None:
    """How `search_with_plan` would search, if that is known without a statement: None when the
    org's count must be read first (`COUNT_OFFLINE_SQL`, then `note_count`)."""
    if model != OFFLINE_MODEL or dims != OFFLINE_DIMS:
        return "exact"
    if filters is not None and (filters.user_id or filters.session_id):
        return "exact"
    cached = _org_counts.get(org_id)
    if cached is None or time.monotonic() - cached[0] > PLAN_CACHE_S:
        return None
    return "hnsw" if cached[1] > EXACT_SCAN_MAX_ROWS else "exact"


def count_statement() -> tuple[str, dict[str, Any]]:
    return COUNT_OFFLINE_SQL, {"cap": EXACT_SCAN_MAX_ROWS + 1}


def note_count(org_id: str, rows: list[DictRow]) -> None:
    """Keep the org's count (the rows of `count_statement`) for PLAN_CACHE_S."""
    if len(_org_counts) > 10_000:
        _org_counts.clear()
    _org_counts[org_id] = (time.monotonic(), int(rows[0]["n"]) if rows else 0)


def search_statements(
    org_id: str, query_embedding: list[float], model: str, filters: MemoryFilters | None, limit: int, plan: str,
) -> list[tuple[str, dict[str, Any]]]:
    """`search_with_plan`'s search by `plan` (`known_plan`) as statements for the END of a batched
    transaction (core.tenancy.tenant_batch): the planner settings, which end with the
    transaction (so nothing puts them back), then the search, whose rows are the last
    statement's (`scored`)."""
    dims = len(query_embedding)
    offline = model == OFFLINE_MODEL and dims == OFFLINE_DIMS
    params = (filters or MemoryFilters()).params() | {
        "query": vector_literal(query_embedding), "model": model, "dims": dims, "limit": limit, "org_id": org_id}
    statements: list[tuple[str, dict[str, Any]]] = [(CUSTOM_PLANS_SQL, {})]
    if offline:
        statements.append((HNSW_SETTINGS_SQL, _hnsw_settings(limit)))
    sql = SEARCH_OFFLINE_SQL if plan == "hnsw" else SEARCH_OFFLINE_EXACT_SQL if offline else SEARCH_SQL
    statements.append((sql, params))
    return statements


def scored(rows: list[DictRow]) -> list[dict[str, Any]]:
    """A search's rows, `score` as a float."""
    found = [dict(row) for row in rows]
    for row in found:
        row["score"] = float(row["score"])
    return found


def _hnsw_settings(limit: int) -> dict[str, str]:
    return {"iterative": HNSW_ITERATIVE_SCAN, "ef_search": str(min(max(HNSW_EF_SEARCH, limit), 1000)),
            "max_scan_tuples": str(HNSW_MAX_SCAN_TUPLES)}


async def search_with_plan(
    conn: AsyncConnection[DictRow],
    query_embedding: list[float],
    model: str,
    filters: MemoryFilters | None = None,
    limit: int = 10,
) -> tuple[list[dict[str, Any]], str]:
    """`search`, also saying how it searched: `exact`, `hnsw`, or `hnsw+exact` when the index
    scan ran out of its budget (`HNSW_MAX_SCAN_TUPLES`) before `limit` rows passed the filters."""
    dims = len(query_embedding)
    plan, org_id, scans = await _offline_plan(conn, model, dims, limit, filters)
    params = (filters or MemoryFilters()).params() | {
        "query": vector_literal(query_embedding),
        "model": model,
        "dims": dims,
        "limit": limit,
        "org_id": org_id,
    }
    rows: list[dict[str, Any]] = []
    if plan == "hnsw":
        # Never a prepared statement: a generic plan cannot see which filters are NULL nor the
        # limit (and then prefers the btree and a sort), nor match a per-org partial index.
        rows = list(await (await conn.execute(SEARCH_OFFLINE_SQL, params, prepare=False)).fetchall())
        if len(rows) < limit:  # few rows pass the filters: only an exact search finds them all
            plan = "hnsw+exact"
    if plan != "hnsw":
        offline = model == OFFLINE_MODEL and dims == OFFLINE_DIMS
        sql = SEARCH_OFFLINE_EXACT_SQL if offline else SEARCH_SQL
        rows = list(await (await conn.execute(sql, params, prepare=False)).fetchall())
    if scans is not None:
        await conn.execute(RESTORE_SCANS_SQL, tuple(scans.split(",")))
    for row in rows:
        row["score"] = float(row["score"])
    return rows, plan


async def has_model(conn: AsyncConnection[DictRow], model: str) -> bool:
    """Whether the org holds any item embedded by `model`."""
    row = await (await conn.execute(HAS_MODEL_SQL, (model,))).fetchone()
    return bool(row and row["found"])


async def list_memories(
    conn: AsyncConnection[DictRow], filters: MemoryFilters | None, cursor: str | None, limit: int
) -> list[dict[str, Any]]:
    """Live items, newest first; fetches `limit + 1` rows (for `core.pagination.page`)."""
    params = (filters or MemoryFilters()).params() | {"cursor": cursor, "limit": limit + 1}
    return list(await (await conn.execute(LIST_SQL, params)).fetchall())


async def get(conn: AsyncConnection[DictRow], memory_id: str) -> dict[str, Any] | None:
    return await (await conn.execute(GET_SQL, (memory_id,))).fetchone()


async def delete(conn: AsyncConnection[DictRow], memory_id: str) -> bool:
    """Remove one item; False if there was no live item with that id."""
    row = await (await conn.execute(DELETE_SQL, (memory_id,))).fetchone()
    return bool(row and row["live"])


async def delete_for_user(conn: AsyncConnection[DictRow], user_id: str) -> int:
    """Remove every item of one end user (a privacy request), expired ones too; returns how many
    live items went."""
    rows = await (await conn.execute(DELETE_FOR_USER_SQL, (user_id,))).fetchall()
    return sum(1 for row in rows if row["live"])
