"""Request body size limit that answers with the API's error object.

Starlette's built-in limiter answers an oversize `Content-Length` with plain text; clients of
this API always get `{"error": {"code": "PAYLOAD_TOO_LARGE", ...}}`.
"""

from __future__ import annotations

from collections.abc import Mapping

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.responses import error
from core.errors import ApiError


class BodyLimit:
    """`max_bytes` for every body; `uploads` maps a path to its own, larger limit (file uploads)."""

    def __init__(self, app: ASGIApp, max_bytes: int, uploads: Mapping[str, int] | None = None) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.uploads = dict(uploads or {})

    def _too_large(self, limit: int) -> ApiError:
        return ApiError("PAYLOAD_TOO_LARGE", f"The request body is larger than {limit} bytes; send less.",
                        details={"max_bytes": limit})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.uploads.get(scope.get("path", ""), self.max_bytes)
        declared = Headers(scope=scope).get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            await error(self._too_large(limit))(scope, receive, send)
            return
        if not declared and "transfer-encoding" not in Headers(scope=scope):
            # No body (a GET): nothing to count, and no wrapper held while a stream stays open.
            await self.app(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise self._too_large(limit)  # surfaces from request.body(); handled as an ApiError
            return message

        await self.app(scope, limited_receive, send)
