"""Checking served responses against `/openapi.json`: `Recorder` (an ASGI middleware the suite's
client runs behind) hands every response, once sent, to a `Judge`: a status the operation does not
declare, or a body (JSON, or each SSE event) its declared schema refuses, is a problem."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from jsonschema import Draft202012Validator, FormatChecker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Enough for any page the suite reads; a longer body is judged on its status alone.
MAX_BODY = 4 * 1024 * 1024


@dataclass
class Exchange:
    method: str
    path: str
    status: int = 0
    content_type: str = ""
    body: bytearray = field(default_factory=bytearray)
    truncated: bool = False


class Recorder:
    """Hands (method, path, status, content type, body) of every HTTP response to `done` once
    it is sent, or once the app stops sending (a stream the client left)."""

    def __init__(self, app: ASGIApp, done: Callable[[Exchange], None]) -> None:
        self.app = app
        self.done = done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = Exchange(scope["method"], scope["path"])

        async def keep(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                headers = dict(message.get("headers") or [])
                exchange.content_type = headers.get(b"content-type", b"").decode("latin-1")
            elif message["type"] == "http.response.body":
                chunk = message.get("body", b"")
                if len(exchange.body) + len(chunk) > MAX_BODY:
                    exchange.truncated = True
                elif not exchange.truncated:
                    exchange.body += chunk
            await send(message)

        try:
            await self.app(scope, receive, keep)
        finally:
            if exchange.status:
                self.done(exchange)


class Judge:
    """The operations of a document, found by path and method, and their response schemas."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self.templates = [(re.compile("^" + re.sub(r"{\w+}", "[^/]+", path) + "$"), path) for path in doc["paths"]]
        self._validators: dict[str, Draft202012Validator] = {}

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]] | None:
        """(template, operation) serving this request, or None when the document has none."""
        # The most specific template first: a literal segment beats a parameter.
        matches = sorted((t for regex, t in self.templates if regex.match(path)), key=lambda t: t.count("{"))
        for template in matches:
            op = self.doc["paths"][template].get("get" if method == "HEAD" else method.lower())
            if op is not None:
                return template, op
        return None

    def validator(self, ref: dict[str, Any]) -> Draft202012Validator:
        key = orjson.dumps(ref).decode()
        if key not in self._validators:
            schema = {**ref, "components": self.doc["components"]}
            self._validators[key] = Draft202012Validator(schema, format_checker=FormatChecker())
        return self._validators[key]

    def problems(self, exchange: Exchange) -> list[str]:
        found = self.operation(exchange.method, exchange.path)
        if found is None:
            return []  # not an operation of the document (405, an unknown path, /docs)
        template, op = found
        where = f"{exchange.method} {template} -> {exchange.status}"
        declared = op["responses"].get(str(exchange.status))
        if declared is None:
            return [f"{where}: status not declared (declared: {', '.join(sorted(op['responses']))})"]
        if exchange.method == "HEAD" or exchange.truncated:
            return []
        media = exchange.content_type.split(";")[0].strip()
        content = declared.get("content")
        if not content:
            return [f"{where}: declared without a body, sent {len(exchange.body)} bytes"] if exchange.body else []
        if "*/*" in content:  # raw bytes of any type (a file's content): nothing to validate
            return []
        if media not in content:
            return [f"{where}: sent {media or 'no content type'}, declared {', '.join(content)}"]
        validator = self.validator(content[media]["schema"])
        if media == "text/event-stream":
            # Whole events only: a stream the client left may end inside one.
            blocks = re.split(r"\r?\n\r?\n", bytes(exchange.body).decode())[:-1]
            docs = [orjson.loads(line[5:]) for block in blocks for line in block.splitlines()
                    if line.startswith("data:")]
        else:
            docs = [orjson.loads(bytes(exchange.body))]
        return [f"{where}: {error.json_path}: {error.message[:300]}"
                for doc in docs for error in validator.iter_errors(doc)]


class Conformance:
    """Judges each response as it is recorded and keeps the problems (each once) and what was
    covered: (template, method, status) of every response of a documented operation."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.judge = Judge(doc)
        self.problems: dict[str, None] = {}
        self.covered: set[tuple[str, str, int]] = set()

    def __call__(self, exchange: Exchange) -> None:
        found = self.judge.operation(exchange.method, exchange.path)
        if found is not None:
            self.covered.add((found[0], exchange.method, exchange.status))
        try:
            found_problems = self.judge.problems(exchange)
        except ValueError as exc:  # a body that is not the JSON it says it is
            found_problems = [f"{exchange.method} {exchange.path} -> {exchange.status}: unreadable body: {exc}"]
        for problem in found_problems:
            self.problems.setdefault(problem)
