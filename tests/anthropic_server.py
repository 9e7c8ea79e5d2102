"""A small, scripted Anthropic Messages API server for tests (the same replies as
`tests.openai_server`, spoken in Anthropic's protocol), served by uvicorn in a thread.

`POST /v1/messages` answers plain or streamed (`message_start`, `content_block_*` with
`text_delta`/`input_json_delta`, `message_delta`, `message_stop`), with a `tool_use` block for
`use tool <name> <json args>` and `tool said: <content>` after a `tool_result`. `GET /v1/models`
lists `models`. With `api_key` set, a request whose key (`x-api-key` or bearer) differs is answered 401 the way
Anthropic does; `fail_next`/`failing` as for the OpenAI server (Anthropic's error body).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from tests.openai_server import OpenAIServer, scripted_answer

_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 429: "rate_limit_error", 529: "overloaded_error"}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in content or []:
        if isinstance(block, dict) and block.get("type") == "text":
            parts.append(str(block.get("text", "")))
        elif isinstance(block, dict) and block.get("type") == "tool_result":
            parts.append(_text(block.get("content")))
    return "".join(parts)


def _as_openai(body: dict[str, Any]) -> dict[str, Any]:
    """The request as the scripted replies read it: tool results become `tool` messages."""
    messages: list[dict[str, Any]] = []
    for message in body.get("messages") or []:
        content = message.get("content")
        is_result = isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content)
        messages.append({"role": "tool" if is_result else message.get("role"), "content": _text(content)})
    return {"messages": messages, "tools": body.get("tools")}


class AnthropicServer(OpenAIServer):
    def _routes(self) -> list[Route]:
        return [Route("/v1/messages", self._messages, methods=["POST"]),
                Route("/v1/models", self._anthropic_models, methods=["GET"])]

    def _key_of(self, request: Request) -> str | None:
        # The API takes the key as `x-api-key`; the installed SDK sends it as a bearer token.
        bearer = request.headers.get("authorization")
        return bearer.removeprefix("Bearer ") if bearer else request.headers.get("x-api-key")

    def _error(self, status: int, message: str | None, key: str | None, retry_after: int | None) -> Response:
        if message is None and status == 401:
            message = "invalid x-api-key"
        error = {"type": _ERROR_TYPES.get(status, "api_error"), "message": message or f"simulated failure {status}"}
        headers = {"retry-after": str(retry_after)} if retry_after is not None else None
        return JSONResponse({"type": "error", "error": error}, status_code=status, headers=headers)

    async def _anthropic_models(self, request: Request) -> Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        data = [{"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
                for m in self.models]
        return JSONResponse({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None})

    async def _messages(self, request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        with self._lock:
            self.requests.append(body)
            self.authorizations.append(request.headers.get("x-api-key"))
        refused = self._refusal(request)
        if refused is not None:
            return refused
        if not request.headers.get("anthropic-version"):
            return self._error(400, "anthropic-version header is required", None, None)
        text, call = scripted_answer(_as_openai(body))
        model = str(body.get("model"))
        tool = None
        if call is not None:
            tool = {"type": "tool_use", "id": f"toolu_{call['id']}", "name": call["function"]["name"],
                    "input": json.loads(call["function"]["arguments"])}
        usage = {"input_tokens": 7, "output_tokens": len(text.split()) or 1}
        if body.get("stream"):
            return StreamingResponse(_sse(_stream(model, text, tool, usage)), media_type="text/event-stream")
        content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
        if tool is not None:
            content.append(tool)
        return JSONResponse({"id": "msg_test", "type": "message", "role": "assistant", "model": model,
                             "content": content, "stop_reason": "tool_use" if tool else "end_turn",
                             "stop_sequence": None, "usage": usage})


def _stream(model: str, text: str, tool: dict[str, Any] | None, usage: dict[str, int]) -> Iterator[dict[str, Any]]:
    yield {"type": "message_start", "message": {
        "id": "msg_test", "type": "message", "role": "assistant", "model": model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": usage["input_tokens"],
                                                              "output_tokens": 1}}}
    index = 0
    if text:
        yield {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}
        for number, word in enumerate(text.split(" ")):
            piece = word if number == 0 else " " + word
            yield {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}}
        yield {"type": "content_block_stop", "index": 0}
        index = 1
    if tool is not None:
        yield {"type": "content_block_start", "index": index,
               "content_block": {"type": "tool_use", "id": tool["id"], "name": tool["name"], "input": {}}}
        arguments = json.dumps(tool["input"])
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            yield {"type": "content_block_delta", "index": index,
                   "delta": {"type": "input_json_delta", "partial_json": piece}}
        yield {"type": "content_block_stop", "index": index}
    yield {"type": "message_delta", "delta": {"stop_reason": "tool_use" if tool else "end_turn",
                                              "stop_sequence": None},
           "usage": {"output_tokens": usage["output_tokens"]}}
    yield {"type": "message_stop"}


async def _sse(events: Iterator[dict[str, Any]]) -> AsyncIterator[str]:
    for event in events:
        yield f"event: {event['type']}\ndata: {json.dumps(event)}\n\n"
