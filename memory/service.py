"""What a worker uses of memory in a run: remember, recall, the session window and scratch state.

One `MemoryService` per worker process. `Who` says whose memory a call is about (org, agent, end
user, session); every read and write goes through a tenant transaction of that org.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from psycopg.rows import DictRow
from redis.exceptions import RedisError

from core.settings import Settings
from core.tenancy import (
    AsyncPool,
    Statement,
    memory_index_key,
    run_scratch_key,
    session_window_key,
    tenant_batch,
    tenant_tx,
)
from memory import long_term as items
from memory.embeddings import Embedder, org_embedding_spec, resolve_embedder
from memory.long_term import KINDS, MemoryFilters, MemoryItem, RecallScope
from memory.redis_store import RedisMemoryStore
from memory.short_term import ShortTermMemory, Window
from memory.store import MemoryStore, PostgresMemoryStore

log = logging.getLogger("agentos.memory")
RECALLED_KINDS = ("summary", "preference", "fact")  # plus "document" for agents with knowledge
WRITABLE_SCOPES = ("user", "agent", "org", "session")


class MemoryInputError(ValueError):
    """A request the caller can fix (unknown scope, no end user, oversize content)."""


@dataclass(frozen=True)
class Who:
    org_id: str
    agent_id: str
    user_id: str | None
    session_id: str

    def recall_scope(self) -> RecallScope:
        return RecallScope(agent_id=self.agent_id, user_id=self.user_id, session_id=self.session_id)


@dataclass(frozen=True)
class Cached:
    """What a run's first THINK finds in Redis (`MemoryService.cached`, one pipeline): a value in
    the run's scratch state (None: none, or unreadable), the session's cached window (None: a
    miss, or unreadable: it is rebuilt), and the ids the org's session-notes index held (None:
    not asked for, or unreadable: `recall_after` reads them itself)."""

    scratch: Any
    window: Window | None
    notes: list[Any] | None


class MemoryService:
    def __init__(self, settings: Settings, pool: AsyncPool, redis: aioredis.Redis) -> None:
        self.settings = settings
        self.pool = pool
        self.short_term = ShortTermMemory(redis, ttl_s=settings.memory.short_term_ttl_s)
        # Notes for one conversation (`scope: session` from the `remember` skill) are short-term:
        # kept in Redis for as long as the session window, never written to Postgres.
        self.long_term = PostgresMemoryStore(pool)
        self.notes = RedisMemoryStore(redis, default_ttl_s=settings.memory.short_term_ttl_s)
        self._embedders: dict[str, Embedder] = {}
        # Each org's embedding spec, trusted for `limits.cache_s` like the org's limits: a read
        # per run cost a transaction of its own. Only `agentos memory reembed` changes it; its
        # items written meanwhile under the old model are picked up by running it again.
        self._org_specs: dict[str, tuple[float, str]] = {}

    def note_org_model(self, org_id: str, stored: str | None) -> None:
        """The org's `settings.embedding_model` as just read by the caller's own transaction (a
        worker's claim), so that the run's first recall need not read it again."""
        if self.settings.limits.cache_s > 0:
            spec = stored or self.settings.memory.embedding_model
            self._org_specs[org_id] = (time.monotonic() + self.settings.limits.cache_s, spec)

    def forget_org_model(self, org_id: str) -> None:
        """Read the org's embedding model again at its next use (it was just changed here)."""
        self._org_specs.pop(org_id, None)

    async def embedder(self, org_id: str) -> Embedder:
        """The org's embedder (its `settings.embedding_model`, else the platform default)."""
        cached = self._org_specs.get(org_id)
        if cached is not None and cached[0] > time.monotonic():
            spec = cached[1]
        else:
            async with tenant_tx(self.pool, org_id) as conn:
                spec = await org_embedding_spec(conn, self.settings.memory.embedding_model)
            self.note_org_model(org_id, spec)
        if spec not in self._embedders:
            self._embedders[spec] = resolve_embedder(spec, self.settings)
        return self._embedders[spec]

    async def remember(
        self, who: Who, content: str, *, kind: str = "fact", scope: str = "user", source: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Save one item for `who`: `user` scope (the end user, across sessions and agents),
        `agent`, `org` or `session`. Raises MemoryInputError for what the caller can fix."""
        content = content.strip()
        if not content:
            raise MemoryInputError("there is nothing to remember: content is empty")
        if len(content) > self.settings.memory.max_content_chars:
            raise MemoryInputError(f"content is {len(content)} characters; the limit is "
                                   f"{self.settings.memory.max_content_chars}")
        if kind not in KINDS or kind == "document":
            raise MemoryInputError(f"unknown kind {kind!r}; use fact, preference or summary")
        if scope not in WRITABLE_SCOPES:
            raise MemoryInputError(f"unknown scope {scope!r}; use {', '.join(WRITABLE_SCOPES)}")
        if scope == "user" and who.user_id is None:
            scope = "agent"  # a session without an end user: remember for the agent
        item = MemoryItem(
            content=content, scope=scope, kind=kind,
            agent_id=who.agent_id if scope in ("agent", "user", "session") else None,
            user_id=who.user_id if scope in ("user", "session") else None,
            session_id=who.session_id if scope == "session" else None,
            metadata=metadata or {}, source=source,
        )
        embedder = await self.embedder(who.org_id)
        [vector] = await embedder.embed([content])
        store: MemoryStore = self.notes if scope == "session" else self.long_term
        return await store.remember(who.org_id, item, vector, embedder.model)

    async def recall(
        self, who: Who, query: str, *, limit: int, min_score: float = -1.0, long_term: bool = True,
        knowledge: bool = False, hybrid: bool = False,
    ) -> list[dict[str, Any]]:
        """The items `who` may recall nearest to `query`, best first: the org's, this agent's,
        this end user's (from any session) and this session's memories if `long_term`, and
        knowledge-base chunks if `knowledge` (also found by full text, fused by rank, if `hybrid`)."""
        rows, _ = await self.recall_after(who, query, (), limit=limit, min_score=min_score, long_term=long_term,
                                          knowledge=knowledge, hybrid=hybrid)
        return rows

    async def recall_after(
        self, who: Who, query: str, before: Sequence[Statement], *, limit: int, min_score: float = -1.0,
        long_term: bool = True, knowledge: bool = False, hybrid: bool = False, notes: list[Any] | None = None,
    ) -> tuple[list[dict[str, Any]], list[list[DictRow]]]:
        """`recall`, its search in one batched transaction with the caller's statements `before`
        (which need none of its results: a run's session window): one round trip to Postgres.
        `notes`: the ids of the org's session-notes index, if the caller read them already
        (`cached`). Returns the items and the rows of each statement of `before`."""
        kinds = [*(RECALLED_KINDS if long_term else ()), *(("document",) if knowledge else ())]
        if limit <= 0 or not query.strip() or not kinds:
            return [], await self.batch(who.org_id, before)
        embedder = await self.embedder(who.org_id)
        [vector] = await embedder.embed([query])
        filters = MemoryFilters(kinds=kinds, recall_for=who.recall_scope())
        if knowledge and hybrid:
            rows = await self.long_term.hybrid_search(who.org_id, query, vector, embedder.model, filters, limit)
            done = await self.batch(who.org_id, before)
        else:
            rows, done = await self.long_term.search_after(who.org_id, before, vector, embedder.model, filters, limit)
        if long_term:
            session = MemoryFilters(session_id=who.session_id)
            try:
                found = await (self.notes.search(who.org_id, vector, embedder.model, session, limit) if notes is None
                               else self.notes.search_among(who.org_id, notes, vector, embedder.model, session, limit))
            except (RedisError, OSError) as exc:  # short-term notes are a bonus; recall goes on
                log.warning("session notes unavailable for recall: %s", exc)
                found = []
            rows = sorted([*rows, *found], key=lambda r: r["score"], reverse=True)[:limit]
        return [r for r in rows if r["score"] >= min_score], done

    async def batch(self, org_id: str, statements: Sequence[Statement]) -> list[list[DictRow]]:
        """Statements of one org in one batched transaction (none: nothing sent)."""
        return await tenant_batch(self.pool, org_id, *statements) if statements else []

    async def cached(self, who: Who, run_id: str, scratch: str, *, window: bool, notes: bool) -> Cached:
        """What a run's first THINK reads of Redis, in one pipeline: the value `scratch` of the
        run's scratch state, the session's cached window if `window`, the org's session-notes
        index if `notes`. Redis trouble reads as nothing found (recall again, rebuild the window)."""
        keys = [run_scratch_key(who.org_id, run_id)]
        try:
            async with self.short_term.redis.pipeline(transaction=False) as pipe:
                pipe.hget(keys[0], scratch)
                if window:
                    pipe.get(session_window_key(who.org_id, who.session_id))
                if notes:
                    pipe.zrange(memory_index_key(who.org_id), 0, -1)
                replies: list[Any] = list(await pipe.execute(raise_on_error=False))
        except (RedisError, OSError) as exc:
            replies = [exc] * (1 + window + notes)
        kept = None
        if not isinstance(replies[0], Exception) and replies[0] is not None:
            try:
                kept = json.loads(replies[0])
            except ValueError:
                kept = None
        found = replies[1] if window and not isinstance(replies[1], Exception) else None
        indexed = replies[-1] if notes and not isinstance(replies[-1], Exception) else None
        return Cached(kept, self.short_term.parse_window(found), indexed)

    async def keep(self, who: Who, run_id: str, scratch: str, value: Any, window: Window | None) -> None:
        """Write what a run's first THINK keeps, in one Redis transaction: `value` as `scratch` in
        the run's scratch state (unless None) and the session's `window` (unless None). A Redis
        failure only costs a recall or a rebuild later."""
        if value is None and window is None:
            return
        try:
            async with self.short_term.redis.pipeline(transaction=True) as pipe:
                if value is not None:
                    key = run_scratch_key(who.org_id, run_id)
                    pipe.hset(key, scratch, json.dumps(value, ensure_ascii=False, default=str))
                    pipe.expire(key, self.short_term.ttl_s)
                if window is not None:
                    pipe.set(session_window_key(who.org_id, who.session_id), window.to_json(), ex=self.short_term.ttl_s)
                await pipe.execute()
        except (RedisError, OSError):
            pass

    async def store_summary(self, who: Who, window: Window) -> None:
        """Keep the window's summary in long-term memory (the copy a rebuild starts from, and
        what later sessions of the same end user recall); replaces the session's earlier one.
        Raises if it cannot be embedded or stored; the caller decides what that costs."""
        embedder = await self.embedder(who.org_id)
        [vector] = await embedder.embed([window.summary])
        item = MemoryItem(
            content=window.summary, kind="summary", scope="user" if who.user_id else "session",
            agent_id=who.agent_id, user_id=who.user_id, session_id=who.session_id,
            metadata={"upto": window.summary_upto}, source="summary",
        )
        async with tenant_tx(self.pool, who.org_id) as conn:
            row, _ = await items.remember(conn, item, vector, embedder.model)
            await conn.execute(
                "DELETE FROM memories WHERE session_id = %s AND kind = 'summary' AND id <> %s",
                (who.session_id, row["id"]),
            )
