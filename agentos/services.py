"""Reaching the Postgres and Redis a command needs: a quick probe first, so that a command run
with no stack says so in one line at once instead of waiting out a pool timeout."""

from __future__ import annotations

import psycopg
import redis

from agentos.errors import is_unreachable, unreachable
from core.settings import Settings

PROBE_TIMEOUT_S = 2


def require_services(settings: Settings, *, need_redis: bool = False) -> None:
    """Raise `CliError` unless Postgres (and Redis when `need_redis`) accept a connection."""
    try:
        with psycopg.connect(settings.database.url, connect_timeout=PROBE_TIMEOUT_S):
            pass
    except psycopg.OperationalError as exc:
        if is_unreachable(exc):
            raise unreachable("PostgreSQL", settings.database.url) from exc
        raise  # e.g. a wrong password or database name: explained by the caller's handler
    if need_redis:
        client = redis.Redis.from_url(settings.redis.url, socket_connect_timeout=PROBE_TIMEOUT_S,
                                      socket_timeout=PROBE_TIMEOUT_S)
        try:
            client.ping()
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise unreachable("Redis", settings.redis.url) from exc
        finally:
            client.close()

