"""`create_app(settings)`: the whole request path in one place.

A request goes: body-size limit (`api.body_limit`) -> router -> `@endpoint` (authenticate, check role, parse
body) -> handler (one `tenant_tx` per unit of work) -> JSON response, or an error object from
`api.errors`. The lifespan opens the Postgres pool and the Redis client and refuses to start
when tenant isolation is not in force.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from api import access_log, console, docs
from api.auth import Authenticator
from api.body_limit import BodyLimit
from api.cors import cors_middleware
from api.errors import HANDLERS
from api.openapi import build_openapi
from api.request_origin import RequestOrigin
from api.responses import json
from api.routes import (
    agents,
    api_keys,
    audit_logs,
    data_sources,
    events,
    files,
    health,
    invitations,
    knowledge,
    mcp_servers,
    members,
    memories,
    org_exports,
    orgs,
    outbound_allow,
    providers,
    register,
    runner_link,
    runners,
    runs,
    secrets,
    sessions,
    sign_in,
    skills,
    sso,
    stream_tokens,
    tool_calls,
    usage,
    users_data,
    webhooks,
)
from api.routes import metrics as metrics_route
from api.sse import watch_for_exit
from api.state import ApiState, LifespanState
from core.admission import Admission
from core.auth_cache import KeyCache
from core.db import check_tenant_isolation
from core.event_hub import EventHub
from core.file_storage import open_storage
from core.identity_providers import IdentityProviders
from core.infra import Infra
from core.mailer import mailer_for
from core.settings import Settings
from core.telemetry import metrics, tracing
from core.telemetry.http import TelemetryMiddleware

log = logging.getLogger("agentos.api")
# At shutdown, how long the lifespan waits for work that requests started and left running (api.in_flight).
IN_FLIGHT_DRAIN_S = 5.0


def _version() -> str:
    try:
        return version("agentos")
    except PackageNotFoundError:
        return "0.0.0"


def _routes() -> list[BaseRoute]:
    return [*health.routes, *orgs.routes, *api_keys.routes, *agents.routes, *sessions.routes, *runs.routes,
            *events.routes, *tool_calls.routes, *memories.routes, *knowledge.routes, *secrets.routes,
            *skills.routes, *data_sources.routes, *stream_tokens.routes,
            *mcp_servers.routes, *outbound_allow.routes, *usage.routes,
            *audit_logs.routes, *webhooks.routes, *files.routes, *users_data.routes, *org_exports.routes,
            *providers.routes, *members.routes, *invitations.routes, *sign_in.routes, *register.routes, *sso.routes,
            *metrics_route.routes, *runners.routes, *runner_link.routes]


def create_app(settings: Settings) -> Starlette:
    routes = _routes()
    openapi = build_openapi(routes, _version())

    async def openapi_json(request: Request) -> Response:
        return json(openapi)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[LifespanState]:
        # Before the pools open: the psycopg and redis instrumentations wrap new connections.
        tracing.setup(settings.telemetry, "api")
        infra = await Infra.open(settings, name="agentos-api")
        event_hub = EventHub.from_settings(settings, infra.pool)
        # Verified API keys trusted for seconds; the listener hears other processes' revocations.
        keys = KeyCache(infra.redis, settings.auth.key_cache_s)
        key_listener = asyncio.create_task(keys.listen(), name="agentos-key-invalidations")
        # SIGTERM: every SSE stream ends with its farewell before uvicorn's graceful timeout.
        exit_watch = asyncio.create_task(watch_for_exit(event_hub), name="agentos-sse-exit-watch")
        try:
            await check_tenant_isolation(infra.pool)
            # Past the start-up guards: runs go to the workers in the POST's own Redis round trip
            # once this connects (in a thread).
            infra.jobs.prime_soon()
            state = ApiState(infra, Authenticator(settings.auth, infra.pool, stream_keys=settings.secrets, keys=keys),
                             Admission(settings.limits, infra.redis, infra.pool, settings.sandbox),
                             await event_hub.open(), open_storage(settings.files), mailer=mailer_for(settings),
                             identity=IdentityProviders(settings.people, infra.redis))
            log.info("AgentOS API ready")
            try:
                yield {"api": state}
            finally:  # runs a streaming POST was still sending to the workers
                await state.in_flight.drain(IN_FLIGHT_DRAIN_S)
        finally:
            for task in (key_listener, exit_watch):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await event_hub.aclose()
            await infra.close()

    exception_handlers: Any = HANDLERS
    # Stream tokens travel in query strings: keep them out of the access log.
    access_log.install()
    metrics.configure(settings.telemetry)
    # CORS outermost, so that refusals (401, 413, 429...) reach the page's script too.
    cors = cors_middleware(settings.api)
    return Starlette(
        routes=[*routes, Route("/openapi.json", openapi_json, methods=["GET"]), *docs.routes(),
                *console.routes(settings.api)],
        middleware=[*([cors] if cors else []), Middleware(TelemetryMiddleware), Middleware(RequestOrigin),
                    Middleware(BodyLimit, max_bytes=settings.api.max_body_bytes,
                               uploads={files.UPLOAD_PATH: files.upload_limit(settings.files)})],
        exception_handlers=exception_handlers,
        lifespan=lifespan,
    )
