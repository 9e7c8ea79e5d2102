"""The client's exceptions: one class per stable code of the API (docs/api.md, "Errors"), all under
`AgentOSError`, each carrying the code, the message, the HTTP status and the request id.

`error_from_response` is the one place an HTTP answer becomes an exception."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# Response headers that name the request, first found wins: what a server or proxy in front of
# it may send (the API's trace id header once it has one, a proxy's request id).
REQUEST_ID_HEADERS = ("agentos-request-id", "x-request-id", "agentos-trace-id")


class AgentOSError(Exception):
    """Anything the client could not do: `code` is stable and meant for programs."""

    code: str = "INTERNAL"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None,
                 request_id: str | None = None, details: Mapping[str, Any] | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{code or self.code}: {message}")
        self.code = code or self.code
        self.message = message
        self.status = status
        self.request_id = request_id
        self.details: dict[str, Any] = dict(details or {})
        self.retry_after = retry_after


class ConnectionFailed(AgentOSError):
    """The API could not be reached, or the connection broke, after every retry the call allowed.
    `maybe_handled` is True when the request was sent, so the server may have acted on it."""

    code = "CONNECTION_FAILED"

    def __init__(self, message: str, *, maybe_handled: bool) -> None:
        super().__init__(message)
        self.maybe_handled = maybe_handled


class ApiError(AgentOSError):
    """The API answered with an error object (or an error status without one)."""


class BadRequest(ApiError):
    code = "BAD_REQUEST"


class Unauthenticated(ApiError):
    code = "UNAUTHENTICATED"


class StreamTokenInvalid(Unauthenticated):
    code = "STREAM_TOKEN_INVALID"


class StreamTokenExpired(Unauthenticated):
    """A stream token's time is up: ask the web app's backend for a fresh one."""

    code = "STREAM_TOKEN_EXPIRED"


class Forbidden(ApiError):
    code = "FORBIDDEN"


class SignupDisabled(Forbidden):
    """The server takes new accounts by invitation only."""

    code = "SIGNUP_DISABLED"


class CsrfFailed(Forbidden):
    """A cookie-authenticated write without the CSRF header, or from another origin."""

    code = "CSRF_FAILED"


class NotFound(ApiError):
    code = "NOT_FOUND"


class MethodNotAllowed(ApiError):
    code = "METHOD_NOT_ALLOWED"


class Conflict(ApiError):
    code = "CONFLICT"


class SessionBusy(Conflict):
    """`multitask: "reject"` while the session has an active run (`details["active_run_id"]`)."""

    code = "SESSION_BUSY"


class WebhookDisabled(Conflict):
    code = "WEBHOOK_DISABLED"


class OrgDeletionPending(Conflict):
    """The org is being deleted: it starts no new run until its owner restores it."""

    code = "ORG_DELETION_PENDING"


class PayloadTooLarge(ApiError):
    code = "PAYLOAD_TOO_LARGE"


class UnsupportedMediaType(ApiError):
    code = "UNSUPPORTED_MEDIA_TYPE"


class ValidationFailed(ApiError):
    """`details["fields"]` lists every problem."""

    code = "VALIDATION_FAILED"


class IdempotencyMismatch(ValidationFailed):
    code = "IDEMPOTENCY_MISMATCH"


class PasswordRejected(ValidationFailed):
    code = "PASSWORD_REJECTED"


class WebhookUrlRefused(ValidationFailed):
    code = "WEBHOOK_URL_REFUSED"


class ProviderUrlRefused(ValidationFailed):
    code = "PROVIDER_URL_REFUSED"


class RateLimited(ApiError):
    code = "RATE_LIMITED"


class QuotaExceeded(ApiError):
    code = "QUOTA_EXCEEDED"


class InternalError(ApiError):
    code = "INTERNAL"


class Unavailable(ApiError):
    code = "UNAVAILABLE"


class SandboxBackendFailed(ApiError):
    """The sandbox service's hosted backend (e2b, modal) failed; the code may not have run."""

    code = "SANDBOX_BACKEND_FAILED"


class ProviderFailed(ApiError):
    """An org's model provider did not answer as expected (listing its models)."""

    code = "PROVIDER_FAILED"


_BY_CODE: dict[str, type[ApiError]] = {cls.code: cls for cls in (
    BadRequest, Unauthenticated, StreamTokenInvalid, StreamTokenExpired,
    Forbidden, NotFound, MethodNotAllowed, Conflict, SessionBusy, PayloadTooLarge,
    UnsupportedMediaType, ValidationFailed, IdempotencyMismatch, RateLimited, QuotaExceeded, InternalError,
    Unavailable, SandboxBackendFailed, WebhookDisabled, WebhookUrlRefused, OrgDeletionPending,
    ProviderUrlRefused, ProviderFailed, PasswordRejected, SignupDisabled, CsrfFailed)}
# For an error status without an error object (a proxy's page, say): the status's usual code.
_BY_STATUS: dict[int, type[ApiError]] = {400: BadRequest, 401: Unauthenticated, 403: Forbidden, 404: NotFound,
                                         405: MethodNotAllowed, 409: Conflict, 413: PayloadTooLarge,
                                         415: UnsupportedMediaType, 422: ValidationFailed, 429: RateLimited,
                                         500: InternalError, 502: Unavailable, 503: Unavailable, 504: Unavailable}


def error_class(code: str) -> type[ApiError]:
    """The exception class of an API error code (`ApiError` itself for a code this client does not know)."""
    return _BY_CODE.get(code, ApiError)


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """`Retry-After` in seconds (the API sends seconds; an HTTP date is not honoured), or None."""
    raw = headers.get("retry-after")
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and value >= 0 else None


def error_from_response(status: int, headers: Mapping[str, str], body: bytes) -> ApiError:
    """The exception for an error answer: by its error object's code, else by its status."""
    request_id = next((headers[h] for h in REQUEST_ID_HEADERS if h in headers), None)
    try:
        error = json.loads(body)["error"]
        code, message = str(error["code"]), str(error["message"])
        details = error.get("details") if isinstance(error.get("details"), dict) else {}
    except (ValueError, KeyError, TypeError):
        cls = _BY_STATUS.get(status, InternalError if status >= 500 else BadRequest)
        text = body.decode("utf-8", "replace").strip()[:200]
        return cls(f"HTTP {status}" + (f": {text}" if text else ""), status=status, request_id=request_id,
                   retry_after=retry_after_s(headers))
    return error_class(code)(message, code=code, status=status, request_id=request_id, details=details,
                             retry_after=retry_after_s(headers))
