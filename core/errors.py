"""Error codes of the public API: one home for every code, its HTTP status and default text."""

from __future__ import annotations

from typing import Any

# code -> (HTTP status, default message)
CODES: dict[str, tuple[int, str]] = {
    "BAD_REQUEST": (400, "The request is malformed."),
    "UNAUTHENTICATED": (401, "Send a valid credential: 'Authorization: Bearer <API key or JWT>'."),
    "STREAM_TOKEN_INVALID": (401, "This stream token is invalid here: it opens only its own event stream, "
                             "unaltered; get a new one from POST /v1/stream-tokens."),
    "STREAM_TOKEN_EXPIRED": (401, "This stream token has expired; get a new one from POST /v1/stream-tokens."),
    "FORBIDDEN": (403, "Your role does not allow this."),
    "SIGNUP_DISABLED": (403, "Sign-up is by invitation only on this server."),
    "CSRF_FAILED": (403, "A request signed in by cookie must carry the X-CSRF-Token header (the agentos_csrf "
                    "cookie's value) and come from this server's own origin."),
    "NOT_FOUND": (404, "No such resource in this organisation."),
    "METHOD_NOT_ALLOWED": (405, "This method is not allowed on this path."),
    "SESSION_BUSY": (409, "A run is already active in this session."),
    "CONFLICT": (409, "The resource's state does not allow this."),
    "ORG_DELETION_PENDING": (409, "This organisation is being deleted; its owner can restore it during the grace "
                             "period."),
    "WEBHOOK_DISABLED": (409, "The webhook is disabled; enable it (PATCH enabled: true) first."),
    "PAYLOAD_TOO_LARGE": (413, "The request body is too large."),
    "UNSUPPORTED_MEDIA_TYPE": (415, "Send JSON with 'Content-Type: application/json'."),
    "VALIDATION_FAILED": (422, "The request body failed validation; see details.fields."),
    "WEBHOOK_URL_REFUSED": (422, "The webhook URL is not allowed: it points at an internal or special address."),
    "PROVIDER_URL_REFUSED": (422, "The model provider's base_url is not allowed: it points at an internal or "
                             "special address."),
    "PASSWORD_REJECTED": (422, "The password does not meet the rules: at least the minimum length, not a common "
                          "password, not your email."),
    "IDEMPOTENCY_MISMATCH": (422, "This Idempotency-Key was used with a different body."),
    "RATE_LIMITED": (429, "Too many requests; retry after the given delay."),
    "QUOTA_EXCEEDED": (429, "A quota of this organisation is used up."),
    "INTERNAL": (500, "An internal error occurred; it has been logged."),
    "PROVIDER_FAILED": (502, "The model provider did not answer as expected; see the message."),
    "SANDBOX_BACKEND_FAILED": (502, "The sandbox's hosted backend failed; the code did not run or its result is lost."),
    "UNAVAILABLE": (503, "A dependency is unavailable; retry later. Nothing was half-written."),
}


class ApiError(Exception):
    """An error a caller sees: a stable code, a sentence saying what to do, optional details."""

    def __init__(
        self,
        code: str,
        message: str | None = None,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if code not in CODES:
            raise ValueError(f"unknown error code {code!r}")
        self.code = code
        self.status = CODES[code][0]
        self.message = message or CODES[code][1]
        self.details = details or {}
        self.headers = headers or {}
        super().__init__(f"{code}: {self.message}")

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


def code_for_status(status: int) -> str:
    """The code used when only an HTTP status is known (e.g. a framework-raised 404/405/413)."""
    for code, (code_status, _) in CODES.items():
        if code_status == status:
            return code
    return "BAD_REQUEST" if status < 500 else "INTERNAL"
