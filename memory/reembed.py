"""Move one org's long-term memories to another embedding model (`agentos memory reembed`).

Items are re-embedded in batches, in id order (keyset pagination). Each batch is embedded outside
any transaction, then written in its own tenant transaction: the new `embedding`,
`embedding_model` and `dims`. When the same fact already exists under the target model (the
dedup unique index includes the model), the old item is deleted instead: it is *merged*. An item
deleted or moved by someone else meanwhile is *skipped*. Last, the org's
`settings.embedding_model` is set to the target, so searches use it from then on.

Then knowledge documents whose chunks were made with other chunking settings (`chunk_chars`,
`chunk_overlap_chars`; recorded on each document) are chunked again and embedded with the
target model, each document's chunks replaced in one transaction: a search finds the old chunks
or the new ones, never neither. This also runs when the org is already on the target model, so
`agentos memory reembed --model <the current model>` after changing the chunking settings only
re-chunks.

Resumable: only items not yet on the target model are selected, so running it again after a crash
or an embedder failure continues where it stopped, and running it when done changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from psycopg import AsyncConnection
from psycopg.errors import UniqueViolation
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from core.settings import Settings
from core.tenancy import AsyncPool, tenant_tx
from memory import knowledge
from memory.chunking import chunk_document
from memory.embeddings import Embedder, resolve_embedder
from memory.long_term import vector_literal

ORG_EXISTS_SQL = "SELECT 1 FROM orgs WHERE id = agentos_current_org()"
# The knowledge documents whose chunks were moved say so.
SET_DOCUMENTS_MODEL_SQL = "UPDATE knowledge_documents SET embedding_model = %s WHERE status = 'ready'"
PENDING_SQL = "SELECT count(*) AS n FROM memories WHERE embedding_model <> %s"
BATCH_SQL = """
SELECT id, content FROM memories
WHERE embedding_model <> %(model)s AND id > %(after)s
ORDER BY id LIMIT %(limit)s
"""
UPDATE_SQL = """
UPDATE memories SET embedding = %(embedding)s::vector, embedding_model = %(model)s, dims = %(dims)s
WHERE id = %(id)s AND embedding_model <> %(model)s
"""
DELETE_SQL = "DELETE FROM memories WHERE id = %s"
# Ready documents chunked with other settings (or before they were recorded), in id order.
RECHUNK_SQL = """
SELECT id, title, content_type, content, metadata FROM knowledge_documents
WHERE status = 'ready' AND id > %(after)s AND chunking IS DISTINCT FROM %(chunking)s::jsonb
ORDER BY id LIMIT %(limit)s
"""
SET_ORG_MODEL_SQL = "UPDATE orgs SET settings = settings || %s WHERE id = agentos_current_org()"


class ReembedError(RuntimeError):
    """The embedder failed; what was done before stays done (run it again to continue)."""


@dataclass
class ReembedProgress:
    """Counts so far: `done` re-embedded, `merged` into an existing item of the target model,
    `skipped` (deleted or moved meanwhile), out of `total` pending when the run started."""

    total: int = 0
    done: int = 0
    merged: int = 0
    skipped: int = 0
    # Knowledge documents chunked again because the chunking settings changed since their ingestion.
    rechunked: int = 0


async def reembed(
    pool: AsyncPool,
    settings: Settings,
    org_id: str,
    target_spec: str,
    *,
    batch: int = 256,
    progress: Callable[[ReembedProgress], None] | None = None,
    embedder: Embedder | None = None,
) -> ReembedProgress:
    """Re-embed every item of `org_id` not embedded by `target_spec`, then make it the org's model.

    ValueError for an unknown spec, a bad batch size or an unknown org (before anything changes);
    ReembedError when the embedder fails. `embedder` overrides the one `target_spec` names.
    """
    if batch < 1:
        raise ValueError("the batch size must be at least 1")
    embedder = embedder or resolve_embedder(target_spec, settings)
    model = embedder.model
    async with tenant_tx(pool, org_id) as conn:
        if await (await conn.execute(ORG_EXISTS_SQL)).fetchone() is None:
            raise ValueError(f"no organisation with id {org_id!r}")
        row = await (await conn.execute(PENDING_SQL, (model,))).fetchone()
    counts = ReembedProgress(total=int(row["n"]) if row else 0)
    if progress:
        progress(counts)
    after = ""
    while True:
        async with tenant_tx(pool, org_id) as conn:
            rows = await (await conn.execute(BATCH_SQL, {"model": model, "after": after, "limit": batch})).fetchall()
        if not rows:
            break
        vectors = await _embed(embedder, [r["content"] for r in rows])
        async with tenant_tx(pool, org_id) as conn:
            for r, vector in zip(rows, vectors, strict=True):
                await _move(conn, r["id"], vector, model, counts)
        after = rows[-1]["id"]
        if progress:
            progress(counts)
    async with tenant_tx(pool, org_id) as conn:
        await conn.execute(SET_ORG_MODEL_SQL, (Jsonb({"embedding_model": model}),))
        await conn.execute(SET_DOCUMENTS_MODEL_SQL, (model,))
    await _rechunk(pool, settings, org_id, embedder, counts, progress)
    return counts


async def _rechunk(
    pool: AsyncPool, settings: Settings, org_id: str, embedder: Embedder, counts: ReembedProgress,
    progress: Callable[[ReembedProgress], None] | None,
) -> None:
    """Chunk again, with the current settings, every ready document chunked otherwise; each
    document's chunks are replaced in one transaction, so a search finds its old chunks or its
    new ones, never neither."""
    chunking = knowledge.chunking_of(settings)
    after = ""
    while True:
        params = {"after": after, "chunking": Jsonb(chunking), "limit": 16}
        async with tenant_tx(pool, org_id) as conn:
            docs = await (await conn.execute(RECHUNK_SQL, params)).fetchall()
        if not docs:
            return
        for doc in docs:
            chunks = chunk_document(doc["content"], doc["content_type"], chunking["chars"], chunking["overlap"])
            vectors = await _embed(embedder, [c.text for c in chunks]) if chunks else []
            async with tenant_tx(pool, org_id) as conn:
                row = await (await conn.execute(knowledge.LOCK_SQL, (doc["id"],))).fetchone()
                if row is None or row["status"] != "ready":
                    continue  # deleted, or being ingested again meanwhile
                await knowledge.replace_chunks(conn, doc, chunks, vectors, embedder.model, chunking)
            counts.rechunked += 1
            if progress:
                progress(counts)
        after = docs[-1]["id"]


async def _embed(embedder: Embedder, texts: list[str]) -> list[list[float]]:
    try:
        vectors = await embedder.embed(texts)
    except Exception as exc:  # any provider or client failure: stop, keep what was done
        raise ReembedError(f"the embedding model {embedder.model!r} failed: {type(exc).__name__}: {exc}") from exc
    if len(vectors) != len(texts) or any(not v or len(v) != len(vectors[0]) for v in vectors):
        raise ReembedError(f"the embedding model {embedder.model!r} returned {len(vectors)} vectors of "
                           f"uneven or no dimension for {len(texts)} texts")
    return vectors


async def _move(
    conn: AsyncConnection[DictRow], memory_id: str, vector: list[float], model: str, counts: ReembedProgress
) -> None:
    """Put one item on `model`, or delete it when the same fact already exists under `model`."""
    params = {"id": memory_id, "embedding": vector_literal(vector), "model": model, "dims": len(vector)}
    try:
        async with conn.transaction():  # a savepoint: a dedup conflict undoes only this item
            cur = await conn.execute(UPDATE_SQL, params)
    except UniqueViolation:
        await conn.execute(DELETE_SQL, (memory_id,))
        counts.merged += 1
        return
    if cur.rowcount == 1:
        counts.done += 1
    else:
        counts.skipped += 1
