"""Liveness (`/healthz`: the process is up) and readiness (`/readyz`: Postgres and Redis answer)."""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.responses import Response

from api.endpoint import Call, endpoint, resource
from api.schemas.health import Health
from core.tenancy import AsyncPool

READY_TIMEOUT_S = 2.0


@endpoint("Liveness: the API process is up.", role=None, response=Health)
async def healthz(call: Call[Any]) -> Response:
    return call.reply({"status": "ok"})


async def _check(coro: Any) -> str:
    try:
        await asyncio.wait_for(coro, READY_TIMEOUT_S)
        return "ok"
    except Exception as exc:  # any failure means "not ready"; say which kind
        return f"unavailable: {type(exc).__name__}"


async def _ping_db(pool: AsyncPool) -> None:
    async with pool.connection(timeout=READY_TIMEOUT_S) as conn:
        await conn.execute("SELECT 1")


@endpoint("Readiness: Postgres and Redis are reachable (`503` with the failing check when not).", role=None,
          response=Health, also=(503,))
async def readyz(call: Call[Any]) -> Response:
    checks = {
        "postgres": await _check(_ping_db(call.pool)),
        "redis": await _check(call.infra.redis.ping()),
    }
    ok = all(v == "ok" for v in checks.values())
    return call.reply({"status": "ok" if ok else "unavailable", "checks": checks}, status=200 if ok else 503)


routes = [
    resource("/healthz", GET=healthz),
    resource("/readyz", GET=readyz),
]
