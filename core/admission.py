"""Admission control: per-org limits on API request rate and on active runs, both decided
atomically in Redis (one Lua script each, or both in one for a request that starts a run:
`check_rate_and_admit_run`, one round trip), so every API process shares them.

- Request rate: a token bucket per org (`core.tenancy.org_request_bucket_key`). The script
  refills it by the time elapsed since its last use, read with Redis `TIME` (one clock for all
  API processes), and takes one token; it answers allowed, tokens left, and how long until the
  next token (ms).
- Active runs: a sorted set per org (`core.tenancy.org_active_runs_key`) of runs that were
  admitted and have not ended. Admission adds a reservation only while the set has fewer
  members than the cap; after the run's row is committed the reservation is swapped for the
  run id; whoever ends the run removes it (`release_run`). Postgres stays the source of truth:
  when the set looks full, it is reconciled with the org's truly active runs before refusing,
  and entries older than `active_run_ttl_s` are dropped, so a lost release or a Redis flush
  heals itself.
- Redis down: both checks fail open (a warning is logged, at most every 30 s). Enqueueing a run
  needs Redis anyway, so a run cannot start without it.
- An org's limits: `orgs.limits` overrides (jsonb) over the `AGENTOS_LIMITS__*` defaults, cached
  per process for `cache_s`. They include the org's budgets, which `core.budgets` enforces.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, RedisError

from core.errors import ApiError
from core.settings import LimitSettings, SandboxSettings
from core.tenancy import AsyncPool, org_active_runs_key, org_request_bucket_key, tenant_tx

log = logging.getLogger("agentos.admission")

LIMIT_KEYS = (
    "requests_per_minute", "burst", "max_active_runs", "sandbox_max_concurrent", "sandbox_cpu_s_per_day",
)
# Budgets (core.budgets): whole numbers, but the cost in US dollars may have cents.
BUDGET_KEYS = ("monthly_tokens", "monthly_cost_usd", "max_runs_per_day")
QUOTA_RETRY_AFTER_S = 2
# A reservation (taken before the run's row is inserted) that was neither bound to a run nor
# released within this time belongs to a request that died; reconciling may drop it.
PENDING_GRACE_MS = 60_000
PENDING_PREFIX = "pending:"
_WARN_EVERY_S = 30.0

# Redis' clock (one for all API processes), in ms: each script reads it once.
_NOW_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# The request rate: `bucket` is a hash (tokens, ts); a refill per minute, a capacity.
# Returns {allowed 0|1, whole tokens left, ms until a token is available (0 when allowed)}.
_TAKE_TOKEN_LUA = """
local function take_token(bucket, per_minute, capacity, now)
  local per_ms = tonumber(per_minute) / 60000.0
  local burst = tonumber(capacity)
  local state = redis.call('HMGET', bucket, 'tokens', 'ts')
  local tokens = tonumber(state[1])
  local ts = tonumber(state[2])
  if tokens == nil or ts == nil then
    tokens = burst
    ts = now
  end
  if now > ts then
    tokens = tokens + (now - ts) * per_ms
    ts = now
  end
  if tokens > burst then tokens = burst end
  local allowed = 0
  local wait_ms = 0
  if tokens >= 1 then
    tokens = tokens - 1
    allowed = 1
  else
    wait_ms = math.ceil((1 - tokens) / per_ms)
  end
  redis.call('HSET', bucket, 'tokens', tostring(tokens), 'ts', tostring(ts))
  redis.call('PEXPIRE', bucket, math.ceil(burst / per_ms) + 1000)
  return {allowed, math.floor(tokens), wait_ms}
end
"""

# An active-run place: `set` is the org's active-run set; the cap, a reservation id, ttl ms.
# Drops entries older than the ttl, then adds the reservation only if the set is below the cap.
# Returns {admitted 0|1, members after}.
_RESERVE_LUA = """
local function reserve(set, cap, reservation, ttl_ms, now)
  local ttl = tonumber(ttl_ms)
  redis.call('ZREMRANGEBYSCORE', set, '-inf', now - ttl)
  local n = redis.call('ZCARD', set)
  if n >= tonumber(cap) then
    return {0, n}
  end
  redis.call('ZADD', set, now, reservation)
  redis.call('PEXPIRE', set, ttl)
  return {1, n + 1}
end
"""

# KEYS[1] the bucket. ARGV: refill per minute, capacity. Every authenticated request.
RATE_LUA = _NOW_LUA + _TAKE_TOKEN_LUA + "return take_token(KEYS[1], ARGV[1], ARGV[2], now)\n"

# KEYS[1] the active-run set. ARGV: cap, reservation id, ttl ms. A retry after reconciling.
ADMIT_LUA = _NOW_LUA + _RESERVE_LUA + "return reserve(KEYS[1], ARGV[1], ARGV[2], ARGV[3], now)\n"

# Both in one round trip (a request that starts a run): KEYS[1] the bucket, KEYS[2] the
# active-run set; ARGV: refill per minute, capacity, cap, reservation id, ttl ms. A request the
# rate refuses takes no place. Returns {allowed, tokens left, wait ms, admitted, members}.
RATE_ADMIT_LUA = _NOW_LUA + _TAKE_TOKEN_LUA + _RESERVE_LUA + """
local rate = take_token(KEYS[1], ARGV[1], ARGV[2], now)
if rate[1] == 0 then
  return {rate[1], rate[2], rate[3], 0, 0}
end
local place = reserve(KEYS[2], ARGV[3], ARGV[4], ARGV[5], now)
return {rate[1], rate[2], rate[3], place[1], place[2]}
"""

# KEYS[1] the active-run set. ARGV: reservation id, run id, ttl ms. The run's row is committed:
# the reservation becomes the run (scored now, after the commit).
BIND_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""

# KEYS[1] the active-run set. ARGV: cutoff ms (Redis time taken before Postgres was read),
# pending grace ms, ttl ms, then the ids of the org's runs that Postgres says are active.
# A run entry scored at or before the cutoff was bound after its commit, so before Postgres was
# read: if Postgres does not list it as active, it ended and its release was lost. Reservations
# are kept while young (their insert may not be committed yet). Active runs missing from the set
# are added. Returns {removed, added, members after}.
RECONCILE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cutoff = tonumber(ARGV[1])
local grace = tonumber(ARGV[2])
local active = {}
for i = 4, #ARGV do active[ARGV[i]] = true end
local removed = 0
local entries = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', cutoff, 'WITHSCORES')
for i = 1, #entries, 2 do
  local member = entries[i]
  local drop
  if string.sub(member, 1, 8) == 'pending:' then
    drop = tonumber(entries[i + 1]) < now - grace
  else
    drop = not active[member]
  end
  if drop then
    removed = removed + redis.call('ZREM', KEYS[1], member)
  end
end
local added = 0
for i = 4, #ARGV do
  added = added + redis.call('ZADD', KEYS[1], 'NX', now, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {removed, added, redis.call('ZCARD', KEYS[1])}
"""

ORG_LIMITS_SQL = "SELECT limits, deletion_requested_at IS NOT NULL AS closing FROM orgs WHERE id = %s"
ACTIVE_RUN_IDS_SQL = """
SELECT id FROM runs
WHERE org_id = agentos_current_org() AND status IN ('queued', 'running', 'awaiting_confirmation')
"""


@dataclass(frozen=True)
class Limits:
    """An org's effective limits."""

    requests_per_minute: int
    burst: int
    max_active_runs: int
    # Code execution (skills.sandbox.quota, enforced by workers): executions at once, CPU s per UTC day.
    sandbox_max_concurrent: int
    sandbox_cpu_s_per_day: int
    # Budgets; None: unlimited.
    monthly_tokens: int | None = None
    monthly_cost_usd: Decimal | None = None
    max_runs_per_day: int | None = None
    # The org's deletion was asked for (core.org_purge): it starts no new run.
    closing: bool = False

    def public(self) -> dict[str, int]:
        return {"requests_per_minute": self.requests_per_minute, "burst": self.burst,
                "max_active_runs": self.max_active_runs, "sandbox_max_concurrent": self.sandbox_max_concurrent,
                "sandbox_cpu_s_per_day": self.sandbox_cpu_s_per_day}

    def public_budgets(self) -> dict[str, int | float | None]:
        return {"monthly_tokens": self.monthly_tokens,
                "monthly_cost_usd": None if self.monthly_cost_usd is None else float(self.monthly_cost_usd),
                "max_runs_per_day": self.max_runs_per_day}


def _usable(key: str, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if key == "monthly_cost_usd":
        return value > 0
    return isinstance(value, int) and value >= 1


def overrides_of(stored: Any, keys: tuple[str, ...] = LIMIT_KEYS) -> dict[str, Any]:
    """The usable overrides under `keys` in an `orgs.limits` value (positive numbers; whole
    numbers but for the cost budget). `BUDGET_KEYS` for the budgets."""
    if not isinstance(stored, dict):
        return {}
    return {k: v for k, v in stored.items() if k in keys and _usable(k, v)}


def effective_limits(defaults: LimitSettings, stored: Any, sandbox: SandboxSettings | None = None) -> Limits:
    """Per-org overrides over the defaults (the sandbox quotas' from `AGENTOS_SANDBOX__ORG_*`).
    Without either burst, the bucket holds one minute."""
    o = overrides_of(stored, (*LIMIT_KEYS, *BUDGET_KEYS))
    rpm = int(o.get("requests_per_minute", defaults.requests_per_minute))
    box = sandbox or SandboxSettings()
    cost = o.get("monthly_cost_usd")
    tokens, runs = o.get("monthly_tokens"), o.get("max_runs_per_day")
    return Limits(
        requests_per_minute=rpm,
        burst=int(o.get("burst", defaults.burst or rpm)),
        max_active_runs=int(o.get("max_active_runs", defaults.max_active_runs)),
        sandbox_max_concurrent=int(o.get("sandbox_max_concurrent", box.org_max_concurrent)),
        sandbox_cpu_s_per_day=int(o.get("sandbox_cpu_s_per_day", box.org_cpu_s_per_day)),
        monthly_tokens=int(tokens) if tokens is not None else defaults.monthly_tokens,
        # str(): a JSON number read as float becomes the decimal it was written as.
        monthly_cost_usd=Decimal(str(cost)) if cost is not None else defaults.monthly_cost_usd,
        max_runs_per_day=int(runs) if runs is not None else defaults.max_runs_per_day,
    )


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    limit: int  # requests per minute
    burst: int
    remaining: int
    retry_after_ms: int

    def headers(self) -> dict[str, str]:
        return {"RateLimit-Limit": str(self.burst), "RateLimit-Remaining": str(self.remaining)}

    def refusal(self) -> ApiError:
        retry_s = max(1, math.ceil(self.retry_after_ms / 1000))
        return ApiError(
            "RATE_LIMITED",
            f"This organisation may send {self.limit} requests per minute (bursts of {self.burst}); "
            f"retry after {retry_s} s.",
            details={"limit": self.limit, "burst": self.burst, "retry_after_ms": self.retry_after_ms},
            headers={"Retry-After": str(retry_s), **self.headers()},
        )


class _Warner:
    """One warning per `_WARN_EVERY_S` per kind: a Redis outage must not flood the log."""

    def __init__(self) -> None:
        self._last: dict[str, float] = {}

    def warn(self, kind: str, message: str, *args: object) -> None:
        now = time.monotonic()
        if self._last.get(kind, -_WARN_EVERY_S) + _WARN_EVERY_S <= now:
            self._last[kind] = now
            log.warning(message, *args)


_warner = _Warner()


class RunTicket:
    """A place among an org's active runs, taken before the run is inserted. Bind it to the
    run after commit (`queue_bind`, `bound`); `release` it when no run was created (error,
    idempotent replay)."""

    def __init__(self, admission: Admission, org_id: str, token: str | None, admitted: bool,
                 limits: Limits, active: int) -> None:
        self._admission = admission
        self.org_id = org_id
        self.token = token  # None: not admitted, or admitted without Redis (fail open)
        self.admitted = admitted
        self.limits = limits
        self.active = active
        self._binding: tuple[str, str] | None = None  # (token, run id) queued by `queue_bind`

    def refusal(self) -> ApiError:
        if self.limits.closing:
            return ApiError("ORG_DELETION_PENDING", "This organisation is being deleted, so it starts no new run; its "
                            "owner can restore it (POST /v1/orgs/{id}/restore) during the grace period.")
        cap = self.limits.max_active_runs
        return ApiError(
            "QUOTA_EXCEEDED",
            f"This organisation already has {cap} active runs (its limit); retry when one ends, or cancel one.",
            details={"max_active_runs": cap, "active_runs": self.active},
            headers={"Retry-After": str(QUOTA_RETRY_AFTER_S)},
        )

    def queue_bind(self, pipe: Pipeline, run_id: str) -> int:
        """After the run's row committed: queue the swap of this place's reservation for the run
        in `pipe` (a round trip shared with other work, e.g. publishing the run's events); how
        many commands were queued. Hand their results (or the pipeline's error) to `bound`."""
        if self.token is None:
            return 0
        self._binding, self.token = (self.token, run_id), None
        self._admission.queue_bind(pipe, self.org_id, *self._binding)
        return 1

    async def bound(self, results: list[Any] | BaseException) -> None:
        """After `queue_bind`: a bind Redis could not run is logged; if Redis had lost the script
        (a restart), the bind runs once more on its own, loading it."""
        if self._binding is None:
            return
        (token, run_id), self._binding = self._binding, None
        failed = results if isinstance(results, BaseException) else results[0]
        if isinstance(failed, NoScriptError):
            try:
                await self._admission._bind(self.org_id, token, run_id)
            except (RedisError, OSError) as exc:
                _warner.warn("bind", "active-run set not updated for run %s (Redis: %s)", run_id, exc)
        elif isinstance(failed, BaseException):
            _warner.warn("bind", "active-run set not updated for run %s (Redis: %s)", run_id, failed)

    async def release(self) -> None:
        if self.token is None:
            return
        token, self.token = self.token, None
        await release_run(self._admission.redis, self.org_id, token)


class Admission:
    """The API's admission checks; one per process (`app.state.admission`)."""

    def __init__(self, settings: LimitSettings, redis: aioredis.Redis, pool: AsyncPool,
                 sandbox: SandboxSettings | None = None) -> None:
        self.settings = settings
        self.sandbox = sandbox
        self.redis = redis
        self._pool = pool
        self._rate = redis.register_script(RATE_LUA)
        self._admit = redis.register_script(ADMIT_LUA)
        self._rate_admit = redis.register_script(RATE_ADMIT_LUA)
        self._bind_script = redis.register_script(BIND_LUA)
        self._reconcile = redis.register_script(RECONCILE_LUA)
        self._cache: dict[str, tuple[float, Limits]] = {}

    # --- limits -----------------------------------------------------------------------------

    async def limits(self, org_id: str) -> Limits:
        """The org's effective limits, read from Postgres at most every `cache_s` per process."""
        now = time.monotonic()
        cached = self._cache.get(org_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        async with tenant_tx(self._pool, org_id) as conn:
            row = await (await conn.execute(ORG_LIMITS_SQL, (org_id,))).fetchone()
        limits = effective_limits(self.settings, row["limits"] if row else None, self.sandbox)
        if row is not None and row["closing"]:
            limits = replace(limits, closing=True)
        if self.settings.cache_s > 0:
            self._cache[org_id] = (now + self.settings.cache_s, limits)
        return limits

    def effective(self, stored: Any) -> Limits:
        return effective_limits(self.settings, stored, self.sandbox)

    def forget(self, org_id: str) -> None:
        """Drop the cached limits (they were just changed in this process)."""
        self._cache.pop(org_id, None)

    # --- request rate -----------------------------------------------------------------------

    async def check_rate(self, org_id: str) -> RateDecision | None:
        """Take one request token from the org's bucket. None when Redis cannot answer (the
        request is let through)."""
        limits = await self.limits(org_id)
        try:
            allowed, remaining, wait_ms = await self._rate(
                keys=[org_request_bucket_key(org_id)], args=[limits.requests_per_minute, limits.burst])
        except (RedisError, OSError) as exc:
            _rate_not_checked(exc)
            return None
        return RateDecision(bool(allowed), limits.requests_per_minute, limits.burst, int(remaining), int(wait_ms))

    # --- request rate and active runs, together ---------------------------------------------

    async def check_rate_and_admit_run(self, org_id: str) -> tuple[RateDecision | None, RunTicket | None]:
        """`check_rate`, then a place for a new run under the org's cap on active runs, in one
        Redis round trip (a request that starts a run). No ticket when the rate refused the
        request: it took no place. A ticket that is not `admitted` carries the refusal (the
        caller may still answer an idempotent replay). Redis down: (None, an admitted ticket
        without a place), both let through as each alone would."""
        limits = await self.limits(org_id)
        if limits.closing:
            # A closing org starts no run: nothing to reserve.
            rate = await self.check_rate(org_id)
            refused = rate is not None and not rate.allowed
            return rate, None if refused else RunTicket(self, org_id, None, False, limits, 0)
        key = org_active_runs_key(org_id)
        token = PENDING_PREFIX + secrets.token_hex(12)
        ttl_ms = self.settings.active_run_ttl_s * 1000
        try:
            allowed, remaining, wait_ms, admitted, active = await self._rate_admit(
                keys=[org_request_bucket_key(org_id), key],
                args=[limits.requests_per_minute, limits.burst, limits.max_active_runs, token, ttl_ms])
        except (RedisError, OSError) as exc:
            _rate_not_checked(exc)
            _not_counted(exc)
            return None, RunTicket(self, org_id, None, True, limits, 0)
        rate = RateDecision(bool(allowed), limits.requests_per_minute, limits.burst, int(remaining), int(wait_ms))
        if not allowed:
            return rate, None
        if not admitted:
            try:
                admitted, active = await self._admit_after_reconciling(org_id, key, limits, token, ttl_ms)
            except (RedisError, OSError) as exc:
                _not_counted(exc)
                return rate, RunTicket(self, org_id, None, True, limits, 0)
        return rate, RunTicket(self, org_id, token if admitted else None, bool(admitted), limits, int(active))

    async def _admit_after_reconciling(self, org_id: str, key: str, limits: Limits, token: str,
                                       ttl_ms: int) -> tuple[int, int]:
        """The set looked full: make sure it is really full (Postgres is the truth), then try
        once more; (admitted, members)."""
        await self._reconcile_with_postgres(org_id, key, ttl_ms)
        admitted, active = await self._admit(keys=[key], args=[limits.max_active_runs, token, ttl_ms])
        return int(admitted), int(active)

    async def _reconcile_with_postgres(self, org_id: str, key: str, ttl_ms: int) -> None:
        seconds, micros = await self.redis.time()
        cutoff_ms = int(seconds) * 1000 + int(micros) // 1000
        async with tenant_tx(self._pool, org_id) as conn:
            rows = await (await conn.execute(ACTIVE_RUN_IDS_SQL)).fetchall()
        active = [r["id"] for r in rows]
        removed, added, size = await self._reconcile(
            keys=[key], args=[cutoff_ms, PENDING_GRACE_MS, ttl_ms, *active])
        if removed or added:
            log.info("org %s active runs reconciled with Postgres: %d stale removed, %d missing added, %d now",
                     org_id, removed, added, size)

    def queue_bind(self, pipe: Pipeline, org_id: str, token: str, run_id: str) -> None:
        # EVALSHA itself: a script object queued in a pipeline makes it check SCRIPT EXISTS first
        # (a round trip of its own); a lost script is answered NOSCRIPT instead (`RunTicket.bound`).
        pipe.evalsha(self._bind_script.sha, 1, org_active_runs_key(org_id), token, run_id,
                     self.settings.active_run_ttl_s * 1000)

    async def _bind(self, org_id: str, token: str, run_id: str) -> None:
        await self._bind_script(keys=[org_active_runs_key(org_id)],
                                args=[token, run_id, self.settings.active_run_ttl_s * 1000])


def _rate_not_checked(exc: BaseException) -> None:
    _warner.warn("rate", "request rate not checked (Redis: %s); letting requests through", exc)


def _not_counted(exc: BaseException) -> None:
    _warner.warn("admit", "active runs not counted (Redis: %s); admitting runs", exc)


async def release_run(redis: aioredis.Redis, org_id: str, run_id: str) -> None:
    """The run ended (or its reservation is not needed): free its place among the org's active
    runs. Call after the transaction that made the run terminal committed. Never raises: if
    Redis cannot be reached, the place is reclaimed later from Postgres."""
    await release_runs(redis, org_id, [run_id])


async def release_runs(redis: aioredis.Redis, org_id: str, run_ids: list[str]) -> None:
    if not run_ids:
        return
    try:
        await redis.zrem(org_active_runs_key(org_id), *run_ids)
    except (RedisError, OSError) as exc:
        not_released(run_ids, exc)


def stage_release(pipe: Pipeline, org_id: str, run_id: str) -> None:
    """`release_run` as a command of the caller's pipeline (`core.run_signals.run_ended`: the
    place is freed by the same round trip that publishes the run's end, and before it)."""
    pipe.zrem(org_active_runs_key(org_id), run_id)


def not_released(run_ids: list[str], exc: BaseException) -> None:
    _warner.warn("release", "active-run place of %s not released (Redis: %s); it is reclaimed later",
                 ", ".join(run_ids), exc)
