"""Which spans are kept, and what every kept span carries.

`OursOnly`: a trace starts only at one of our spans (a request, a run's delivery, a watchdog
pass). A client span with no parent — a broker poll, the event hub's XREAD, a pool's health
check — is dropped, so the contrib instrumentations add Postgres, Redis and HTTP spans inside
our traces without flooding the backend with one-span traces. Inside a trace the parent's
decision is followed (W3C `sampled` flag). `OTEL_TRACES_SAMPLER=traceidratio` with
`OTEL_TRACES_SAMPLER_ARG` samples that fraction of our traces.

`ScopeProcessor` copies the org, run, session and agent of the current `scope` onto every span
as it starts, contrib spans included.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from opentelemetry.context import Context
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, TraceState, get_current_span
from opentelemetry.util.types import Attributes

from core.telemetry import names, scope


class _Roots(Sampler):
    """For spans that start a trace: ours by `inner`, client spans never."""

    def __init__(self, inner: Sampler) -> None:
        self._inner = inner

    def should_sample(self, parent_context: Context | None, trace_id: int, name: str,
                      kind: SpanKind | None = None, attributes: Attributes = None,
                      links: Sequence[Link] | None = None, trace_state: TraceState | None = None) -> SamplingResult:
        if kind == SpanKind.CLIENT:
            return SamplingResult(Decision.DROP)
        return self._inner.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"AgentOSRoots{{{self._inner.get_description()}}}"


class OursOnly(ParentBased):
    def __init__(self, root: Sampler) -> None:
        super().__init__(root=_Roots(root))

    @classmethod
    def from_env(cls) -> OursOnly:
        name = os.environ.get("OTEL_TRACES_SAMPLER", "").strip().lower()
        if name in ("traceidratio", "parentbased_traceidratio"):
            try:
                ratio = float(os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1"))
            except ValueError:
                ratio = 1.0
            return cls(TraceIdRatioBased(min(max(ratio, 0.0), 1.0)))
        return cls(ALWAYS_ON)


class ScopeProcessor(SpanProcessor):
    """Puts `agentos.org_id`, `run_id`, `session_id`, `agent_id` on every span that lacks them."""

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        attributes = scope.attributes()
        if not attributes:
            # No scope (e.g. a request not yet authenticated): inherit from the parent span.
            parent = get_current_span(parent_context)
            if isinstance(parent, ReadableSpan) and parent.attributes:
                attributes = {k: str(v) for k, v in parent.attributes.items() if k in _SCOPE_KEYS}
        existing = span.attributes or {}
        span.set_attributes({k: v for k, v in attributes.items() if k not in existing})

    def on_end(self, span: ReadableSpan) -> None:
        return None


_SCOPE_KEYS = frozenset({names.ORG_ID, names.RUN_ID, names.SESSION_ID, names.AGENT_ID})
