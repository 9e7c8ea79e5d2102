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
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from core.errors import ApiError
from core.settings import SandboxLimits, SandboxSettings
from skills.sandbox.backend import Backend
from skills.sandbox.hosted import HostedError
from skills.sandbox.protocol import ExecuteRequest, ExecuteResult, FileChange
from skills.sandbox.workspaces import WorkspaceError, Workspaces

log = logging.getLogger("agentos.sandbox")
SWEEP_EVERY_S = 60.0


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
    workspaces = Workspaces(settings.workspaces_dir, settings.workspace_ttl_s)
    locks: dict[str, asyncio.Lock] = {}  # one execution at a time per workspace
    last_sweep = 0.0

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
        try:
            if payload.workspace is None:
                async with slots:
                    result = await asyncio.to_thread(backend.execute, payload, limits)
            else:
                result = await in_workspace(payload.workspace, payload, limits)
        except ValueError as exc:  # e.g. a file that is not base64, a workspace that does not fit
            return _error("VALIDATION_FAILED", str(exc))
        except HostedError as exc:
            log.warning("the %s backend failed: %s", backend.name, exc)
            return _error("SANDBOX_BACKEND_FAILED", f"The {backend.name} backend failed: {exc}.")
        log.info("executed %s: exit %s, killed_by %s, %d ms, %d ms cpu", payload.language, result.exit_code,
                 result.killed_by, result.duration_ms, result.cpu_ms)
        return JSONResponse(result.model_dump(mode="json"))

    async def in_workspace(name: str, payload: ExecuteRequest, limits: SandboxLimits) -> ExecuteResult:
        """Run with the workspace's files under the request's, and keep the changes there.
        Executions in one workspace run one at a time, so none loses another's changes."""
        nonlocal last_sweep
        if time.monotonic() - last_sweep > SWEEP_EVERY_S:
            last_sweep = time.monotonic()
            for gone in await asyncio.to_thread(workspaces.sweep):
                log.info("removed workspace %s (unused for %d s)", gone, settings.workspace_ttl_s)
                if gone in locks and not locks[gone].locked():
                    del locks[gone]
        async with locks.setdefault(name, asyncio.Lock()):
            kept = await asyncio.to_thread(workspaces.load, name, limits.disk_mb * 2**20)
            merged = payload.model_copy(update={"files": {**kept, **payload.files}})
            async with slots:
                result = await asyncio.to_thread(backend.execute, merged, limits)
            if not result.timed_out:  # a killed execution changes nothing, here as in the session's workspace
                touched = {c.path for c in result.files_changed}
                sent = [FileChange(path=path, change="modified", content=content)
                        for path, content in payload.files.items() if path not in touched and kept.get(path) != content]
                await asyncio.to_thread(workspaces.save, name, sent + result.files_changed)
        return result

    async def delete_workspace(request: Request) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return _error("UNAUTHENTICATED", "Send the sandbox service token: 'Authorization: Bearer <token>'.")
        name = f"{request.path_params['tenant']}/{request.path_params['name']}"
        try:
            async with locks.setdefault(name, asyncio.Lock()):
                removed = await asyncio.to_thread(workspaces.delete, name)
        except WorkspaceError as exc:
            return _error("VALIDATION_FAILED", str(exc))
        locks.pop(name, None)
        return Response(status_code=204) if removed else _error("NOT_FOUND", f"No workspace {name!r}.")

    async def delete_tenant(request: Request) -> Response:
        given = request.headers.get("authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return _error("UNAUTHENTICATED", "Send the sandbox service token: 'Authorization: Bearer <token>'.")
        try:
            removed = await asyncio.to_thread(workspaces.delete_tenant, request.path_params["tenant"])
        except WorkspaceError as exc:
            return _error("VALIDATION_FAILED", str(exc))
        return JSONResponse({"deleted": removed})

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:
            backend.close()
            workspaces.close()

    return Starlette(routes=[Route("/health", health, methods=["GET"]),
                             Route("/execute", execute, methods=["POST"]),
                             Route("/workspaces/{tenant}/{name}", delete_workspace, methods=["DELETE"]),
                             Route("/workspaces/{tenant}", delete_tenant, methods=["DELETE"])],
                     lifespan=lifespan)


def _field_errors(exc: Exception) -> dict[str, str]:
    if isinstance(exc, ValidationError):
        return {".".join(str(p) for p in e["loc"]) or "body": e["msg"] for e in exc.errors(include_url=False)}
    return {"body": "not valid JSON"}
