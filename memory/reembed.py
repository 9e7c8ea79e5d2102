"""Move one org's long-term memories to another embedding model (`agentos memory reembed`).

Copy, then switch, so that a search never misses an item during the move. While the org still
searches its current model, items are re-embedded in batches, in id order (keyset pagination):
each batch is embedded outside any transaction, then its new embeddings are written *beside* the
items, in `memory_staged_embeddings`, in its own tenant transaction; the items themselves keep
their old embedding, so searches (which use the org's model) still find every one of them. Once
every item has a staged embedding, one transaction *switches*: it locks the org row, checks that
no item appeared meanwhile without one (else it stages those first and tries again), moves the
staged embeddings into `memories` (`embedding`, `embedding_model`, `dims`), deletes the staged
rows and sets the org's `settings.embedding_model`. A search sees the org before the switch (old
model, every item) or after it (new model, every item), never a half-moved org. When the same fact
already exists under the target model (the dedup unique index includes the model), the old item
is deleted in the switch instead: it is *merged*. An item deleted meanwhile is *skipped* (its
staged row goes with it).

Items still on another model after the switch (a worker that had not yet seen the switch
remembered something), and every item of an org already on the target model, are moved in place,
one by one: the org searches the target model, so each becomes visible as it moves.

Then knowledge documents whose chunks were made with other chunking settings (`chunk_chars`,
`chunk_overlap_chars`; recorded on each document) are chunked again and embedded with the
target model, each document's chunks replaced in one transaction: a search finds the old chunks
or the new ones, never neither. This also runs when the org is already on the target model, so
`agentos memory reembed --model <the current model>` after changing the chunking settings only
re-chunks.

Resumable and idempotent: staged embeddings survive a crash or an embedder failure, and only
items with none are embedded, so running it again continues where it stopped; running it when
done changes nothing.
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
from memory.embeddings import Embedder, org_embedding_spec, resolve_embedder
from memory.long_term import vector_literal

ORG_EXISTS_SQL = "SELECT 1 FROM orgs WHERE id = agentos_current_org()"
# The knowledge documents whose chunks were moved say so.
SET_DOCUMENTS_MODEL_SQL = "UPDATE knowledge_documents SET embedding_model = %s WHERE status = 'ready'"
PENDING_SQL = """
SELECT count(*) AS n, count(s.memory_id) AS staged
FROM memories m LEFT JOIN memory_staged_embeddings s ON s.memory_id = m.id AND s.embedding_model = %(model)s
WHERE m.embedding_model <> %(model)s
"""
# Items not on the target model: all of them (in place), or only those without a staged embedding.
BATCH_SQL = """
SELECT m.id, m.content FROM memories m
WHERE m.embedding_model <> %(model)s AND m.id > %(after)s
  AND (NOT %(unstaged)s OR NOT EXISTS (
        SELECT 1 FROM memory_staged_embeddings s WHERE s.memory_id = m.id AND s.embedding_model = %(model)s))
ORDER BY m.id LIMIT %(limit)s
"""
# Staged only while the item is still there and not yet on the target model.
STAGE_SQL = """
INSERT INTO memory_staged_embeddings (memory_id, org_id, embedding_model, dims, embedding)
SELECT m.id, m.org_id, %(model)s, %(dims)s, %(embedding)s::vector FROM memories m
WHERE m.id = %(id)s AND m.embedding_model <> %(model)s
ON CONFLICT (memory_id) DO UPDATE
SET embedding_model = excluded.embedding_model, dims = excluded.dims, embedding = excluded.embedding,
    created_at = now()
"""
UPDATE_SQL = """
UPDATE memories SET embedding = %(embedding)s::vector, embedding_model = %(model)s, dims = %(dims)s
WHERE id = %(id)s AND embedding_model <> %(model)s
"""
DELETE_SQL = "DELETE FROM memories WHERE id = %s"
# The switch, in one transaction. The org row is locked so that two runs switch one at a time.
LOCK_ORG_SQL = "SELECT settings->>'embedding_model' AS model FROM orgs WHERE id = agentos_current_org() FOR UPDATE"
UNSTAGED_SQL = """
SELECT EXISTS (
  SELECT 1 FROM memories m WHERE m.embedding_model <> %(model)s AND NOT EXISTS (
    SELECT 1 FROM memory_staged_embeddings s WHERE s.memory_id = m.id AND s.embedding_model = %(model)s)
) AS found
"""
# The same fact (the dedup index's key, its model aside) as another row.
_SAME_FACT = """o.scope = m.scope AND coalesce(o.agent_id, '') = coalesce(m.agent_id, '')
    AND coalesce(o.user_id, '') = coalesce(m.user_id, '')
    AND coalesce(o.session_id, '') = coalesce(m.session_id, '') AND o.kind = m.kind
    AND o.content_hash = m.content_hash AND coalesce(o.document_id, '') = coalesce(m.document_id, '')"""
# Merged: a staged item whose fact already exists under the target model, or that another staged
# item (of a third model, with a smaller id) also holds; the move would break the dedup index.
MERGE_SQL = f"""
DELETE FROM memories m USING memory_staged_embeddings s
WHERE s.memory_id = m.id AND s.embedding_model = %(model)s AND m.embedding_model <> %(model)s
  AND (EXISTS (SELECT 1 FROM memories o WHERE o.embedding_model = %(model)s AND {_SAME_FACT})
       OR EXISTS (SELECT 1 FROM memories o JOIN memory_staged_embeddings so
                    ON so.memory_id = o.id AND so.embedding_model = %(model)s
                  WHERE o.embedding_model <> %(model)s AND o.id < m.id AND {_SAME_FACT}))
"""
SWITCH_SQL = """
UPDATE memories m SET embedding = s.embedding, embedding_model = s.embedding_model, dims = s.dims
FROM memory_staged_embeddings s
WHERE s.memory_id = m.id AND s.embedding_model = %(model)s AND m.embedding_model <> %(model)s
"""
CLEAR_STAGED_SQL = "DELETE FROM memory_staged_embeddings"
# Ready documents chunked with other settings (or before they were recorded), in id order.
RECHUNK_SQL = """
SELECT id, title, content_type, content, metadata FROM knowledge_documents
WHERE status = 'ready' AND id > %(after)s AND chunking IS DISTINCT FROM %(chunking)s::jsonb
ORDER BY id LIMIT %(limit)s
"""
SET_ORG_MODEL_SQL = "UPDATE orgs SET settings = settings || %s WHERE id = agentos_current_org()"

# How many times the switch finds new items without a staged embedding (written meanwhile) and
# stages them before it gives up and says so; each round only stages what appeared in the last.
SWITCH_ATTEMPTS = 5


class ReembedError(RuntimeError):
    """The embedder failed; what was done before stays done (run it again to continue)."""


@dataclass
class ReembedProgress:
    """Counts so far, out of `total` items not on the target model when the run started: `done`
    has a new embedding (staged, until the switch moves them; then moved), `merged` into an
    existing item of the target model, `skipped` (deleted or moved meanwhile)."""

    total: int = 0
    done: int = 0
    merged: int = 0
    skipped: int = 0
    # Knowledge documents chunked again because the chunking settings changed since their ingestion.
    rechunked: int = 0
    # Whether this run switched the org's model (False: it was already on the target).
    switched: bool = False


# Called between batches with the counts so far; tests also use it to look at the org mid-move.
Progress = Callable[[ReembedProgress], None]


async def reembed(
    pool: AsyncPool,
    settings: Settings,
    org_id: str,
    target_spec: str,
    *,
    batch: int = 256,
    progress: Progress | None = None,
    embedder: Embedder | None = None,
) -> ReembedProgress:
    """Re-embed every item of `org_id` not embedded by `target_spec`, then make it the org's model.

    ValueError for an unknown spec, a bad batch size or an unknown org (before anything changes);
    ReembedError when the embedder fails, or when items keep appearing on the old model faster than
    they are staged. `embedder` overrides the one `target_spec` names.
    """
    if batch < 1:
        raise ValueError("the batch size must be at least 1")
    embedder = embedder or resolve_embedder(target_spec, settings)
    model = embedder.model
    async with tenant_tx(pool, org_id) as conn:
        if await (await conn.execute(ORG_EXISTS_SQL)).fetchone() is None:
            raise ValueError(f"no organisation with id {org_id!r}")
        current = await org_embedding_spec(conn, settings.memory.embedding_model)
        row = await (await conn.execute(PENDING_SQL, {"model": model})).fetchone()
    counts = ReembedProgress(total=int(row["n"]) if row else 0, done=int(row["staged"]) if row else 0)
    if progress:
        progress(counts)
    if current != model:
        for _ in range(SWITCH_ATTEMPTS):
            await _batches(pool, org_id, embedder, batch, counts, progress, staged=True)
            if await _switch(pool, org_id, model, counts):
                break
        else:
            raise ReembedError(f"items kept arriving on the old model during {SWITCH_ATTEMPTS} attempts to switch "
                               f"to {model!r}; their embeddings are kept: run it again at a quieter time")
        if progress:
            progress(counts)
    # In place: the org searches `model` now, so each item becomes visible as it moves.
    await _batches(pool, org_id, embedder, batch, counts, progress, staged=False)
    async with tenant_tx(pool, org_id) as conn:
        await conn.execute(SET_ORG_MODEL_SQL, (Jsonb({"embedding_model": model}),))
        await conn.execute(SET_DOCUMENTS_MODEL_SQL, (model,))
        await conn.execute(CLEAR_STAGED_SQL)  # staged for another target by an earlier run, if any
    await _rechunk(pool, settings, org_id, embedder, counts, progress)
    return counts


async def _batches(
    pool: AsyncPool, org_id: str, embedder: Embedder, batch: int, counts: ReembedProgress,
    progress: Progress | None, *, staged: bool,
) -> None:
    """Embed, in id order, the items not on the target model: beside them (`staged`: only those
    without a staged embedding yet), or in place."""
    model = embedder.model
    after = ""
    while True:
        params = {"model": model, "after": after, "limit": batch, "unstaged": staged}
        async with tenant_tx(pool, org_id) as conn:
            rows = await (await conn.execute(BATCH_SQL, params)).fetchall()
        if not rows:
            return
        vectors = await _embed(embedder, [r["content"] for r in rows])
        async with tenant_tx(pool, org_id) as conn:
            for r, vector in zip(rows, vectors, strict=True):
                if staged:
                    await _stage(conn, r["id"], vector, model, counts)
                else:
                    await _move(conn, r["id"], vector, model, counts)
        after = rows[-1]["id"]
        if progress:
            progress(counts)


async def _switch(pool: AsyncPool, org_id: str, model: str, counts: ReembedProgress) -> bool:
    """Move the staged embeddings into the items and make `model` the org's, in one transaction;
    False (nothing changed) if some item of another model has no staged embedding yet."""
    async with tenant_tx(pool, org_id) as conn:
        await conn.execute(LOCK_ORG_SQL)
        row = await (await conn.execute(UNSTAGED_SQL, {"model": model})).fetchone()
        if row and row["found"]:
            return False
        merged = (await conn.execute(MERGE_SQL, {"model": model})).rowcount
        moved = (await conn.execute(SWITCH_SQL, {"model": model})).rowcount
        await conn.execute(CLEAR_STAGED_SQL)
        await conn.execute(SET_ORG_MODEL_SQL, (Jsonb({"embedding_model": model}),))
        await conn.execute(SET_DOCUMENTS_MODEL_SQL, (model,))
    # Staged items deleted meanwhile took their staged rows with them: they were never moved.
    counts.skipped += max(counts.done - merged - moved, 0)
    counts.done, counts.merged, counts.switched = moved, counts.merged + merged, True
    return True


async def _rechunk(
    pool: AsyncPool, settings: Settings, org_id: str, embedder: Embedder, counts: ReembedProgress,
    progress: Progress | None,
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


async def _stage(
    conn: AsyncConnection[DictRow], memory_id: str, vector: list[float], model: str, counts: ReembedProgress
) -> None:
    """Write one item's embedding by `model` beside it (the item is unchanged)."""
    params = {"id": memory_id, "embedding": vector_literal(vector), "model": model, "dims": len(vector)}
    cur = await conn.execute(STAGE_SQL, params)
    if cur.rowcount == 1:
        counts.done += 1
    else:
        counts.skipped += 1


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
