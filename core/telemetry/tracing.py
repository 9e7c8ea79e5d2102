"""Traces: the OpenTelemetry SDK set up once per process, and spans that cost nothing when off.

Tracing is on in a process only after `setup(settings, service)` found an OTLP endpoint
(`AGENTOS_TELEMETRY__OTLP_ENDPOINT`, or the standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` /
`OTEL_EXPORTER_OTLP_ENDPOINT`) and `OTEL_SDK_DISABLED` is not true. Until then no SDK
`TracerProvider` is installed, `ON` is False, and `span()` hands back one shared no-op context
manager, so call sites guard the building of attributes with `if tracing.ON`.

Under Celery prefork `setup` runs in each child after the fork (`worker_process_init`): the
batch exporter's thread does not survive a fork.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import Link, NonRecordingSpan, Span, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from core.settings import TelemetrySettings
from core.telemetry import names

log = logging.getLogger("agentos.telemetry")

# True once this process exports spans. Read it before building a span's attributes.
ON = False
CAPTURE_CONTENT = False

_NOOP: AbstractContextManager[None] = nullcontext()
_PROPAGATOR = TraceContextTextMapPropagator()
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_tracer: trace.Tracer | None = None
_provider: Any = None  # the SDK's TracerProvider, when on


def endpoint_of(settings: TelemetrySettings) -> str | None:
    """Where spans go, or None when tracing is off."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower() == "none":
        return None
    if settings.otlp_endpoint:
        base = settings.otlp_endpoint.rstrip("/")
        return base if base.endswith("/v1/traces") else f"{base}/v1/traces"
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        return os.environ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"]
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"].rstrip("/") + "/v1/traces"
    return None


def setup(settings: TelemetrySettings, service: str, *, exporter: Any = None) -> bool:
    """Install the SDK in this process if tracing is configured (or an `exporter` is given, as
    tests do); instrument psycopg, redis and httpx (unless `library_spans` is off). Returns whether
    tracing is on."""
    global ON, CAPTURE_CONTENT, _tracer, _provider
    if ON:
        return True
    endpoint = endpoint_of(settings)
    if endpoint is None and exporter is None:
        return False
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    from core.telemetry.sampling import OursOnly, ScopeProcessor

    resource = Resource.create({SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or f"{settings.service_name}-"
                                f"{service}", "agentos.process": service})
    provider = TracerProvider(resource=resource, sampler=OursOnly.from_env())
    provider.add_span_processor(ScopeProcessor())
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)
    _provider = provider
    _tracer = provider.get_tracer("agentos")
    CAPTURE_CONTENT = settings.capture_content
    if settings.library_spans:
        _instrument_libraries()
    ON = True
    log.info("tracing on: spans of %s go to %s", service, endpoint or type(exporter).__name__)
    return True


def _instrument_libraries() -> None:
    """Postgres, Redis and outbound HTTP spans from the contrib instrumentations. They record
    only inside one of our traces (the sampler drops client spans that start a trace)."""
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor
    from opentelemetry.instrumentation.psycopg import PsycopgInstrumentor
    from opentelemetry.instrumentation.redis import RedisInstrumentor

    for instrumentor in (PsycopgInstrumentor(), RedisInstrumentor(), HTTPXClientInstrumentor()):
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument()


def shutdown() -> None:
    """Flush and stop the exporter (at process exit)."""
    if _provider is not None:
        _provider.shutdown()


def span(name: str, attributes: Mapping[str, Any] | None = None, kind: SpanKind = SpanKind.INTERNAL,
         links: list[Link] | None = None, parent: otel_context.Context | None = None
         ) -> AbstractContextManager[Span | None]:
    """A span around a block, current inside it; the shared no-op when tracing is off."""
    if _tracer is None:
        return _NOOP
    return _tracer.start_as_current_span(name, context=parent, kind=kind, attributes=attributes, links=links)


def current_span() -> Span | None:
    """The current span if it records, else None (tracing off or not sampled)."""
    if not ON:
        return None
    current = trace.get_current_span()
    return current if current.is_recording() else None


def annotate(**attributes: str | int | None) -> None:
    """Add attributes to the current span (no-op when tracing is off)."""
    current = current_span()
    if current is not None:
        current.set_attributes({k: v for k, v in attributes.items() if v is not None})


# --- W3C trace context -------------------------------------------------------------------------


def inject() -> dict[str, str]:
    """The current trace context as `traceparent` (and `tracestate`) headers; {} when off."""
    if not ON:
        return {}
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier


def extract(carrier: Mapping[str, str]) -> otel_context.Context:
    return _PROPAGATOR.extract(carrier)


def parse_traceparent(value: str | None) -> tuple[str, str] | None:
    """(trace id, parent span id) of a valid W3C `traceparent`, else None."""
    if not value:
        return None
    match = _TRACEPARENT.match(value.strip().lower())
    if match is None or match.group(1) == "0" * 32 or match.group(2) == "0" * 16:
        return None
    return match.group(1), match.group(2)


def current_traceparent() -> str | None:
    """The current span as a `traceparent` value, if a span records."""
    current = current_span()
    if current is None:
        return None
    ctx = current.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def context_of(traceparent: str) -> otel_context.Context | None:
    """A context whose (remote) parent is `traceparent`, to continue a stored trace."""
    parsed = parse_traceparent(traceparent)
    if parsed is None:
        return None
    ctx = SpanContext(int(parsed[0], 16), int(parsed[1], 16), is_remote=True,
                      trace_flags=TraceFlags(TraceFlags.SAMPLED))
    return trace.set_span_in_context(NonRecordingSpan(ctx))


@contextmanager
def continue_run(traceparent: str | None, trace_id: str) -> Iterator[None]:
    """Inside a worker's delivery: make sure what follows is in the run's own trace. A first
    delivery already is (its message carried the POST's context); a later one (after a human's
    decision, a crash, the watchdog) opens a span under the run's stored parent, linked to this
    delivery's span. Ids are W3C hex, as stored."""
    current = current_span()
    if current is None or f"{current.get_span_context().trace_id:032x}" == trace_id:
        yield
        return
    # A run created while the API did not trace has no stored parent: its spans still go under
    # its own trace id (the one its resource and logs show), below a parent nobody exported.
    parent = context_of(traceparent or f"00-{trace_id}-{secrets.token_hex(8)}-01")
    if parent is None:
        yield
        return
    with span(names.RUN_RESUMED, links=[Link(current.get_span_context())], parent=parent):
        yield
