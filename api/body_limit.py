"""Request body size limit that answers with the API's error object.

Starlette's built-in limiter answers an oversize `Content-Length` with plain text; clients of
this API always get `{"error": {"code": "PAYLOAD_TOO_LARGE", ...}}`.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.responses import error
from core.errors import ApiError


class BodyLimit:
    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> ApiError:
        return ApiError("PAYLOAD_TOO_LARGE", f"The request body is larger than {self.max_bytes} bytes; send less.",
                        details={"max_bytes": self.max_bytes})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_bytes:
            await error(self._too_large())(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise self._too_large()  # surfaces from request.body(); handled as an ApiError
            return message

        await self.app(scope, limited_receive, send)
