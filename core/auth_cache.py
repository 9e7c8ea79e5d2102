"""Verified API keys, trusted in process for a few seconds, and the one way to take that trust back.

Looking a key up costs the API a transaction on every request (two per run: the POST and its
stream). `KeyCache` keeps what a lookup verified for `AGENTOS_AUTH__KEY_CACHE_S` (5 s), keyed
by a hash of the whole key, so the secret is compared exactly as before on a miss and a wrong
secret never hits. Whatever changes who a key is or whether it works (revoking it, changing a
role, removing a member) calls `invalidate(...)` after its commit: that drops the entries in this
process and publishes the change on Redis (`AUTH_INVALIDATIONS_CHANNEL`); every API process
listens and drops its own within the time a pub/sub message takes (well under 100 ms, see
docs/benchmarks.md, "Key cache").

Two rules keep a revoked key from surviving in a cache:

- A lookup that started before an invalidation arrived is not cached (a generation counter):
  it may have read the row before the change committed.
- A process trusts its cache only while it is subscribed. Until the subscription is confirmed,
  and from the moment it breaks until it is confirmed again, every request looks the key up
  (and the cache is emptied), since a message sent meanwhile would be lost. A quiet channel is
  pinged every second, so a link that died silently is noticed within 3 s.

A key's own `expires_at` is checked on every hit.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.tenancy import AUTH_INVALIDATIONS_CHANNEL

log = logging.getLogger("agentos.auth")

_MAX_ENTRIES = 100_000  # keys one process remembers; past it the cache starts over
# A quiet channel is pinged; a link that answers nothing for `_SILENT_S` (one that died without
# a reset) counts as broken: the cache is off until subscribed again.
_PING_EVERY_S = 1.0
_SILENT_S = 3.0


@dataclass(frozen=True)
class _Entry:
    row: dict[str, Any]
    trusted_until: float  # monotonic
    expires_at: datetime | None  # the key's own expiry


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class KeyCache:
    """One per API process: `get`/`put` around the key lookup, `invalidate` after a change,
    `listen()` (a task for the process's life) to hear other processes' changes."""

    def __init__(self, redis: aioredis.Redis, ttl_s: float) -> None:
        self._redis = redis
        self._ttl_s = ttl_s
        self._entries: dict[bytes, _Entry] = {}
        self._generation = 0
        self._subscribed = False

    @property
    def enabled(self) -> bool:
        """Whether hits are served now (a TTL is set and the invalidation feed is live)."""
        return self._ttl_s > 0 and self._subscribed

    @property
    def generation(self) -> int:
        """Taken before a lookup and handed to `put`: a change heard in between voids the put."""
        return self._generation

    def get(self, token: str) -> dict[str, Any] | None:
        """The verified row of this exact key, if trusted now."""
        if not self.enabled:
            return None
        digest = _digest(token)
        entry = self._entries.get(digest)
        if entry is None:
            return None
        if entry.trusted_until <= time.monotonic() or (
                entry.expires_at is not None and entry.expires_at <= datetime.now(UTC)):
            self._entries.pop(digest, None)
            return None
        return entry.row

    def put(self, token: str, row: dict[str, Any], generation: int) -> None:
        """Trust `row` (just verified) for this key, unless a change was heard since `generation`."""
        if not self.enabled or generation != self._generation:
            return
        if len(self._entries) >= _MAX_ENTRIES:
            self._entries.clear()
        self._entries[_digest(token)] = _Entry(row, time.monotonic() + self._ttl_s, row.get("expires_at"))

    def drop(self, *, key_id: str | None = None, org_id: str | None = None, user_id: str | None = None) -> None:
        """Forget, in this process only, the keys matching every given field (none given: all)."""
        self._generation += 1
        if key_id is None and org_id is None and user_id is None:
            self._entries.clear()
            return
        for digest, entry in list(self._entries.items()):
            row = entry.row
            if ((key_id is None or row["id"] == key_id) and (org_id is None or row["org_id"] == org_id)
                    and (user_id is None or row["created_by"] == user_id)):
                del self._entries[digest]

    async def invalidate(self, *, key_id: str | None = None, org_id: str | None = None,
                         user_id: str | None = None) -> None:
        """After committing a change to keys (revoked, role changed, a member's access changed):
        forget matching keys here and in every other API process. With `org_id` and `user_id`,
        every key that user created in that org; with `org_id` alone, all the org's keys.
        Never raises: if Redis cannot take the message, other processes trust what they cached
        for at most `key_cache_s`."""
        self.drop(key_id=key_id, org_id=org_id, user_id=user_id)
        await publish_invalidation(self._redis, key_id=key_id, org_id=org_id, user_id=user_id)

    async def listen(self, ready: asyncio.Event | None = None) -> None:
        """Follow the invalidation channel until cancelled; resubscribe after a Redis error
        (trusting nothing cached until subscribed again). `ready` is set once subscribed."""
        delay = 0.1
        loop = asyncio.get_running_loop()
        while True:
            pubsub = self._redis.pubsub()
            try:
                await pubsub.subscribe(AUTH_INVALIDATIONS_CHANNEL)
                # Wait for the confirmation: only then can no message be missed.
                while await pubsub.get_message(timeout=1.0) is None:
                    pass
                self.drop()  # whatever was cached before may have missed a message
                self._subscribed = True
                delay = 0.1
                if ready is not None:
                    ready.set()
                heard = loop.time()
                while True:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_PING_EVERY_S)
                    now = loop.time()
                    if message is not None:
                        heard = now
                        if message.get("type") == "message":
                            self._apply(message["data"])
                        continue
                    if now - heard > _SILENT_S:  # not even our pings come back: the link is dead
                        raise ConnectionError(f"no answer on the invalidation channel for {now - heard:.1f} s")
                    await pubsub.ping()
            except (RedisError, OSError) as exc:
                if self._subscribed:
                    log.warning("API key cache off until Redis answers again (invalidations unheard: %s)", exc)
                self._subscribed = False
                self.drop()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            finally:
                self._subscribed = False
                try:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
                except (RedisError, OSError):
                    pass

    def _apply(self, data: bytes | str) -> None:
        try:
            doc = orjson.loads(data)
            fields = {k: doc.get(k) for k in ("key_id", "org_id", "user_id")}
            if not all(v is None or isinstance(v, str) for v in fields.values()):
                raise ValueError("fields must be strings")
        except (orjson.JSONDecodeError, ValueError, AttributeError) as exc:
            log.warning("unreadable API key invalidation (dropping every cached key): %s", exc)
            self.drop()
            return
        self.drop(**fields)


async def publish_invalidation(redis: aioredis.Redis, *, key_id: str | None = None, org_id: str | None = None,
                               user_id: str | None = None) -> None:
    """Tell every API process to forget matching cached keys (for callers without a `KeyCache`,
    e.g. the CLI). Never raises."""
    body = orjson.dumps({"key_id": key_id, "org_id": org_id, "user_id": user_id})
    try:
        await redis.publish(AUTH_INVALIDATIONS_CHANNEL, body)
    except (RedisError, OSError) as exc:
        log.warning("API key invalidation not broadcast (other API processes trust their cache for up to "
                    "AGENTOS_AUTH__KEY_CACHE_S): %s", exc)
