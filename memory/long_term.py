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
    "created_at, expires_at"
)

INSERT_SQL = f"""
INSERT INTO memories (id, org_id, scope, agent_id, user_id, session_id, kind, content, content_hash,
                      embedding, embedding_model, dims, metadata, source, expires_at)
VALUES (%(id)s, agentos_current_org(), %(scope)s, %(agent_id)s, %(user_id)s, %(session_id)s, %(kind)s,
        %(content)s, %(content_hash)s, %(embedding)s::vector, %(model)s, %(dims)s, %(metadata)s, %(source)s,
        %(expires_at)s)
ON CONFLICT (org_id, scope, coalesce(agent_id, ''), coalesce(user_id, ''), coalesce(session_id, ''), kind,
             content_hash, embedding_model)
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
"""

# The offline model's rows are searched through the partial HNSW index: the model is a literal
# (so the planner can prove the index predicate) and both sides are cast to vector(384).
SEARCH_OFFLINE_SQL = f"""
SELECT {COLUMNS}, 1 - ((embedding::vector(384)) <=> %(query)s::vector(384)) AS score
FROM memories
WHERE embedding_model = '{OFFLINE_MODEL}'
{_FILTERS}
ORDER BY (embedding::vector(384)) <=> %(query)s::vector(384)
LIMIT %(limit)s
"""
SEARCH_SQL = f"""
SELECT {COLUMNS}, 1 - (embedding <=> %(query)s::vector) AS score
FROM memories
WHERE embedding_model = %(model)s AND dims = %(dims)s
{_FILTERS}
ORDER BY embedding <=> %(query)s::vector
LIMIT %(limit)s
"""
# Filters after an approximate index scan may leave fewer than `limit` rows (a small org in a big
# table); pgvector >= 0.8 then keeps scanning. Older versions ignore the unknown setting.
ITERATIVE_SCAN_SQL = "SELECT set_config('hnsw.iterative_scan', 'strict_order', true)"

HAS_MODEL_SQL = "SELECT EXISTS (SELECT 1 FROM memories WHERE embedding_model = %s) AS found"

LIST_SQL = f"""
SELECT {COLUMNS} FROM memories
WHERE (%(cursor)s::text IS NULL OR id < %(cursor)s)
{_FILTERS}
ORDER BY id DESC LIMIT %(limit)s
"""
GET_SQL = f"SELECT {COLUMNS} FROM memories WHERE id = %s AND (expires_at IS NULL OR expires_at > now())"
DELETE_SQL = "DELETE FROM memories WHERE id = %s RETURNING id"
DELETE_FOR_USER_SQL = "DELETE FROM memories WHERE user_id = %s"


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


@dataclass(frozen=True)
class MemoryFilters:
    """Exact-match filters; None matches anything."""

    scope: str | None = None
    agent_id: str | None = None
    user_id: str | None = None
    session_id: str | None = None
    kinds: list[str] | None = None

    def params(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "agent_id": self.agent_id,
            "user_id": self.user_id,
            "session_id": self.session_id,
            "kinds": list(self.kinds) if self.kinds else None,
        }


def content_hash(content: str) -> str:
    return hashlib.sha256(content.encode("utf-8")).hexdigest()


def vector_literal(values: list[float]) -> str:
    """pgvector's text form, e.g. `[0.1,0.2]` (cast with ::vector in SQL)."""
    return "[" + ",".join(repr(float(v)) for v in values) + "]"


async def remember(
    conn: AsyncConnection[DictRow], item: MemoryItem, embedding: list[float], model: str
) -> tuple[dict[str, Any], bool]:
    """Store `item` (or find the same fact already stored); returns (row, created)."""
    if item.scope not in SCOPES:
        raise ValueError(f"unknown scope {item.scope!r}")
    if item.kind not in KINDS:
        raise ValueError(f"unknown kind {item.kind!r}")
    if not embedding:
        raise ValueError("an embedding needs at least one dimension")
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
    params = (filters or MemoryFilters()).params() | {
        "query": vector_literal(query_embedding),
        "model": model,
        "dims": len(query_embedding),
        "limit": limit,
    }
    await conn.execute(ITERATIVE_SCAN_SQL)
    sql = SEARCH_OFFLINE_SQL if model == OFFLINE_MODEL and len(query_embedding) == OFFLINE_DIMS else SEARCH_SQL
    rows = list(await (await conn.execute(sql, params)).fetchall())
    for row in rows:
        row["score"] = float(row["score"])
    return rows


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
    return await (await conn.execute(DELETE_SQL, (memory_id,))).fetchone() is not None


async def delete_for_user(conn: AsyncConnection[DictRow], user_id: str) -> int:
    """Remove every item of one end user (a privacy request); returns how many."""
    cur = await conn.execute(DELETE_FOR_USER_SQL, (user_id,))
    return max(cur.rowcount, 0)
