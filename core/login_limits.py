"""Slowing down password guessing (Redis): failures are counted per account and per client IP.
After `lockout_after` failures an account is locked for 1 s, then 2 s, 4 s … (doubling with
each further failure, up to `lockout_max_s`); an IP that fails `ip_failures_per_window` times in
a window is refused until the window ends. A success clears the account's count.

Keys carry a SHA-256 of the email (never the address) and the IP as given by the request origin."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import redis.asyncio as aioredis

from core.settings import PeopleSettings


def _account_key(email: str) -> str:
    return f"agentos:login:account:{hashlib.sha256(email.encode()).hexdigest()}"


def _ip_key(ip: str) -> str:
    return f"agentos:login:ip:{ip}"


@dataclass(frozen=True)
class Locked:
    """Refused before checking the password: retry after `retry_after_s`."""

    retry_after_s: int
    scope: str  # "account" or "ip"


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
