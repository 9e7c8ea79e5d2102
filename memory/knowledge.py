"""The knowledge base: documents and their ingestion into long-term memory.

A document (`knowledge_documents`) is stored `pending` by the API with its whole content, then
`ingest` (a Celery task on a worker) chunks it (`memory.chunking`), embeds the chunks with the
org's embedding model and writes them as memories of kind `document`, scope `org`, each pointing
back at the document (`memories.document_id`, ON DELETE CASCADE: deleting a document deletes its
chunks). The document is then `ready`, with its chunk count and embedding model.

Ingestion is safe to repeat: each attempt replaces the chunks of any attempt before it in one
transaction, while holding the document's row. An embedding failure is retried with exponential
backoff until `memory.ingest_max_attempts` attempts were made; the document is then `failed` with
`{"code": "EMBEDDING_FAILED", "message": ...}`. A document deleted meanwhile ends it quietly.

The SQL functions take a connection inside `core.tenancy.tenant_tx` (row-level security), like
`memory.long_term`; nothing here trusts an org id in SQL.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from psycopg import AsyncConnection, errors
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from core.ids import new_id
from core.settings import Settings
from core.tenancy import AsyncPool, tenant_tx
from memory import hybrid, long_term
from memory.chunking import CONTENT_TYPES, Chunk, chunk_document
from memory.embeddings import Embedder, org_embedding_spec, resolve_embedder

log = logging.getLogger("agentos.knowledge")

STATUSES = ("pending", "ready", "failed")

# How many chunks go to the embedder in one call.
EMBED_BATCH = 64
# How much of the content `get` returns as `content_preview`.
PREVIEW_CHARS = 500

PUBLIC_COLUMNS = (
    "id, title, content_type, size_bytes, status, error, chunks, embedding_model, attempts, metadata, "
    "file_id, created_at, updated_at"
)

CREATE_SQL = f"""
INSERT INTO knowledge_documents (id, org_id, title, content_type, content, size_bytes, metadata, file_id)
VALUES (%(id)s, agentos_current_org(), %(title)s, %(content_type)s, %(content)s, %(size_bytes)s, %(metadata)s,
        %(file_id)s)
RETURNING {PUBLIC_COLUMNS}
"""
GET_SQL = f"SELECT {PUBLIC_COLUMNS}, left(content, %s) AS content_preview FROM knowledge_documents WHERE id = %s"
LIST_SQL = f"""
SELECT {PUBLIC_COLUMNS} FROM knowledge_documents
WHERE (%(cursor)s::text IS NULL OR id < %(cursor)s)
  AND (%(status)s::text IS NULL OR status = %(status)s)
ORDER BY id DESC LIMIT %(limit)s
"""
DELETE_SQL = "DELETE FROM knowledge_documents WHERE id = %s RETURNING id, chunks"
# An attempt starts by counting itself, so a worker that dies mid-ingestion still used one.
CLAIM_SQL = """
UPDATE knowledge_documents SET attempts = attempts + 1, updated_at = now()
WHERE id = %s AND status = 'pending'
RETURNING id, title, content_type, content, attempts, metadata
"""
LOCK_SQL = "SELECT status FROM knowledge_documents WHERE id = %s FOR UPDATE"
DELETE_CHUNKS_SQL = "DELETE FROM memories WHERE document_id = %s"
READY_SQL = """
UPDATE knowledge_documents
SET status = 'ready', chunks = %s, embedding_model = %s, chunking = %s, error = NULL, updated_at = now()
WHERE id = %s
"""
FAILED_SQL = """
UPDATE knowledge_documents SET status = 'failed', error = %s, updated_at = now()
WHERE id = %s AND status = 'pending'
"""
# While it is retried, a pending document shows its last failure.
RETRYING_SQL = "UPDATE knowledge_documents SET error = %s, updated_at = now() WHERE id = %s AND status = 'pending'"
# The watchdog's scan across orgs (inside `core.tenancy.watchdog_scan_tx`, read-only): pending
# documents nobody touched for a while, whose message was probably lost (the broker was down).
STALE_PENDING_SQL = """
SELECT id, org_id, attempts FROM knowledge_documents
WHERE status = 'pending' AND updated_at < now() - %(after)s
ORDER BY updated_at LIMIT %(limit)s
"""


# --- documents ------------------------------------------------------------------------------------


async def create(
    conn: AsyncConnection[DictRow], *, title: str, content_type: str, content: str, metadata: dict[str, Any],
    file_id: str | None = None,
) -> dict[str, Any]:
    """A new `pending` document (without its content in the returned row); `file_id`: the uploaded
    file it was made from, which takes it along when deleted."""
    if content_type not in CONTENT_TYPES:
        raise ValueError(f"unknown content type {content_type!r}")
    params = {
        "id": new_id("document"), "title": title, "content_type": content_type, "content": content,
        "size_bytes": len(content.encode("utf-8")), "metadata": Jsonb(metadata), "file_id": file_id,
    }
    row = await (await conn.execute(CREATE_SQL, params)).fetchone()
    assert row is not None
    return row


async def get(conn: AsyncConnection[DictRow], document_id: str) -> dict[str, Any] | None:
    """One document with the first `PREVIEW_CHARS` characters of its content (`content_preview`)."""
    return await (await conn.execute(GET_SQL, (PREVIEW_CHARS, document_id))).fetchone()


async def list_documents(
    conn: AsyncConnection[DictRow], status: str | None, cursor: str | None, limit: int
) -> list[dict[str, Any]]:
    """Documents newest first, without content; fetches `limit + 1` rows (for `core.pagination.page`)."""
    params = {"status": status, "cursor": cursor, "limit": limit + 1}
    return list(await (await conn.execute(LIST_SQL, params)).fetchall())


async def delete(conn: AsyncConnection[DictRow], document_id: str) -> dict[str, Any] | None:
    """Delete a document and (by cascade) its chunks; returns `{id, chunks}` or None if absent."""
    return await (await conn.execute(DELETE_SQL, (document_id,))).fetchone()


async def mark_failed(conn: AsyncConnection[DictRow], document_id: str, code: str, message: str) -> None:
    await conn.execute(FAILED_SQL, (Jsonb({"code": code, "message": message}), document_id))


async def stale_pending(conn: AsyncConnection[DictRow], after: timedelta, limit: int) -> list[dict[str, Any]]:
    """Pending documents of any org untouched for `after`, oldest first: `{id, org_id, attempts}`.
    Needs a `core.tenancy.watchdog_scan_tx` connection."""
    return list(await (await conn.execute(STALE_PENDING_SQL, {"after": after, "limit": limit})).fetchall())


# --- search ---------------------------------------------------------------------------------------


async def search_chunks(
    conn: AsyncConnection[DictRow], query_embedding: list[float], model: str, limit: int, *,
    document_ids: list[str] | None = None, metadata: dict[str, Any] | None = None, hybrid_text: str | None = None,
) -> list[dict[str, Any]]:
    """The org's knowledge chunks nearest to the query (best first), as recall sees them (scope
    `org`, kind `document`), each with its document id, title, heading path and chunk number.
    With `hybrid_text` (the query's text), chunks are also found by full text and fused by rank."""
    filters = long_term.MemoryFilters(scope="org", kinds=["document"], document_ids=document_ids, metadata=metadata)
    if hybrid_text is not None:
        rows = await hybrid.search(conn, hybrid_text, query_embedding, model, filters, limit)
    else:
        rows = await long_term.search(conn, query_embedding, model, filters, limit)
    return [chunk_row(row) for row in rows]


def chunk_row(row: dict[str, Any]) -> dict[str, Any]:
    meta = row.get("metadata") or {}
    chunk = meta.get("chunk")
    return {"id": row["id"], "document_id": row["document_id"], "title": str(meta.get("title") or ""),
            "heading": meta.get("heading") or None, "chunk": chunk if isinstance(chunk, int) else None,
            "content": row["content"], "score": float(row["score"]), "metadata": meta}


# --- ingestion ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IngestOutcome:
    """How one attempt ended; `retry_after_s` is set when it should be tried again."""

    status: Literal["ready", "failed", "retry", "gone", "skipped"]
    chunks: int = 0
    attempts: int = 0
    retry_after_s: float | None = None


class EmbeddingFailed(Exception):
    def __init__(self, model: str, cause: BaseException) -> None:
        status = getattr(cause, "status_code", None)
        detail = type(cause).__name__ + (f", HTTP {status}" if isinstance(status, int) else "")
        # Only the error's type and status: a provider's message may echo a key or a URL.
        super().__init__(f"The embedding model {model!r} failed ({detail}).")


def retry_delay(settings: Settings, attempts: int) -> float:
    """The backoff before attempt `attempts + 1`: base * 2^(attempts - 1), capped."""
    memory = settings.memory
    return float(min(memory.ingest_retry_base_s * 2 ** max(attempts - 1, 0), memory.ingest_retry_max_s))


async def ingest(pool: AsyncPool, settings: Settings, org_id: str, document_id: str) -> IngestOutcome:
    """One ingestion attempt of a pending document (see the module's docstring)."""
    async with tenant_tx(pool, org_id) as conn:
        doc = await (await conn.execute(CLAIM_SQL, (document_id,))).fetchone()
        spec = await org_embedding_spec(conn, settings.memory.embedding_model) if doc else ""
    if doc is None:  # deleted, or already ready or failed (a repeated delivery)
        return IngestOutcome("gone")
    attempts = int(doc["attempts"])
    max_attempts = settings.memory.ingest_max_attempts
    if attempts > max_attempts:  # earlier attempts died without a word (killed workers)
        await _fail(pool, org_id, document_id, "EMBEDDING_FAILED",
                    f"Ingestion did not finish in {max_attempts} attempts.")
        return IngestOutcome("failed", attempts=attempts)
    chunks = chunk_document(doc["content"], doc["content_type"], settings.memory.chunk_chars,
                            settings.memory.chunk_overlap_chars)
    try:
        embedder = resolve_embedder(spec, settings)
    except ValueError as exc:  # a configuration error: trying again will not help
        await _fail(pool, org_id, document_id, "EMBEDDING_FAILED", str(exc))
        return IngestOutcome("failed", attempts=attempts)
    try:
        vectors = await _embed(embedder, chunks)
    except EmbeddingFailed as exc:
        if attempts >= max_attempts:
            await _fail(pool, org_id, document_id, "EMBEDDING_FAILED", f"{exc} Tried {attempts} times.")
            return IngestOutcome("failed", attempts=attempts)
        delay = retry_delay(settings, attempts)
        log.warning("document %s: attempt %d of %d failed (%s); retrying in %.1fs", document_id, attempts,
                    max_attempts, exc, delay)
        async with tenant_tx(pool, org_id) as conn:
            await conn.execute(RETRYING_SQL, (Jsonb({"code": "EMBEDDING_FAILED", "message": str(exc)}), document_id))
        return IngestOutcome("retry", attempts=attempts, retry_after_s=delay)
    try:
        stored = await _store(pool, org_id, doc, chunks, vectors, embedder.model, chunking_of(settings))
    except errors.ForeignKeyViolation:  # the document was deleted while its chunks were written
        return IngestOutcome("gone", attempts=attempts)
    if stored is None:
        return IngestOutcome("gone", attempts=attempts)
    return IngestOutcome("ready", chunks=stored, attempts=attempts)


async def _embed(embedder: Embedder, chunks: list[Chunk]) -> list[list[float]]:
    vectors: list[list[float]] = []
    for start in range(0, len(chunks), EMBED_BATCH):
        batch = [c.text for c in chunks[start : start + EMBED_BATCH]]
        try:
            got = await embedder.embed(batch)
        except Exception as exc:  # the provider is down, refused, or timed out
            raise EmbeddingFailed(embedder.model, exc) from exc
        if len(got) != len(batch) or any(not v for v in got):
            raise EmbeddingFailed(embedder.model, ValueError("wrong number of embeddings"))
        vectors.extend(got)
    return vectors


def chunking_of(settings: Settings) -> dict[str, int]:
    """The chunking settings a document's chunks were made with (kept on the document, so that
    `agentos memory reembed` knows to chunk it again when they change)."""
    return {"chars": settings.memory.chunk_chars, "overlap": settings.memory.chunk_overlap_chars}


async def _store(
    pool: AsyncPool, org_id: str, doc: dict[str, Any], chunks: list[Chunk], vectors: list[list[float]], model: str,
    chunking: dict[str, int],
) -> int | None:
    """Replace the document's chunks and mark it ready, in one transaction; None if it is gone
    (or another delivery finished it first)."""
    document_id = str(doc["id"])
    async with tenant_tx(pool, org_id) as conn:
        row = await (await conn.execute(LOCK_SQL, (document_id,))).fetchone()
        if row is None or row["status"] != "pending":
            return None
        return await replace_chunks(conn, doc, chunks, vectors, model, chunking)


async def replace_chunks(
    conn: AsyncConnection[DictRow], doc: dict[str, Any], chunks: list[Chunk], vectors: list[list[float]],
    model: str, chunking: dict[str, int],
) -> int:
    """In the caller's transaction: the document's chunks become `chunks` (a search sees either
    the old ones or the new ones, never neither), and the document says how many, of which
    model, chunked how. Returns how many chunks it has."""
    document_id = str(doc["id"])
    await conn.execute(DELETE_CHUNKS_SQL, (document_id,))
    ids: set[str] = set()
    for chunk, vector in zip(chunks, vectors, strict=True):
        item = long_term.MemoryItem(
            content=chunk.text, scope="org", kind="document", document_id=document_id, source="knowledge",
            # The document's metadata is inherited (so a metadata filter finds its chunks);
            # the chunk's own keys win over document keys of the same name.
            metadata=dict(doc.get("metadata") or {}) | {"document_id": document_id, "title": doc["title"],
                                                         "chunk": chunk.index, "heading": chunk.heading},
        )
        stored, _ = await long_term.remember(conn, item, vector, model)
        ids.add(str(stored["id"]))  # a chunk repeated in the same document is one row
    await conn.execute(READY_SQL, (len(ids), model, Jsonb(chunking), document_id))
    return len(ids)


async def _fail(pool: AsyncPool, org_id: str, document_id: str, code: str, message: str) -> None:
    async with tenant_tx(pool, org_id) as conn:
        await mark_failed(conn, document_id, code, message)
