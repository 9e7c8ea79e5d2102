"""The API's telemetry middleware (pure ASGI): per request a server span when tracing is on
(continuing an incoming `traceparent`), and always the request count and latency by method,
route template and status. The route template (`/v1/runs/{run_id}`), never the path, labels a
request: ids in paths would make a series per run."""

from __future__ import annotations

import time
from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode

from core.telemetry import metrics, scope, tracing

Scope = dict[str, Any]
Receive = Any
Send = Any

UNMATCHED = "unmatched"


def _route(asgi_scope: Scope) -> str:
    route = asgi_scope.get("route")
    path = getattr(route, "path", None)
    return str(path) if path else UNMATCHED


class TelemetryMiddleware:
    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, asgi_scope: Scope, receive: Receive, send: Send) -> None:
        if asgi_scope["type"] != "http":
            await self.app(asgi_scope, receive, send)
            return
        m = metrics.get()
        method = asgi_scope["method"]
        started = time.perf_counter()
        status = 500
        token = scope.bind(org_id=None, run_id=None, session_id=None, agent_id=None, trace_id=None)

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                m.http_latency.labels(method, _route(asgi_scope)).observe(time.perf_counter() - started)
            await send(message)

        try:
            if not tracing.ON:
                await self.app(asgi_scope, receive, send_wrapper)
                return
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in asgi_scope.get("headers", ())
                       if k in (b"traceparent", b"tracestate")}
            parent = tracing.extract(headers) if headers else None
            with tracing.span(method, {"http.request.method": method, "url.path": asgi_scope.get("path", "")},
                              kind=SpanKind.SERVER, parent=parent) as span:
                try:
                    await self.app(asgi_scope, receive, send_wrapper)
                finally:
                    if span is not None:
                        route = _route(asgi_scope)
                        span.update_name(f"{method} {route}")
                        span.set_attributes({"http.route": route, "http.response.status_code": status})
                        if status >= 500:
                            span.set_status(Status(StatusCode.ERROR))
        finally:
            scope.reset(token)
            m.http_requests.labels(method, _route(asgi_scope), str(status)).inc()
