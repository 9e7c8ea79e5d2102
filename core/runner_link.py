"""The Redis side of the runner link (docs/runners.md): wake-ups and presence, never the truth.

Postgres (`runner_calls`) holds every routed call and its result. Redis tells: the API process
holding a runner's connection that a call was stored (`announce_call`, the entry carries the call,
so the API sends it without reading it back), a worker that a result was stored
(`announce_result`, the entry carries the stored result, so the worker need not read it back
either), and anyone that a runner is connected (`is_online`). Both entries are written only after
the Postgres commit, and only by the platform. A lost wake-up costs a polling interval: the worker
reads Postgres again after each `BLOCK_S`, the API at each heartbeat.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
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


async def announce_call(redis: aioredis.Redis, org_id: str, runner_id: str, call: Mapping[str, Any]) -> None:
    """Wake the API process holding the runner's connection with the stored call itself
    (`id`, `run_id`, `name`, `args`)."""
    await redis.xadd(runner_calls_key(org_id, runner_id), {"call": json.dumps(call, ensure_ascii=False)},
                     maxlen=_CALLS_MAXLEN, approximate=True)


async def last_call_entry(redis: aioredis.Redis, org_id: str, runner_id: str) -> str:
    """The id of the newest wake-up entry ("0-0" if none): read it before querying Postgres,
    then follow from it, so no call announced in between is missed."""
    entries = await redis.xrevrange(runner_calls_key(org_id, runner_id), count=1)
    if not entries:
        return "0-0"
    entry_id = entries[0][0]
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


async def wait_for_calls(redis: aioredis.Redis, org_id: str, runner_id: str, after: str,
                         block_s: float) -> tuple[str, list[dict[str, Any]]]:
    """Block up to `block_s` for wake-up entries after `after`: the newest entry id seen and the
    calls they carry (an entry without one, from an older worker, wakes only: the caller's next
    Postgres read finds its call)."""
    key = runner_calls_key(org_id, runner_id)
    found: Any = await redis.xread({key: after}, count=100, block=max(int(block_s * 1000), 1))
    calls: list[dict[str, Any]] = []
    for _, entries in found or []:
        for entry_id, fields in entries:
            after = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            call = _json_object(fields.get(b"call", fields.get("call")))
            if call is not None and {"id", "run_id", "name", "args"} <= call.keys():
                calls.append(call)
    return after, calls


async def mark_online(redis: aioredis.Redis, org_id: str, runner_id: str, connection: str, ttl_s: float) -> None:
    await redis.set(runner_online_key(org_id, runner_id), connection, px=max(int(ttl_s * 1000), 1))


async def mark_offline(redis: aioredis.Redis, org_id: str, runner_id: str, connection: str) -> None:
    await redis.eval(_CLEAR_IF_OURS, 1, runner_online_key(org_id, runner_id), connection)


async def is_online(redis: aioredis.Redis, org_id: str, runner_id: str) -> bool:
    return bool(await redis.exists(runner_online_key(org_id, runner_id)))


async def announce_result(redis: aioredis.Redis, org_id: str, call_id: str, output: Any, error: str | None) -> None:
    """Wake the worker waiting for this call with its result, as stored (the first one posted)."""
    key = runner_result_key(org_id, call_id)
    async with redis.pipeline(transaction=False) as pipe:
        pipe.lpush(key, json.dumps({"output": output, "error": error}, ensure_ascii=False))
        pipe.expire(key, _RESULT_TTL_S)
        await pipe.execute()


async def wait_for_result(redis: aioredis.Redis, org_id: str, call_id: str, block_s: float) -> dict[str, Any] | None:
    """The stored result (`output`, `error`) once announced, or None after `block_s` (the caller
    then reads Postgres)."""
    found = await redis.blpop([runner_result_key(org_id, call_id)], timeout=max(block_s, 0.01))
    outcome = _json_object(found[1]) if found else None
    return outcome if outcome is not None and {"output", "error"} <= outcome.keys() else None


def _json_object(raw: Any) -> dict[str, Any] | None:
    try:
        value = json.loads(raw) if isinstance(raw, (bytes, str)) else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
