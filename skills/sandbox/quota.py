"""Per-org quotas on code execution, decided in Redis so every worker shares them: executions
in progress at once (`org_max_concurrent`) and CPU seconds per UTC day (`org_cpu_s_per_day`).

An execution takes a slot in a sorted set before it is sent and gives it back after; a slot
older than the longest possible execution is dropped, so a worker that died mid-call cannot
hold one forever. The CPU an execution used is added to the day's counter afterwards: the
execution that crosses the quota finishes, the next one is refused. Redis down: quotas fail
open (logged), like the run admission control.

Both quotas default to the settings and may be overridden per org where the admission limits
live (`orgs.limits`, `sandbox_max_concurrent` / `sandbox_cpu_s_per_day`, set by the platform
admin with `PATCH /v1/orgs/{id}`); a worker reads an org's overrides at most every `cache_s`.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import NamedTuple

import psycopg
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from core.admission import ORG_LIMITS_SQL, overrides_of
from core.settings import SandboxSettings
from core.tenancy import AsyncPool, org_sandbox_cpu_key, org_sandbox_running_key, tenant_tx

log = logging.getLogger("agentos.sandbox.quota")
DAY_S = 86_400

# KEYS[1] running set, KEYS[2] today's CPU counter. ARGV: cap, member, now ms, stale ms, cpu quota ms.
# Returns {0, in use} over the concurrency cap, {1, used ms} over the CPU quota, {2, 0} admitted.
ACQUIRE_LUA = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', tonumber(ARGV[3]) - tonumber(ARGV[4]))
local used = tonumber(redis.call('GET', KEYS[2]) or '0')
if used >= tonumber(ARGV[5]) then
  return {1, used}
end
local running = redis.call('ZCARD', KEYS[1])
if running >= tonumber(ARGV[1]) then
  return {0, running}
end
redis.call('ZADD', KEYS[1], tonumber(ARGV[3]), ARGV[2])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
return {2, 0}
"""


class QuotaExceeded(Exception):
    """str(e) says which quota and when it frees up."""


def _today() -> str:
    return datetime.now(UTC).strftime("%Y%m%d")


class OrgQuota(NamedTuple):
    max_concurrent: int
    cpu_s_per_day: int


class SandboxQuota:
    def __init__(self, settings: SandboxSettings, redis: aioredis.Redis, pool: AsyncPool | None = None,
                 cache_s: float = 5.0) -> None:
        self.settings = settings
        self.redis = redis
        self._pool = pool  # None: every org gets the settings' quotas
        self._cache_s = cache_s
        self._cache: dict[str, tuple[float, OrgQuota]] = {}
        self._acquire = redis.register_script(ACQUIRE_LUA)
        # Longer than any execution can take (wall ceiling plus the caller's slack) plus a margin.
        self.stale_ms = int((settings.ceilings.wall_s + settings.request_slack_s + 60) * 1000)

    async def quota_of(self, org_id: str) -> OrgQuota:
        """The org's quotas: its overrides in `orgs.limits` over the settings' defaults. Postgres
        unreachable: the defaults (logged), so an outage neither blocks nor frees code execution."""
        defaults = OrgQuota(self.settings.org_max_concurrent, self.settings.org_cpu_s_per_day)
        if self._pool is None:
            return defaults
        now = time.monotonic()
        cached = self._cache.get(org_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            async with tenant_tx(self._pool, org_id) as conn:
                row = await (await conn.execute(ORG_LIMITS_SQL, (org_id,))).fetchone()
        except (psycopg.Error, OSError) as exc:
            log.warning("sandbox quotas of org %s not read (%s); using the defaults", org_id, exc)
            return defaults
        o = overrides_of(row["limits"] if row else None)
        quota = OrgQuota(o.get("sandbox_max_concurrent", defaults.max_concurrent),
                         o.get("sandbox_cpu_s_per_day", defaults.cpu_s_per_day))
        if self._cache_s > 0:
            self._cache[org_id] = (now + self._cache_s, quota)
        return quota

    @asynccontextmanager
    async def slot(self, org_id: str) -> AsyncIterator[None]:
        """Hold one of the org's execution slots; QuotaExceeded if none is free or CPU is used up."""
        member = secrets.token_hex(8)
        admitted = await self._take(org_id, member)
        try:
            yield
        finally:
            if admitted:
                try:
                    await self.redis.zrem(org_sandbox_running_key(org_id), member)
                except RedisError:
                    log.warning("could not release a sandbox slot of org %s (it expires by itself)", org_id)

    async def charge(self, org_id: str, cpu_ms: int) -> None:
        """Add an execution's CPU time to the org's counter for today."""
        key = org_sandbox_cpu_key(org_id, _today())
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.incrby(key, max(cpu_ms, 0))
                pipe.expire(key, 2 * DAY_S)
                await pipe.execute()
        except RedisError:
            log.warning("could not count %d ms of sandbox CPU for org %s", cpu_ms, org_id)

    async def _take(self, org_id: str, member: str) -> bool:
        quota = await self.quota_of(org_id)
        keys = [org_sandbox_running_key(org_id), org_sandbox_cpu_key(org_id, _today())]
        try:
            verdict, value = await self._acquire(
                keys=keys, args=[quota.max_concurrent, member, int(time.time() * 1000), self.stale_ms,
                                 quota.cpu_s_per_day * 1000])
        except RedisError:
            log.warning("sandbox quotas are not enforced: Redis is unavailable")
            return False
        if int(verdict) == 0:
            raise QuotaExceeded(
                f"This organisation already runs {int(value)} code execution(s) at once, its limit "
                f"({quota.max_concurrent}); wait for one to finish and try again.")
        if int(verdict) == 1:
            raise QuotaExceeded(
                f"This organisation used its {quota.cpu_s_per_day} CPU seconds of code execution for today "
                "(UTC); code can run again tomorrow, or the platform admin can raise the organisation's "
                "sandbox_cpu_s_per_day limit.")
        return True
