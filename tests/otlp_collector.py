"""A stub OpenTelemetry collector for tests: an HTTP server on 127.0.0.1 that accepts OTLP/HTTP
trace exports (`POST /v1/traces`, protobuf `ExportTraceServiceRequest`, gzip or not), decodes
them and keeps every span as a plain `CollectedSpan`. `--trace` in bench/runs.py uses it as a
no-op collector (`keep=False`: it decodes nothing, only counts requests)."""

from __future__ import annotations

import gzip
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


@dataclass(frozen=True)
class CollectedSpan:
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str
    kind: str
    service: str
    attributes: dict[str, Any]
    links: list[tuple[str, str]] = field(default_factory=list)


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, which) if which else None


class OtlpCollector:
    def __init__(self, keep: bool = True) -> None:
        self.keep = keep
        self.spans: list[CollectedSpan] = []
        # Every export as received (decompressed): a test can look for a string anywhere in what
        # was exported, attributes, events and status messages alike.
        self.raw: list[bytes] = []
        self.requests = 0
        self._lock = threading.Lock()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (the standard library's name)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                collector._receive(body)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> OtlpCollector:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _receive(self, body: bytes) -> None:
        with self._lock:
            self.requests += 1
        if not self.keep:
            return
        with self._lock:
            self.raw.append(body)
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        got: list[CollectedSpan] = []
        for resource_spans in request.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    got.append(CollectedSpan(
                        trace_id=span.trace_id.hex(), span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(), name=span.name, kind=KINDS.get(span.kind, "?"),
                        service=str(resource.get("service.name", "")),
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        links=[(link.trace_id.hex(), link.span_id.hex()) for link in span.links],
                    ))
        with self._lock:
            self.spans.extend(got)

    def trace(self, trace_id: str) -> list[CollectedSpan]:
        with self._lock:
            return [s for s in self.spans if s.trace_id == trace_id]

    def wait_for(self, trace_id: str, name: str, timeout_s: float = 30) -> list[CollectedSpan]:
        """The trace's spans once one named `name` arrived."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            spans = self.trace(trace_id)
            if any(s.name == name for s in spans):
                return spans
            time.sleep(0.1)
        raise AssertionError(f"no span {name!r} in trace {trace_id}: got {[s.name for s in self.trace(trace_id)]}")
