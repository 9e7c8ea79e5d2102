"""A small, scripted OpenAI-compatible Chat Completions server for tests, served by uvicorn in a thread.

For `POST /v1/chat/completions` it answers, in order of precedence:
- a tool call, when the request has `tools` and the last message is a user message with a line
  `use tool <name> <json args>`;
- `tool said: <content>` when the last message is a `tool` message;
- the text a line `say json <JSON string>` of the latest user message decodes to (so a test can
  make the model answer characters a message cannot carry literally, e.g. `"\\u0000"`);
- `echo: <last user content>` otherwise.
Both `stream: true` (SSE chunks, word by word) and plain responses are served, and every request
body is recorded in `requests`. `fail_next(status, times, retry_after=…)` makes the next requests
fail; `failing = status` makes every request fail until it is set back to None.

With `api_key` set, a request without that key (`Authorization: Bearer …`, or Azure's `api-key`)
is answered 401. `GET /v1/models` lists `models`. The Azure OpenAI form is served too:
`POST /openai/deployments/{deployment}/chat/completions?api-version=…` (the deployment is the
model; recorded in `deployments`) and `GET /openai/models?api-version=…`, under `root_url`.

`POST /v1/embeddings` answers with deterministic vectors: the offline hash embedding of each input
(`memory.embeddings.hash_embed`) with `dimensions` (default `EMBEDDING_DIMS`) entries, as floats or
base64; its request bodies are recorded in `embedding_requests`, and `fail_next` applies too.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import threading
import time
from array import array
from collections.abc import AsyncIterator, Iterator
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from memory.embeddings import hash_embed

EMBEDDING_DIMS = 64
_USE_TOOL = re.compile(r"^use tool (\S+)\s*(.*)$", re.MULTILINE)
_SAY = re.compile(r"^say json (.*)$", re.MULTILINE)
_WORD = re.compile(r"\s*\S+\s*")


def _content(message: dict[str, Any]) -> str:
    content = message.get("content") or ""
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


class OpenAIServer:
    """Start with `start()` (or `with OpenAIServer() as server:`); point clients at `base_url`."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.embedding_requests: list[dict[str, Any]] = []
        self.authorizations: list[str | None] = []
        self.deployments: list[str] = []
        self.keys_seen: list[str | None] = []  # the key of every request, as `_key_of` reads it
        self.models = ["gpt-4o-mini", "test-model"]
        self.api_key: str | None = None
        self.failing: int | None = None
        self._failures: list[tuple[int, str | None, int | None]] = []
        self._lock = threading.Lock()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None
        self.base_url = ""
        self.root_url = ""

    def fail_next(self, status: int, times: int = 1, message: str | None = None,
                  retry_after: int | None = None) -> None:
        """Answer the next `times` requests with HTTP `status` and an error body (and a Retry-After)."""
        with self._lock:
            self._failures.extend([(status, message, retry_after)] * times)

    def _routes(self) -> list[Route]:
        return [Route("/v1/chat/completions", self._completions, methods=["POST"]),
                Route("/v1/embeddings", self._embeddings, methods=["POST"]),
                Route("/v1/models", self._models, methods=["GET"]),
                Route("/openai/deployments/{deployment}/chat/completions", self._azure_completions, methods=["POST"]),
                Route("/openai/models", self._azure_models, methods=["GET"])]

    def _key_of(self, request: Request) -> str | None:
        bearer = request.headers.get("authorization")
        return bearer.removeprefix("Bearer ") if bearer else request.headers.get("api-key")

    def _refusal(self, request: Request) -> Response | None:
        """The error to answer instead (a scripted failure, or a missing/wrong key), if any."""
        with self._lock:
            self.keys_seen.append(self._key_of(request))
            failure = self._failures.pop(0) if self._failures else None
        if failure is None and self.failing is not None:
            failure = (self.failing, None, None)
        if failure is None and self.api_key is not None and self._key_of(request) != self.api_key:
            failure = (401, None, None)
        if failure is None:
            return None
        return self._error(failure[0], failure[1], self._key_of(request), failure[2])

    def _error(self, status: int, message: str | None, key: str | None, retry_after: int | None) -> Response:
        return _error(status, message, key, retry_after)

    async def _models(self, request: Request) -> Response:
        refused = self._refusal(request)
        if refused is not None:
            return refused
        data = [{"id": m, "object": "model", "created": 1_700_000_000, "owned_by": "test"} for m in self.models]
        return JSONResponse({"object": "list", "data": data})

    async def _azure_models(self, request: Request) -> Response:
        if not request.query_params.get("api-version"):
            return JSONResponse({"error": {"code": "404", "message": "Resource not found"}}, status_code=404)
        return await self._models(request)

    async def _azure_completions(self, request: Request) -> Response:
        deployment = request.path_params["deployment"]
        if not request.query_params.get("api-version") or deployment not in self.models:
            return JSONResponse({"error": {"code": "DeploymentNotFound", "message": "The API deployment for this "
                                           "resource does not exist."}}, status_code=404)
        with self._lock:
            self.deployments.append(deployment)
        return await self._completions(request, model=deployment)

    def start(self) -> OpenAIServer:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        self._socket = sock
        app = Starlette(routes=self._routes())
        config = uvicorn.Config(app, log_level="warning", lifespan="off", loop="asyncio", http="h11", ws="none")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the test OpenAI server did not start")
            time.sleep(0.01)
        self.root_url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.base_url = f"{self.root_url}/v1"
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        if self._socket is not None:
            self._socket.close()
        self._server = self._thread = self._socket = None

    def __enter__(self) -> OpenAIServer:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    async def _completions(self, request: Request, model: str | None = None) -> Response:
        body: dict[str, Any] = await request.json()
        with self._lock:
            self.requests.append(body)
            self.authorizations.append(request.headers.get("authorization"))
        refused = self._refusal(request)
        if refused is not None:
            return refused
        text, call = _answer(body)
        model = model or str(body.get("model", "test-model"))
        usage = {"prompt_tokens": 7, "completion_tokens": len(text.split()) or 1}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if body.get("stream"):
            with_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            events = _stream(model, text, call, usage if with_usage else None)
            return StreamingResponse(_sse(events), media_type="text/event-stream")
        message: dict[str, Any] = {"role": "assistant", "content": text or None}
        if call is not None:
            message["tool_calls"] = [{"id": call["id"], "type": "function", "function": call["function"]}]
        choice = {"index": 0, "message": message, "finish_reason": "tool_calls" if call else "stop"}
        return JSONResponse(_envelope("chat.completion", model, [choice]) | {"usage": usage})


    async def _embeddings(self, request: Request) -> Response:
        body: dict[str, Any] = await request.json()
        with self._lock:
            self.embedding_requests.append(body)
        refused = self._refusal(request)
        if refused is not None:
            return refused
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
        dims = int(body.get("dimensions") or EMBEDDING_DIMS)
        data = []
        for i, text in enumerate(texts):
            vector = hash_embed(str(text), dims)
            encoded: Any = vector
            if body.get("encoding_format") == "base64":
                encoded = base64.b64encode(array("f", vector).tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": encoded})
        usage = {"prompt_tokens": len(texts), "total_tokens": len(texts)}
        return JSONResponse({"object": "list", "data": data, "model": body.get("model"), "usage": usage})


def _answer(body: dict[str, Any]) -> tuple[str, dict[str, Any] | None]:
    """The scripted reply: text, or a tool call `{"id", "function": {"name", "arguments"}}`."""
    messages: list[dict[str, Any]] = body.get("messages") or []
    last = messages[-1] if messages else {}
    if last.get("role") == "tool":
        return f"tool said: {_content(last)}", None
    user = next((_content(m) for m in reversed(messages) if m.get("role") == "user"), "")
    match = _USE_TOOL.search(_content(last)) if last.get("role") == "user" and body.get("tools") else None
    if match:
        index = sum(1 for m in messages if m.get("role") == "assistant")
        function = {"name": match.group(1), "arguments": match.group(2).strip() or "{}"}
        return "", {"id": f"call_test_{index}", "function": function}
    say = _SAY.search(user)
    if say:
        return str(json.loads(say.group(1))), None
    return f"echo: {user}", None


def _envelope(kind: str, model: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
    return {"id": "chatcmpl-test", "object": kind, "created": 1_700_000_000, "model": model, "choices": choices}


def _delta(model: str, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return _envelope("chat.completion.chunk", model, [{"index": 0, "delta": delta, "finish_reason": finish}])


def _stream(model: str, text: str, call: dict[str, Any] | None, usage: dict[str, int] | None) -> Iterator[Any]:
    yield _delta(model, {"role": "assistant", "content": ""})
    for word in _WORD.findall(text):
        yield _delta(model, {"content": word})
    if call is not None:
        name, arguments = call["function"]["name"], call["function"]["arguments"]
        head = {"index": 0, "id": call["id"], "type": "function", "function": {"name": name, "arguments": ""}}
        yield _delta(model, {"tool_calls": [head]})
        half = len(arguments) // 2
        for piece in (arguments[:half], arguments[half:]):
            yield _delta(model, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    yield _delta(model, {}, "tool_calls" if call else "stop")
    if usage is not None:
        yield _envelope("chat.completion.chunk", model, []) | {"usage": usage}
    yield "[DONE]"


async def _sse(events: Iterator[Any]) -> AsyncIterator[str]:
    for event in events:
        yield f"data: {event if isinstance(event, str) else json.dumps(event)}\n\n"


def _error(status: int, message: str | None, key: str | None, retry_after: int | None = None) -> JSONResponse:
    kinds = {401: "invalid_request_error", 429: "rate_limit_exceeded"}
    if message is None and status == 401:
        # Like the real service, name the key that was refused.
        message = f"Incorrect API key provided: {key or ''}."
    error = {"message": message or f"simulated failure {status}", "type": kinds.get(status, "server_error")}
    headers = {"retry-after": str(retry_after)} if retry_after is not None else None
    return JSONResponse({"error": error | {"param": None, "code": None}}, status_code=status, headers=headers)


scripted_answer = _answer  # the replies every fake provider server gives (tests.anthropic_server)
