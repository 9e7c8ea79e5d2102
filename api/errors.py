"""Exception handlers: every failure leaves as the error object of docs/api.md ("Errors"), never a bare 500."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg_pool import PoolTimeout
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from api.responses import error
from core.errors import ApiError, code_for_status
from core.store.errors import IdempotencyMismatch, SessionBusy, StoreError
from core.store.files import NameTaken, QuotaExceeded

log = logging.getLogger("agentos.api")


async def api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error(exc)


# Each refusal of the stores, as the error a caller sees.
def _session_busy(exc: SessionBusy) -> ApiError:
    return ApiError("SESSION_BUSY", "A run is already active in this session; wait for it to finish, cancel it, "
                    "or send multitask: \"enqueue\" to queue behind it.", details={"active_run_id": exc.active_run_id})


def _idempotency_mismatch(exc: IdempotencyMismatch) -> ApiError:
    return ApiError("IDEMPOTENCY_MISMATCH", "This Idempotency-Key was already used with a different request body.",
                    details={"idempotency_key": exc.key, "run_id": exc.run_id})


def _quota_exceeded(exc: QuotaExceeded) -> ApiError:
    return ApiError("QUOTA_EXCEEDED", f"This file ({exc.size_bytes} bytes) would take the organisation's files past "
                    f"its storage quota of {exc.quota_bytes} bytes ({exc.used_bytes} used); delete files first.",
                    details={"quota_bytes": exc.quota_bytes, "used_bytes": exc.used_bytes,
                             "size_bytes": exc.size_bytes})


def _name_taken(exc: NameTaken) -> ApiError:
    return ApiError("CONFLICT", f"The session already has a file named {exc.name!r}; detach it first.",
                    details={"field": "name", "name": exc.name})


STORE_ERRORS: dict[type[StoreError], Callable[[Any], ApiError]] = {
    SessionBusy: _session_busy,
    IdempotencyMismatch: _idempotency_mismatch,
    QuotaExceeded: _quota_exceeded,
    NameTaken: _name_taken,
}


def to_api_error(exc: StoreError) -> ApiError:
    for kind in type(exc).__mro__:
        if kind in STORE_ERRORS:
            return STORE_ERRORS[kind](exc)
    log.error("no error code for %s: %s", type(exc).__name__, exc)
    return ApiError("CONFLICT", str(exc))


async def store_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StoreError)
    return error(to_api_error(exc))


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = code_for_status(exc.status_code)
    message = None
    if exc.status_code == 404:
        message = f"No route matches {request.method} {request.url.path}."
    return error(ApiError(code, message, headers=dict(exc.headers or {})))


async def unavailable(request: Request, exc: Exception) -> Response:
    log.warning("dependency unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
    return error(ApiError("UNAVAILABLE", headers={"Retry-After": "5"}))


async def unstorable(request: Request, exc: Exception) -> Response:
    # Input that passed validation but Postgres cannot store (e.g. a number out of range).
    log.info("unstorable input on %s %s: %s", request.method, request.url.path, exc)
    message = "A value in the request cannot be stored; check its size and characters."
    return error(ApiError("VALIDATION_FAILED", message))


async def client_gone(request: Request, exc: Exception) -> Response:
    # The client hung up mid-body (a cancelled upload, a dropped connection): nothing was done,
    # nothing is wrong on our side, and nobody is left to read the answer.
    log.info("client disconnected before sending the whole body of %s %s", request.method, request.url.path)
    return error(ApiError("BAD_REQUEST", "The client disconnected before sending the whole body."))


async def unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error(ApiError("INTERNAL"))


HANDLERS = {
    ApiError: api_error,
    StoreError: store_error,
    HTTPException: http_error,
    psycopg.OperationalError: unavailable,
    psycopg.DataError: unstorable,
    PoolTimeout: unavailable,
    RedisConnectionError: unavailable,
    RedisTimeoutError: unavailable,
    ClientDisconnect: client_gone,
    Exception: unexpected,
}
