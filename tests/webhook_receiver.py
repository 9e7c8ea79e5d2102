"""A webhook receiver as a customer would write one: a Starlette app on 127.0.0.1 that verifies
every delivery with the independent `standardwebhooks` package and deduplicates by `webhook-id`.
It can be stopped and started again on the same port (a receiver that is down for a while)."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


@dataclass
class Receiver:
    """Accepts deliveries signed by any of `secrets`; `events` holds each webhook-id once."""

    secrets: list[str] = field(default_factory=list)
    status: int = 204
    events: dict[str, dict[str, Any]] = field(default_factory=dict)  # webhook-id -> verified payload
    posts: int = 0
    refused: list[str] = field(default_factory=list)  # why a delivery did not verify
    signatures: list[str] = field(default_factory=list)  # each post's webhook-signature header
    port: int = 0
    _server: uvicorn.Server | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if not self.port:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    async def _hook(self, request: Request) -> Response:
        body = await request.body()
        headers = dict(request.headers)
        with self._lock:
            self.posts += 1
            self.signatures.append(headers.get("webhook-signature", ""))
            failures = []
            for secret in self.secrets:
                try:
                    payload = Webhook(secret).verify(body, headers)
                except WebhookVerificationError as exc:
                    failures.append(str(exc))
                    continue
                self.events.setdefault(headers["webhook-id"], payload)  # the receiver's dedup
                return Response(status_code=self.status)
            self.refused.append("; ".join(failures) or "no secret")
        return Response(status_code=400)

    def start(self) -> Receiver:
        app = Starlette(routes=[Route("/hooks", self._hook, methods=["POST"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                     lifespan="off"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the webhook receiver did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
