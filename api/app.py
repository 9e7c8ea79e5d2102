"""`create_app(settings)`: the whole request path in one place.

A request goes: body-size limit (`api.body_limit`) -> router -> `@endpoint` (authenticate, check role, parse
body) -> handler (one `tenant_tx` per unit of work) -> JSON response, or an error object from
`api.errors`. The lifespan opens the Postgres pool and the Redis client and refuses to start
when tenant isolation is not in force.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from api.auth import Authenticator
from api.body_limit import BodyLimit
from api.errors import HANDLERS
from api.openapi import build_openapi
from api.responses import json
from api.routes import agents, api_keys, events, health, knowledge, memories, orgs, runs, sessions, tool_calls
from core.admission import Admission
from core.db import check_tenant_isolation, open_pool
from core.event_hub import EventHub
from core.jobs import JobQueue
from core.settings import Settings

log = logging.getLogger("agentos.api")


def _version() -> str:
    try:
        return version("agentos")
    except PackageNotFoundError:
        return "0.0.0"


def _routes() -> list[BaseRoute]:
    return [*health.routes, *orgs.routes, *api_keys.routes, *agents.routes, *sessions.routes, *runs.routes,
            *events.routes, *tool_calls.routes, *memories.routes, *knowledge.routes]


def create_app(settings: Settings) -> Starlette:
    routes = _routes()
    openapi = build_openapi(routes, _version())

    async def openapi_json(request: Request) -> Response:
        return json(openapi)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        pool = await open_pool(settings.database, name="agentos-api")
        redis = aioredis.Redis.from_url(
            settings.redis.url,
            socket_timeout=settings.redis.socket_timeout_s,
            socket_connect_timeout=settings.redis.socket_timeout_s,
        )
        jobs = JobQueue(settings)
        event_hub = EventHub.from_settings(settings, pool)
        try:
            await check_tenant_isolation(pool)
            app.state.settings = settings
            app.state.pool = pool
            app.state.redis = redis
            app.state.jobs = jobs
            app.state.auth = Authenticator(settings.auth, pool)
            app.state.admission = Admission(settings.limits, redis, pool)
            app.state.event_hub = await event_hub.open()
            log.info("AgentOS API ready")
            yield
        finally:
            jobs.close()
            await event_hub.aclose()
            await redis.aclose()
            await pool.close()

    exception_handlers: Any = HANDLERS
    return Starlette(
        routes=[*routes, Route("/openapi.json", openapi_json, methods=["GET"])],
        middleware=[Middleware(BodyLimit, max_bytes=settings.api.max_body_bytes)],
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )
