"""Short-lived session notes in Redis: the `memory.store.MemoryStore` contract, like Postgres.

Keys (built only by `core.tenancy`, every one under `agentos:<org>:memory:`):
- `item:<id>` — a hash per item: the item's text fields, `embedding_model`, `dims`, `embedding`
  (float32 bytes), `created_at` / `expires_at` (µs since the epoch), `m:<key>` per top-level
  metadata key (its JSON value, so merging metadata is a plain HSET), and the names of the
  item's dedup and user keys;
- `index` — a sorted set of the org's ids, all scores 0, so it is ordered by id (= creation);
- `user:<sha256 of the end-user id>` — a set of one end user's ids, for `delete_for_user`;
- `dedup:<fingerprint>` — the id of the item holding one fact (scope, ids, kind, content hash,
  model), claimed atomically by the write script, so concurrent writes of a fact make one item.

Expiry: an item (and its dedup key) gets PEXPIREAT at its `expires_at`, or `default_ttl_s` from
the write; the index and user sets live as long as their longest-lived item. Reads also check
`expires_at`; ids of items that are gone are dropped from the index when a read meets them.

Search is exact cosine similarity over the org's live items of the same model and dimension, in
plain Python: fine for a session's few hundred notes, not for a large corpus (use Postgres).

The client must return bytes (`decode_responses=False`, the default), as embeddings are binary.
The scripts touch keys named inside an item (its dedup and user keys): all of them share the
org's prefix, so a single Redis (or one cluster slot per org with hash tags) is assumed.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from array import array
from datetime import UTC, datetime, timedelta
from typing import Any

import redis.asyncio as aioredis

from core.ids import looks_like, new_id
from core.tenancy import memory_dedup_key, memory_index_key, memory_item_key, memory_user_key
from memory.long_term import COLUMNS, MemoryFilters, MemoryItem, check_item, content_hash

# The keys of a row, in the order Postgres returns them (so the API serialises either alike).
ROW_KEYS: tuple[str, ...] = tuple(c.strip() for c in COLUMNS.split(","))
# Item fields that do not tell one fact from another (the rest, with the content's hash and the
# model, are its dedup identity, as in Postgres' unique index).
_NOT_IDENTITY = frozenset({"content", "source", "metadata", "expires_at"})
_META = "m:"
_SCAN_CHUNK = 200

# KEYS: dedup, new item, index, [user]. ARGV: id, item key prefix, expire-at ms ('' = never),
# now ms, expires_at µs ('' = none), n, n field/value pairs of a new item, then metadata pairs.
REMEMBER_LUA = """
local function keep_until(key, ttl_before, at, now)
  if at == '' then redis.call('PERSIST', key)
  elseif ttl_before == -2 or (ttl_before >= 0 and now + ttl_before < tonumber(at)) then
    redis.call('PEXPIREAT', key, at)
  end
end
local function set_expiry(key, at)
  if at == '' then redis.call('PERSIST', key) else redis.call('PEXPIREAT', key, at) end
end
local at, now, expires_field = ARGV[3], tonumber(ARGV[4]), ARGV[5]
local n = tonumber(ARGV[6])
local meta = {}
for i = 7 + 2 * n, #ARGV do meta[#meta + 1] = ARGV[i] end
local containers = {KEYS[3]}
if KEYS[4] then containers[2] = KEYS[4] end
local ttls = {}
for i, key in ipairs(containers) do ttls[i] = redis.call('PTTL', key) end

local created, id, item = 1, ARGV[1], KEYS[2]
local existing = redis.call('GET', KEYS[1])
if existing and redis.call('EXISTS', ARGV[2] .. existing) == 1 then
  created, id, item = 0, existing, ARGV[2] .. existing
else
  local fields = {}
  for i = 7, 6 + 2 * n do fields[#fields + 1] = ARGV[i] end
  redis.call('HSET', item, unpack(fields))
  redis.call('SET', KEYS[1], id)
  redis.call('ZADD', KEYS[3], 0, id)
  if KEYS[4] then redis.call('SADD', KEYS[4], id) end
end
if #meta > 0 then redis.call('HSET', item, unpack(meta)) end
if expires_field == '' then redis.call('HDEL', item, 'expires_at')
else redis.call('HSET', item, 'expires_at', expires_field) end
local row = redis.call('HGETALL', item)
set_expiry(item, at)
set_expiry(KEYS[1], at)
for i, key in ipairs(containers) do keep_until(key, ttls[i], at, now) end
return {created, id, row}
"""

# KEYS: item, index. ARGV: id.
DELETE_LUA = """
local names = redis.call('HMGET', KEYS[1], 'dedup_key', 'user_key')
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
if names[1] and redis.call('GET', names[1]) == ARGV[1] then redis.call('DEL', names[1]) end
if names[2] then redis.call('SREM', names[2], ARGV[1]) end
return 1
"""

# KEYS: user, index. ARGV: item key prefix.
DELETE_USER_LUA = """
local n = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local item = ARGV[1] .. id
  local dedup = redis.call('HGET', item, 'dedup_key')
  if redis.call('DEL', item) == 1 then n = n + 1 end
  if dedup and redis.call('GET', dedup) == id then redis.call('DEL', dedup) end
  redis.call('ZREM', KEYS[2], id)
end
redis.call('DEL', KEYS[1])
return n
"""

Fields = dict[str, bytes]


def _micros(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000 + moment.microsecond


def _from_micros(value: bytes) -> datetime:
    seconds, micros = divmod(int(value), 1_000_000)
    return datetime.fromtimestamp(seconds, UTC).replace(microsecond=micros)


def _fields(flat: list[bytes]) -> Fields:
    return {flat[i].decode(): flat[i + 1] for i in range(0, len(flat), 2)}


def _str(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decoded(raw: Any) -> Fields:
    """A hash read by the client ({bytes: bytes}) with its field names decoded."""
    return {_str(k): v for k, v in dict(raw).items()}


def _live(fields: Fields, now_us: int) -> bool:
    expires = fields.get("expires_at")
    return bool(fields) and (expires is None or int(expires) > now_us)


def _text(fields: Fields, name: str) -> str | None:
    value = fields.get(name)
    return None if value is None else value.decode()


def _matches(fields: Fields, filters: MemoryFilters | None) -> bool:
    if filters is None:
        return True
    for name in ("scope", "agent_id", "user_id", "session_id"):
        wanted = getattr(filters, name)
        if wanted is not None and _text(fields, name) != wanted:
            return False
    return not filters.kinds or _text(fields, "kind") in filters.kinds


def _row(memory_id: str, fields: Fields) -> dict[str, Any]:
    """The item as Postgres returns it: the same keys, in the same order, of the same types."""
    row: dict[str, Any] = {}
    for key in ROW_KEYS:
        if key == "id":
            row[key] = memory_id
        elif key == "metadata":
            row[key] = {k[len(_META):]: json.loads(v) for k, v in fields.items() if k.startswith(_META)}
        elif key == "dims":
            row[key] = int(fields["dims"])
        elif key in ("created_at", "expires_at"):
            row[key] = _from_micros(fields[key]) if key in fields else None
        else:
            row[key] = _text(fields, key)
    return row


def _cosine(query: list[float], norm: float, stored: bytes) -> float:
    vec = array("f")
    vec.frombytes(stored)
    dot = sum(q * v for q, v in zip(query, vec, strict=True))
    other = math.sqrt(sum(v * v for v in vec))
    return dot / (norm * other) if norm and other else 0.0


def _check_org(org_id: str) -> None:
    if not org_id:
        raise ValueError("a memory store call needs an org id")


class RedisMemoryStore:
    """Short-lived memory items per org in Redis; see the module's docstring for the layout."""

    def __init__(self, redis: aioredis.Redis, *, default_ttl_s: int | None) -> None:
        if redis.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisMemoryStore needs a client with decode_responses=False (embeddings are bytes)")
        if default_ttl_s is not None and default_ttl_s <= 0:
            raise ValueError("default_ttl_s must be positive (or None: items without expires_at never expire)")
        self.redis = redis
        self.default_ttl_s = default_ttl_s
        self._remember = redis.register_script(REMEMBER_LUA)
        self._delete = redis.register_script(DELETE_LUA)
        self._delete_user = redis.register_script(DELETE_USER_LUA)

    async def remember(
        self, org_id: str, item: MemoryItem, embedding: list[float], model: str
    ) -> tuple[dict[str, Any], bool]:
        """Store `item` (or find the same fact stored: its metadata is merged and its expiry set
        to this write's); returns (row, created)."""
        _check_org(org_id)
        check_item(item, embedding)
        now = datetime.now(UTC)
        expires = item.expires_at
        if expires is None and self.default_ttl_s is not None:
            expires = now + timedelta(seconds=self.default_ttl_s)
        memory_id = new_id("memory")
        texts = {f.name: getattr(item, f.name) for f in dataclasses.fields(item)
                 if isinstance(getattr(item, f.name), str)}
        identity = sorted((k, v) for k, v in texts.items() if k not in _NOT_IDENTITY)
        fingerprint = hashlib.sha256(
            json.dumps([identity, content_hash(item.content), model]).encode()).hexdigest()
        dedup_key = memory_dedup_key(org_id, fingerprint)
        keys = [dedup_key, memory_item_key(org_id, memory_id), memory_index_key(org_id)]
        fields: dict[str, str | bytes] = dict(texts)
        fields |= {"embedding_model": model, "dims": str(len(embedding)),
                   "embedding": array("f", embedding).tobytes(), "created_at": str(_micros(now)),
                   "dedup_key": dedup_key}
        if item.user_id is not None:
            keys.append(memory_user_key(org_id, item.user_id))
            fields["user_key"] = keys[-1]
        meta = [part for k, v in item.metadata.items() for part in (_META + k, json.dumps(v))]
        expire_ms = "" if expires is None else str(math.ceil(_micros(expires) / 1000))
        args: list[str | bytes] = [memory_id, memory_item_key(org_id, ""), expire_ms, str(_micros(now) // 1000),
                                   "" if expires is None else str(_micros(expires)), str(len(fields))]
        args += [part for k, v in fields.items() for part in (k, v)]
        created, stored_id, flat = await self._remember(keys=keys, args=[*args, *meta])
        return _row(stored_id.decode(), _fields(flat)), bool(created)

    async def get(self, org_id: str, memory_id: str) -> dict[str, Any] | None:
        _check_org(org_id)
        if not looks_like("memory", memory_id):
            return None
        fields = _decoded(await self.redis.hgetall(memory_item_key(org_id, memory_id)))
        return _row(memory_id, fields) if _live(fields, _micros(datetime.now(UTC))) else None

    async def search(
        self, org_id: str, embedding: list[float], model: str, filters: MemoryFilters | None = None,
        limit: int = 10,
    ) -> list[dict[str, Any]]:
        """Live items embedded by `model` (same dimension), nearest first, each with `score`."""
        _check_org(org_id)
        return await self.search_among(org_id, await self.redis.zrange(memory_index_key(org_id), 0, -1), embedding,
                                       model, filters, limit)

    async def search_among(
        self, org_id: str, indexed: list[Any], embedding: list[float], model: str, filters: MemoryFilters | None = None,
        limit: int = 10,
    ) -> list[dict[str, Any]]:
        """`search` among the ids the org's index held (`indexed`: what ZRANGE of
        `memory_index_key(org_id)` answered, e.g. in the caller's own pipeline)."""
        _check_org(org_id)
        ids = [_str(i) for i in indexed]
        norm = math.sqrt(sum(v * v for v in embedding))
        dims, name = str(len(embedding)).encode(), model.encode()
        scored: list[tuple[float, str, Fields]] = []
        for memory_id, fields in await self._items(org_id, ids):
            if fields.get("embedding_model") == name and fields.get("dims") == dims and _matches(fields, filters):
                scored.append((_cosine(embedding, norm, fields["embedding"]), memory_id, fields))
        scored.sort(key=lambda s: s[0], reverse=True)
        return [_row(memory_id, fields) | {"score": score} for score, memory_id, fields in scored[:limit]]

    async def delete(self, org_id: str, memory_id: str) -> bool:
        _check_org(org_id)
        if not looks_like("memory", memory_id):
            return False
        keys = [memory_item_key(org_id, memory_id), memory_index_key(org_id)]
        return bool(await self._delete(keys=keys, args=[memory_id]))

    async def delete_for_user(self, org_id: str, user_id: str) -> int:
        """Remove every item of one end user; returns how many."""
        _check_org(org_id)
        keys = [memory_user_key(org_id, user_id), memory_index_key(org_id)]
        return int(await self._delete_user(keys=keys, args=[memory_item_key(org_id, "")]))

    async def _items(self, org_id: str, ids: list[str]) -> list[tuple[str, Fields]]:
        """The live items of `ids`, in order; ids of items that are gone leave the index."""
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for memory_id in ids:
                pipe.hgetall(memory_item_key(org_id, memory_id))
            replies: list[dict[bytes, bytes]] = list(await pipe.execute())
        now_us = _micros(datetime.now(UTC))
        live: list[tuple[str, Fields]] = []
        gone: list[str] = []
        for memory_id, raw in zip(ids, replies, strict=True):
            fields = _decoded(raw)
            if not fields:
                gone.append(memory_id)
            elif _live(fields, now_us):
                live.append((memory_id, fields))
        if gone:
            await self.redis.zrem(memory_index_key(org_id), *gone)
        return live

    async def list(
        self, org_id: str, filters: MemoryFilters | None = None, cursor: str | None = None, limit: int = 50
    ) -> list[dict[str, Any]]:
        """Live items, newest id first, ids below `cursor`; up to `limit + 1` rows (for paging)."""
        _check_org(org_id)
        rows: list[dict[str, Any]] = []
        upper = f"({cursor}" if cursor else "+"
        while len(rows) < limit + 1:
            ids = [_str(i) for i in await self.redis.zrevrangebylex(
                memory_index_key(org_id), upper, "-", start=0, num=_SCAN_CHUNK)]
            for memory_id, fields in await self._items(org_id, ids):
                if _matches(fields, filters) and len(rows) < limit + 1:
                    rows.append(_row(memory_id, fields))
            if len(ids) < _SCAN_CHUNK:
                break
            upper = f"({ids[-1]}"
        return rows
