"""The memory-store contract every backend keeps, and the Postgres backend.

A `MemoryStore` holds items for many orgs and never lets one org see, change or delete another's
(each call names the org; the backend enforces it: row-level security in Postgres, org-scoped
keys in Redis). The same fact written twice, even concurrently, is one item; expired items are
invisible; search compares only items embedded by the same model, best first.

`PostgresMemoryStore` is long-term memory (durable, pgvector). `memory.redis_store` keeps
short-lived session notes in Redis. `tests/test_memory_conformance.py` runs one suite against
both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from psycopg.rows import DictRow

from core.tenancy import AsyncPool, Statement, tenant_batch, tenant_tx
from memory import hybrid, long_term
from memory.long_term import MemoryFilters, MemoryItem


class MemoryStore(Protocol):
    async def remember(
        self, org_id: str, item: MemoryItem, embedding: list[float], model: str
    ) -> tuple[dict[str, Any], bool]:
        """Store `item` (or find the same fact stored); returns (row, created)."""
        ...

    async def search(
        self, org_id: str, embedding: list[float], model: str, filters: MemoryFilters | None = None,
        limit: int = 10,
    ) -> list[dict[str, Any]]:
        """Live items embedded by `model`, nearest first, each with `score` (cosine similarity)."""
        ...

    async def list(
        self, org_id: str, filters: MemoryFilters | None = None, cursor: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Live items, newest id first, ids below `cursor`; up to `limit + 1` rows (for paging)."""
        ...

    async def get(self, org_id: str, memory_id: str) -> dict[str, Any] | None: ...

    async def delete(self, org_id: str, memory_id: str) -> bool: ...

    async def delete_for_user(self, org_id: str, user_id: str) -> int:
        """Remove every item of one end user; returns how many."""
        ...


class PostgresMemoryStore:
    """Long-term memory: `memory.long_term` in one tenant transaction per call."""

    def __init__(self, pool: AsyncPool) -> None:
        self.pool = pool

    async def remember(
        self, org_id: str, item: MemoryItem, embedding: list[float], model: str
    ) -> tuple[dict[str, Any], bool]:
        async with tenant_tx(self.pool, org_id) as conn:
            return await long_term.remember(conn, item, embedding, model)

    async def search(
        self, org_id: str, embedding: list[float], model: str, filters: MemoryFilters | None = None,
        limit: int = 10,
    ) -> list[dict[str, Any]]:
        async with tenant_tx(self.pool, org_id) as conn:
            return await long_term.search(conn, embedding, model, filters, limit)

    async def search_after(
        self, org_id: str, before: Sequence[Statement], embedding: list[float], model: str,
        filters: MemoryFilters | None = None, limit: int = 10,
    ) -> tuple[list[dict[str, Any]], list[list[DictRow]]]:
        """`search`, sent with the caller's statements `before` (that need none of its results) as
        one batched transaction: one round trip, unless the org's size must be counted first
        (once per `long_term.PLAN_CACHE_S`) or an HNSW search found too few rows (then exact, as
        `search` does). Returns the items and the rows of each statement of `before`."""
        plan = long_term.known_plan(org_id, model, len(embedding), filters)
        if plan is None:
            [counted] = await tenant_batch(self.pool, org_id, long_term.count_statement())
            long_term.note_count(org_id, counted)
            plan = long_term.known_plan(org_id, model, len(embedding), filters) or "exact"
        search = long_term.search_statements(org_id, embedding, model, filters, limit, plan)
        rows = await tenant_batch(self.pool, org_id, *before, *search)
        found = long_term.scored(rows[-1])
        if plan == "hnsw" and len(found) < limit:  # few rows pass the filters: only an exact search finds them all
            exact = long_term.search_statements(org_id, embedding, model, filters, limit, "exact")
            found = long_term.scored((await tenant_batch(self.pool, org_id, *exact))[-1])
        return found, rows[:len(before)]

    async def hybrid_search(
        self, org_id: str, text: str, embedding: list[float], model: str, filters: MemoryFilters | None = None,
        limit: int = 10,
    ) -> list[dict[str, Any]]:
        """`search`, with knowledge chunks also found by full text, fused by rank (memory.hybrid)."""
        async with tenant_tx(self.pool, org_id) as conn:
            return await hybrid.search(conn, text, embedding, model, filters, limit)

    async def list(
        self, org_id: str, filters: MemoryFilters | None = None, cursor: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        async with tenant_tx(self.pool, org_id) as conn:
            return await long_term.list_memories(conn, filters, cursor, limit)

    async def get(self, org_id: str, memory_id: str) -> dict[str, Any] | None:
        async with tenant_tx(self.pool, org_id) as conn:
            return await long_term.get(conn, memory_id)

    async def delete(self, org_id: str, memory_id: str) -> bool:
        async with tenant_tx(self.pool, org_id) as conn:
            return await long_term.delete(conn, memory_id)

    async def delete_for_user(self, org_id: str, user_id: str) -> int:
        async with tenant_tx(self.pool, org_id) as conn:
            return await long_term.delete_for_user(conn, user_id)
