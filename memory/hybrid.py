"""Hybrid retrieval for knowledge chunks: vector similarity and Postgres full-text search, fused
by reciprocal rank (RRF).

The offline embedding model matches shared words and spellings; a real model matches meaning
but can miss a rare exact term (a product name, an error code). Full-text search over the
chunks (English stemming, any of the query's words, ranked by `ts_rank_cd`) finds those. Each
list ranks its candidates; a chunk's fused value is the sum over the lists of 1 / (RRF_K + its
rank), so a chunk found by both rises, and neither list's scores need to be comparable.

Rows keep `score` = cosine similarity to the query (also for chunks found by text only), so a
recall threshold means the same in both modes; the order is the fused one. Only knowledge
chunks (kind `document`) are searched by text: the GIN index `memories_document_fts_idx`
covers them alone.
"""

from __future__ import annotations

from typing import Any

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from memory import long_term

RRF_K = 60  # the usual constant: damps the weight of the very first ranks
CANDIDATES_PER_LIST = 4  # each list brings `limit` x this many candidates (at least MIN_CANDIDATES)
MIN_CANDIDATES = 20

# Any of the query's words (plainto_tsquery joins them with AND, which a question rarely
# satisfies): its lexemes are re-joined with OR. The expression repeats the index's exactly.
_TSQUERY = "replace(plainto_tsquery('english', %(text)s)::text, '&', '|')::tsquery"
TEXT_SQL = f"""
SELECT {long_term.COLUMNS}, 1 - (embedding <=> %(query)s::vector) AS score
FROM memories
WHERE kind = 'document' AND embedding_model = %(model)s AND dims = %(dims)s
  AND to_tsvector('english', content) @@ {_TSQUERY}
  {long_term._FILTERS}
ORDER BY ts_rank_cd(to_tsvector('english', content), {_TSQUERY}) DESC, id
LIMIT %(limit)s
"""


async def text_search(
    conn: AsyncConnection[DictRow], text: str, query_embedding: list[float], model: str,
    filters: long_term.MemoryFilters | None, limit: int,
) -> list[dict[str, Any]]:
    """Knowledge chunks matching any word of `text`, best text rank first (with cosine `score`)."""
    params = (filters or long_term.MemoryFilters()).params() | {
        "text": text, "query": long_term.vector_literal(query_embedding), "model": model,
        "dims": len(query_embedding), "limit": limit}
    rows = list(await (await conn.execute(TEXT_SQL, params, prepare=False)).fetchall())
    for row in rows:
        row["score"] = float(row["score"])
    return rows


def fuse(lists: list[list[dict[str, Any]]], limit: int) -> list[dict[str, Any]]:
    """Reciprocal rank fusion of ranked row lists (rows identified by `id`), best first."""
    fused: dict[str, float] = {}
    rows: dict[str, dict[str, Any]] = {}
    for ranked in lists:
        for rank, row in enumerate(ranked, start=1):
            fused[row["id"]] = fused.get(row["id"], 0.0) + 1.0 / (RRF_K + rank)
            rows.setdefault(row["id"], row)
    order = sorted(fused, key=lambda i: (-fused[i], -rows[i]["score"], i))
    return [rows[i] for i in order[:limit]]


async def search(
    conn: AsyncConnection[DictRow], text: str, query_embedding: list[float], model: str,
    filters: long_term.MemoryFilters | None = None, limit: int = 10,
) -> list[dict[str, Any]]:
    """The `limit` best items by vector and (for knowledge chunks) text, fused (see the module)."""
    n = max(limit * CANDIDATES_PER_LIST, MIN_CANDIDATES)
    by_vector = await long_term.search(conn, query_embedding, model, filters, n)
    by_text = await text_search(conn, text, query_embedding, model, filters, n)
    return fuse([by_vector, by_text], limit)
