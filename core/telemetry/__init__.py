"""Telemetry, in one home: traces (OpenTelemetry, off unless configured), metrics
(prometheus-client) and structured logs, each set up once per process by its entry point.

- `scope`: what a unit of work is about (org, run, session, agent, trace id), for logs and spans
- `tracing`: the SDK set-up per process, spans with no cost when off, W3C trace context
- `names`: span names and attribute keys (GenAI semantic conventions and ours)
- `genai`: a model call and a skill call, as a span and as metrics
- `metrics`: the Prometheus metrics, multiprocess mode for prefork workers, the exposition
- `http`: the API's ASGI middleware (server span, request metrics)
- `logs`: JSON lines (or human-readable text) with trace, org and run ids
"""
