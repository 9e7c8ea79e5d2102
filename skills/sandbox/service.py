"""The sandbox service: a small Starlette app serving `POST /execute` and `GET /health`.

It runs as its own process (`agentos sandbox`), so it can live on another host or on a user's
machine; callers authenticate with the service token (`Authorization: Bearer <token>`). It
imports nothing of the API and holds no database, Redis or provider settings: it has nothing
to leak. Executions run in threads, at most `max_concurrent` at once (others wait).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from core.errors import ApiError
from core.settings import SandboxSettings
from skills.sandbox.backend import Backend
from skills.sandbox.hosted import HostedError
from skills.sandbox.protocol import ExecuteRequest

log = logging.getLogger("agentos.sandbox")


def _error(code: str, message: str | None = None, details: dict[str, Any] | None = None) -> JSONResponse:
    error = ApiError(code, message, details=details)
    return JSONResponse(error.body(), status_code=error.status)


def max_body_bytes(settings: SandboxSettings) -> int:
    """The largest request accepted: the code plus files filling the largest workdir, in base64."""
    return 2_000_000 + settings.ceilings.disk_mb * 2**20 * 4 // 3 + 65_536


def create_sandbox_app(settings: SandboxSettings, backend: Backend) -> Starlette:
    """The service app; `backend` was checked by the caller. The token must be set."""
    if settings.token is None or not settings.token.get_secret_value():
        raise ValueError("the sandbox service needs a token: set AGENTOS_SANDBOX__TOKEN")
    expected = f"Bearer {settings.token.get_secret_value()}".encode()
    slots = asyncio.Semaphore(settings.max_concurrent)
    body_limit = max_body_bytes(settings)

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "backend": backend.name})

    async def execute(request: Request) -> JSONResponse:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return _error("UNAUTHENTICATED", "Send the sandbox service token: 'Authorization: Bearer <token>'.")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > body_limit:
            return _error("PAYLOAD_TOO_LARGE", f"The request is larger than {body_limit} bytes.")
        body = await request.body()
        if len(body) > body_limit:
            return _error("PAYLOAD_TOO_LARGE", f"The request is larger than {body_limit} bytes.")
        try:
            payload = ExecuteRequest.model_validate(json.loads(body))
        except (ValueError, ValidationError) as exc:
            fields = _field_errors(exc)
            return _error("VALIDATION_FAILED", details={"fields": fields})
        limits, problems = payload.limits.resolve(settings.defaults, settings.ceilings)
        problems += [f"limits.{name}: the {backend.name} backend cannot enforce it; leave it out"
                     for name in sorted(payload.limits.model_fields_set & backend.unenforced)
                     if getattr(payload.limits, name) is not None]
        if problems:
            return _error("VALIDATION_FAILED", "A limit is above the service's ceiling or one this backend cannot "
                          "enforce; ask for less, or leave it out.",
                          details={"fields": {p.split(":")[0]: p for p in problems}})
        async with slots:
            try:
                result = await asyncio.to_thread(backend.execute, payload, limits)
            except ValueError as exc:  # e.g. a file that is not base64
                return _error("VALIDATION_FAILED", str(exc))
            except HostedError as exc:
                log.warning("the %s backend failed: %s", backend.name, exc)
                return _error("SANDBOX_BACKEND_FAILED", f"The {backend.name} backend failed: {exc}.")
        log.info("executed %s: exit %s, killed_by %s, %d ms, %d ms cpu", payload.language, result.exit_code,
                 result.killed_by, result.duration_ms, result.cpu_ms)
        return JSONResponse(result.model_dump(mode="json"))

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            backend.close()

    return Starlette(routes=[Route("/health", health, methods=["GET"]),
                             Route("/execute", execute, methods=["POST"])], lifespan=lifespan)


def _field_errors(exc: Exception) -> dict[str, str]:
    if isinstance(exc, ValidationError):
        return {".".join(str(p) for p in e["loc"]) or "body": e["msg"] for e in exc.errors(include_url=False)}
    return {"body": "not valid JSON"}
