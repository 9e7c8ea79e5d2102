"""Slowing down password guessing (Redis): failures are counted per account and per client IP.
After `lockout_after` failures an account is locked for 1 s, then 2 s, 4 s … (doubling with
each further failure, up to `lockout_max_s`); an IP that fails `ip_failures_per_window` times in
a window is refused until the window ends. A success clears the account's count.

The same counters guard the other doors anyone may knock on without a credential (`attempt`):
open registration and password-reset mail per IP and per email, and invitation acceptance per IP
and per token, so none of them can send mail in bulk or try tokens at speed.

Keys carry a SHA-256 of the email or token (never the value) and the IP as given by the request
origin."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis.asyncio as aioredis

from core.errors import ApiError
from core.settings import PeopleSettings
from core.store.audit import origin


def _account_key(email: str) -> str:
    return f"agentos:login:account:{hashlib.sha256(email.encode()).hexdigest()}"


def _ip_key(ip: str) -> str:
    return f"agentos:login:ip:{ip}"


def _attempt_key(action: str, scope: str, who: str) -> str:
    return f"agentos:login:{action}:{scope}:{hashlib.sha256(who.encode()).hexdigest()}"


@dataclass(frozen=True)
class Locked:
    """Refused before checking the password: retry after `retry_after_s`."""

    retry_after_s: int
    scope: str  # "account", "ip", "email" or "token"


def request_ip() -> str | None:
    """The address of the request being served (api.request_origin), which per-IP limits count."""
    where = origin.get()
    return where.ip if where else None


def refusal(locked: Locked, what: str = "failed sign-ins") -> ApiError:
    """429 for a door that is shut for now, with when to knock again."""
    return ApiError("RATE_LIMITED", f"Too many {what} for this {locked.scope}; retry in {locked.retry_after_s} s.",
                    details={"retry_after_s": locked.retry_after_s, "scope": locked.scope},
                    headers={"Retry-After": str(locked.retry_after_s)})


class LoginLimits:
    def __init__(self, redis: aioredis.Redis, settings: PeopleSettings) -> None:
        self._redis = redis
        self._s = settings

    async def check(self, email: str, ip: str | None) -> Locked | None:
        """Whether an attempt may be made now."""
        account = _account_key(email)
        ttl = int(await self._redis.pttl(account + ":lock"))
        if ttl > 0:
            return Locked(max(1, -(-ttl // 1000)), "account")
        if ip:
            count = await self._redis.get(_ip_key(ip))
            if count is not None and int(count) >= self._s.ip_failures_per_window:
                return Locked(max(1, int(await self._redis.ttl(_ip_key(ip)))), "ip")
        return None

    async def failed(self, email: str, ip: str | None) -> Locked | None:
        """Count a failure; the lock it starts, if any."""
        account = _account_key(email)
        window = self._s.failure_window_s
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(account)
            pipe.expire(account, window)
            if ip:
                pipe.incr(_ip_key(ip))
                pipe.ttl(_ip_key(ip))
            results = await pipe.execute()
        if ip and int(results[3]) < 0:
            # The window starts at the IP's first failure (EXPIRE ... NX needs Redis 7).
            await self._redis.expire(_ip_key(ip), window)
        failures = int(results[0])
        over = failures - self._s.lockout_after
        if over < 0:
            return None
        lock_s = min(2 ** min(over, 30), self._s.lockout_max_s)
        # The count outlives the lock, so the next failure doubles it.
        await self._redis.set(account + ":lock", "1", ex=lock_s)
        await self._redis.expire(account, max(window, lock_s * 2))
        return Locked(lock_s, "account")

    async def succeeded(self, email: str) -> None:
        await self._redis.delete(_account_key(email), _account_key(email) + ":lock")

    async def attempt(self, action: str, scope: str, who: str, limit: int) -> Locked | None:
        """Count one `action` by `who` (an IP, email or token) in its window; refused (counting
        nothing more) once `limit` were made. The window starts at the first attempt."""
        key = _attempt_key(action, scope, who)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.incr(key)
            pipe.ttl(key)
            count, ttl = await pipe.execute()
        if int(ttl) < 0:
            await self._redis.expire(key, self._s.failure_window_s)
            ttl = self._s.failure_window_s
        if int(count) > limit:
            return Locked(max(1, int(ttl)), scope)
        return None

    async def over(self, action: str, scope: str, who: str, limit: int) -> Locked | None:
        """Whether `who` already used up `limit` (checked before the work, counted after a failure)."""
        key = _attempt_key(action, scope, who)
        count = await self._redis.get(key)
        if count is not None and int(count) >= limit:
            return Locked(max(1, int(await self._redis.ttl(key))), scope)
        return None
