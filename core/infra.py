"""`Infra`: the connections every AgentOS process shares — settings, the Postgres pool, the
Redis client and the job queue — opened by one factory and closed in one place.

The API's lifespan yields one (`api.state`), a worker process holds one in its runtime
(`runtime.services`), and the watchdog opens its own. Nothing is opened at import time.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

import psycopg
import redis.asyncio as aioredis
from kombu.exceptions import OperationalError as KombuOperationalError
from psycopg_pool import PoolTimeout
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from core.db import open_pool
from core.jobs import JobQueue
from core.settings import RedisSettings, Settings
from core.tenancy import AsyncPool


def open_redis(settings: RedisSettings) -> aioredis.Redis:
    """The one way a process builds its Redis client: bounded socket and connect timeouts, so
    a Redis that stopped answering fails a call instead of hanging it, and a bounded pool whose
    callers wait for a free connection rather than fail when a burst needs more."""
    pool = aioredis.BlockingConnectionPool.from_url(
        settings.url,
        max_connections=settings.max_connections,
        timeout=settings.socket_timeout_s,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.socket_timeout_s,
    )
    return aioredis.Redis.from_pool(pool)


@dataclass(frozen=True)
class Infra:
    """What a process talks to. Build with `Infra.open`, end with `close`."""

    settings: Settings
    pool: AsyncPool
    redis: aioredis.Redis
    jobs: JobQueue

    @classmethod
    async def open(
        cls, settings: Settings, *, name: str, pool_min: int | None = None, pool_max: int | None = None
    ) -> Infra:
        """Open the pool (waiting for `pool_min` connections; 0 starts without Postgres), the
        Redis client and the job queue. `pool_min`/`pool_max` default to the settings'."""
        db = settings.database if pool_min is None else settings.database.model_copy(update={"pool_min": pool_min})
        pool = await open_pool(db, name=name, max_size=pool_max)
        return cls(settings, pool, open_redis(settings.redis), JobQueue(settings))

    async def close(self) -> None:
        self.jobs.close()
        await self.redis.aclose()
        await self.pool.close()


class InfraUnavailable(Exception):
    """Postgres, Redis or the broker could not be reached (the original error is the cause)."""


# What "the infrastructure is away" looks like; anything else raised by our code is a bug. Not
# all of OSError: a missing file is a bug, and TimeoutError (an OSError) is also a run's deadline.
INFRA_ERRORS: tuple[type[BaseException], ...] = (
    psycopg.OperationalError, PoolTimeout, RedisConnectionError, RedisTimeoutError, KombuOperationalError,
    ConnectionError, socket.gaierror, InfraUnavailable,
)


def is_infra_error(exc: BaseException) -> bool:
    """Whether `exc`, or an error it was raised from, says Postgres/Redis/the broker is away
    (libraries such as LangGraph may wrap the original error)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, INFRA_ERRORS):
            return True
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return False
