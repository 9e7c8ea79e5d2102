"""Every request's origin for the audit log: the client's address, its user agent and a request id.

The request id is the client's `X-Request-Id` when it sent a usable one (1-128 printable ASCII
characters), else a new one; it is echoed in the response's `X-Request-Id`, so a client can quote
it and an operator find the audit entries and log lines of that request. The address is the one
the server reports for the connection (behind a proxy, run uvicorn with `--forwarded-allow-ips`
so that it takes it from `X-Forwarded-For`).
"""

from __future__ import annotations

import secrets

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from core.store.audit import Origin, origin

REQUEST_ID_HEADER = "X-Request-Id"
_MAX_ID = 128
_MAX_USER_AGENT = 512


def _usable(value: str | None) -> bool:
    return value is not None and 1 <= len(value) <= _MAX_ID and value.isascii() and value.isprintable()


class RequestOrigin:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        sent = headers.get("x-request-id")
        request_id = sent if sent is not None and _usable(sent) else "req_" + secrets.token_hex(12)
        client = scope.get("client")
        agent = headers.get("user-agent")
        token = origin.set(Origin(ip=client[0] if client else None,
                                  user_agent=agent[:_MAX_USER_AGENT] if agent else None, request_id=request_id))

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[REQUEST_ID_HEADER] = request_id
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            origin.reset(token)
