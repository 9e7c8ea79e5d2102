"""Long-term memories: write, semantic search or list, delete one, delete all of an end user.

Embeddings are made here, in the API process, by the embedder of `settings.memory.embedding_model`
(created once per app, on first use), before the transaction opens.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from redis.exceptions import RedisError
from starlette.responses import Response

from api.endpoint import Call, Param, endpoint, resource, validation_failed
from api.schemas.memories import Deleted, Memory, MemoryPage
from api.state import state_of
from core import ids
from core.errors import ApiError
from core.pagination import page
from core.store import agents, audit, sessions
from core.tenancy import tenant_tx
from memory import long_term
from memory.embeddings import Embedder, org_embedding_spec, resolve_embedder
from memory.redis_store import RedisMemoryStore

Scope = Literal["org", "agent", "user", "session"]
Kind = Literal["summary", "preference", "fact", "document"]


class MemoryCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Its length limit (settings.memory.max_content_chars) is checked in the handler: 413, not 422.
    content: str = Field(min_length=1)
    scope: Scope = "org"
    kind: Kind = "fact"
    agent_id: str | None = Field(default=None, min_length=1, max_length=64)
    user_id: str | None = Field(default=None, min_length=1, max_length=200)
    session_id: str | None = Field(default=None, min_length=1, max_length=64)
    metadata: dict[str, Any] = Field(default_factory=dict)
    source: str | None = Field(default=None, max_length=200)
    expires_at: AwareDatetime | None = None


async def embedder_for(call: Call[Any]) -> Embedder:
    """The caller's org's embedder (its `settings.embedding_model`, which `agentos memory
    reembed` moves, else the platform default), made once per spec per app (so an `openai:`
    one loads its client only when used)."""
    settings = call.settings
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        spec = await org_embedding_spec(conn, settings.memory.embedding_model)
    cache = state_of(call.request).embedders
    if spec not in cache:
        try:
            cache[spec] = resolve_embedder(spec, settings)
        except (ValueError, ImportError) as exc:  # a spec this deployment cannot serve
            raise ApiError("UNAVAILABLE", f"The org's embedding model is not usable here: {exc}") from None
    return cache[spec]


async def _embed(call: Call[Any], texts: list[str]) -> tuple[Embedder, list[list[float]]]:
    embedder = await embedder_for(call)
    try:
        vectors = await embedder.embed(texts)
    except Exception as exc:  # the provider is down or refused: nothing was written
        raise ApiError("UNAVAILABLE", f"The embedding model {embedder.model!r} is unavailable: "
                                      f"{type(exc).__name__}.") from None
    return embedder, vectors


async def embed_query(call: Call[Any], query: str) -> tuple[str, list[float]]:
    """(model, vector) of a search query, by the caller's org's embedder; 503 if it fails."""
    embedder, (vector,) = await _embed(call, [query])
    return embedder.model, vector


def _not_found(memory_id: str) -> ApiError:
    return ApiError("NOT_FOUND", f"No memory with id {memory_id!r} in this organisation.")


_REQUIRED = {"agent": "agent_id", "user": "user_id", "session": "session_id"}


@endpoint("Remember an item (deduplicated: the same item again returns the stored one with 200).",
          role="member", body=MemoryCreate, status=201, response=Memory, also=(200,),
          headers=("AgentOS-Deduplicated",), errors=("NOT_FOUND",))
async def create_memory(call: Call[MemoryCreate]) -> Response:
    body, principal = call.body, call.principal
    settings = call.settings
    limit = settings.memory.max_content_chars
    if len(body.content) > limit:
        raise ApiError("PAYLOAD_TOO_LARGE", f"'content' is {len(body.content)} characters; the limit is {limit}.",
                       details={"field": "content", "max_chars": limit})
    if not body.content.strip():
        raise validation_failed([{"field": "content", "message": "must not be blank"}])
    needed = _REQUIRED.get(body.scope)
    if needed and getattr(body, needed) is None:
        raise validation_failed([{"field": needed, "message": f"is required for scope {body.scope!r}"}])
    if body.expires_at is not None and body.expires_at <= datetime.now(UTC):
        raise validation_failed([{"field": "expires_at", "message": "must be in the future"}])
    embedder, (vector,) = await _embed(call, [body.content])
    item = long_term.MemoryItem(
        content=body.content, scope=body.scope, kind=body.kind, agent_id=body.agent_id, user_id=body.user_id,
        session_id=body.session_id, metadata=body.metadata, source=body.source or "api",
        expires_at=body.expires_at,
    )
    async with tenant_tx(call.pool, principal.org_id) as conn:
        if body.agent_id is not None:
            agent = await agents.get(conn, body.agent_id) if ids.looks_like("agent", body.agent_id) else None
            if agent is None:
                raise ApiError("NOT_FOUND", f"No agent with id {body.agent_id!r} in this organisation.",
                               details={"field": "agent_id"})
        if body.session_id is not None:
            found = await sessions.get(conn, body.session_id) if ids.looks_like("session", body.session_id) else None
            if found is None:
                raise ApiError("NOT_FOUND", f"No session with id {body.session_id!r} in this organisation.",
                               details={"field": "session_id"})
        row, created = await long_term.remember(conn, item, vector, embedder.model)
        await audit.record(conn, principal.actor, "memory.create" if created else "memory.refresh", "memory",
                           row["id"], {"scope": body.scope, "kind": body.kind})
    if created:
        return call.reply(row)
    return call.reply(row, status=200, headers={"AgentOS-Deduplicated": "true"})


def _filters(call: Call[Any]) -> long_term.MemoryFilters:
    q = call.request.query_params
    scope = q.get("scope") or None
    if scope is not None and scope not in long_term.SCOPES:
        raise validation_failed([{"field": "scope", "message": f"must be one of {', '.join(long_term.SCOPES)}"}])
    kinds = [k for k in q.getlist("kind") for k in k.split(",") if k] or None
    bad = [k for k in kinds or [] if k not in long_term.KINDS]
    if bad:
        raise validation_failed([{"field": "kind", "message": f"must be among {', '.join(long_term.KINDS)}"}])
    return long_term.MemoryFilters(
        scope=scope, agent_id=q.get("agent_id") or None, user_id=q.get("user") or q.get("user_id") or None,
        session_id=q.get("session_id") or None, kinds=kinds, metadata=metadata_filter(q.get("metadata")),
    )


def metadata_filter(raw: str | None) -> dict[str, Any] | None:
    """`?metadata=` — a JSON object the items' metadata must contain (None: no filter)."""
    if not raw:
        return None
    try:
        value = json.loads(raw)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise validation_failed([{"field": "metadata", "message": 'must be a JSON object, e.g. {"lang": "en"}'}])
    return value or None


@endpoint("Search memories by meaning (`?query=`, results carry `score`, no cursor) or list them, newest "
          "first; filters: `scope`, `agent_id`, `user`, `session_id`, `kind`, `metadata`.", paginated=True,
          response=MemoryPage,
          errors=("PAYLOAD_TOO_LARGE",), params=(
              Param("query", {"type": "string"}, "Search by meaning: best matches first, with `score`."),
              Param("scope", {"type": "string", "enum": list(long_term.SCOPES)}),
              Param("agent_id", {"type": "string"}), Param("user", {"type": "string"}, "The end user's id."),
              Param("user_id", {"type": "string"}, "Same as `user`."), Param("session_id", {"type": "string"}),
              Param("kind", {"type": "array", "items": {"type": "string", "enum": list(long_term.KINDS)}},
                    "Repeat it, or separate kinds with commas."),
              Param("metadata", {"type": "string"}, 'A JSON object the item\'s metadata must contain, e.g. '
                    '`{"lang": "en"}`: for each top-level key an equal value, or an array/object holding it.')))
async def list_memories(call: Call[Any]) -> Response:
    filters = _filters(call)
    query = call.request.query_params.get("query")
    settings = call.settings
    if not query:
        cursor, limit = call.page_params()
        async with tenant_tx(call.pool, call.principal.org_id) as conn:
            rows = await long_term.list_memories(conn, filters, cursor, limit)
        data, next_cursor = page(rows, limit)
        return call.page(data, next_cursor)
    if "limit" not in call.request.query_params:
        limit = settings.memory.search_limit
    else:
        _, limit = call.page_params()
    if len(query) > settings.memory.max_content_chars:
        raise ApiError("PAYLOAD_TOO_LARGE", f"'query' is longer than {settings.memory.max_content_chars} characters.")
    embedder, (vector,) = await _embed(call, [query])
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        rows = await long_term.search(conn, vector, embedder.model, filters, limit)
        known = bool(rows) or await long_term.has_model(conn, embedder.model)
    body: dict[str, Any] = {"data": rows, "next_cursor": None, "embedding_model": embedder.model}
    if not known:
        body["note"] = (f"This organisation has no memories embedded with {embedder.model!r}; "
                        "items made by other models are not compared.")
    return call.reply(body)


@endpoint("Read one memory.", response=Memory)
async def get_memory(call: Call[Any]) -> Response:
    memory_id = call.path_id("memory_id", "memory")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await long_term.get(conn, memory_id)
    if row is None:
        raise _not_found(memory_id)
    return call.reply(row)


@endpoint("Delete one memory.", role="member", status=204)
async def delete_memory(call: Call[Any]) -> Response:
    memory_id = call.path_id("memory_id", "memory")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        if not await long_term.delete(conn, memory_id):
            raise _not_found(memory_id)
        await audit.record(conn, call.principal.actor, "memory.delete", "memory", memory_id)
    return Response(status_code=204)


@endpoint("Delete every memory of one end user (`?user=`; a privacy request).", role="admin",
          response=Deleted, params=(Param("user", {"type": "string"}, "Whose memories to delete (required)."),
                                    Param("user_id", {"type": "string"}, "Same as `user`.")))
async def delete_user_memories(call: Call[Any]) -> Response:
    user_id = call.request.query_params.get("user") or call.request.query_params.get("user_id")
    if not user_id:
        raise validation_failed([{"field": "user", "message": "is required: whose memories to delete"}])
    org_id = call.principal.org_id
    async with tenant_tx(call.pool, org_id) as conn:
        deleted = await long_term.delete_for_user(conn, user_id)
        await audit.record(conn, call.principal.actor, "memory.delete_user", "user", user_id, {"deleted": deleted})
    try:  # and the user's short-term session notes
        deleted += await RedisMemoryStore(call.infra.redis, default_ttl_s=None).delete_for_user(org_id, user_id)
    except (RedisError, OSError):
        raise ApiError("UNAVAILABLE", f"Deleted {deleted} long-term memories of {user_id!r}, but the short-term "
                                      "session notes in Redis could not be reached; send the request again.") from None
    return call.reply({"deleted": deleted})


routes = [
    resource("/v1/memories", POST=create_memory, GET=list_memories, DELETE=delete_user_memories),
    resource("/v1/memories/{memory_id}", GET=get_memory, DELETE=delete_memory),
]
