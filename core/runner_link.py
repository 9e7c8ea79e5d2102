"""The Redis side of the runner link (docs/runners.md): wake-ups and presence, never the truth.

Postgres (`runner_calls`) holds every routed call and its result. Redis only tells: the API
process holding a runner's connection that a call is waiting (`announce_call`), a worker that a
result is stored (`announce_result`), and anyone that a runner is connected (`is_online`). A
lost wake-up costs at most one polling interval: both sides read Postgres again on their own.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from core.tenancy import runner_calls_key, runner_online_key, runner_result_key

# Blocking Redis reads stay under the client's socket timeout (core.infra.open_redis): a
# waiting loop blocks this long at most, then looks at Postgres again.
BLOCK_S = 1.0
_CALLS_MAXLEN = 1000
_RESULT_TTL_S = 600

# Clear the presence key only if it still names this connection (a newer one may have taken over).
_CLEAR_IF_OURS = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


async def announce_call(redis: aioredis.Redis, org_id: str, runner_id: str, call_id: str) -> None:
    await redis.xadd(runner_calls_key(org_id, runner_id), {"call": call_id}, maxlen=_CALLS_MAXLEN,
                     approximate=True)


async def last_call_entry(redis: aioredis.Redis, org_id: str, runner_id: str) -> str:
    """The id of the newest wake-up entry ("0-0" if none): read it before querying Postgres,
    then follow from it, so no call announced in between is missed."""
    entries = await redis.xrevrange(runner_calls_key(org_id, runner_id), count=1)
    if not entries:
        return "0-0"
    entry_id = entries[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def wait_for_calls(redis: aioredis.Redis, org_id: str, runner_id: str, after: str, block_s: float) -> str:
    """Block up to `block_s` for a wake-up entry after `after`; the newest entry id seen."""
    key = runner_calls_key(org_id, runner_id)
    found: Any = await redis.xread({key: after}, count=100, block=max(int(block_s * 1000), 1))
    for _, entries in found or []:
        for entry_id, _ in entries:
            after = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return after


async def mark_online(redis: aioredis.Redis, org_id: str, runner_id: str, connection: str, ttl_s: float) -> None:
    await redis.set(runner_online_key(org_id, runner_id), connection, px=max(int(ttl_s * 1000), 1))


async def mark_offline(redis: aioredis.Redis, org_id: str, runner_id: str, connection: str) -> None:
    await redis.eval(_CLEAR_IF_OURS, 1, runner_online_key(org_id, runner_id), connection)


async def is_online(redis: aioredis.Redis, org_id: str, runner_id: str) -> bool:
    return bool(await redis.exists(runner_online_key(org_id, runner_id)))


async def announce_result(redis: aioredis.Redis, org_id: str, call_id: str) -> None:
    key = runner_result_key(org_id, call_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.lpush(key, "1")
        pipe.expire(key, _RESULT_TTL_S)
        await pipe.execute()


async def wait_for_result(redis: aioredis.Redis, org_id: str, call_id: str, block_s: float) -> None:
    """Return when a result was announced or after `block_s` (the caller then reads Postgres)."""
    await redis.blpop([runner_result_key(org_id, call_id)], timeout=max(block_s, 0.01))
