"""A model call and a skill call, each as a span (GenAI semantic conventions) and as metrics.

    with genai.model_call("openai:gpt-4o", agent_id) as call:
        reply = ...
        call.usage(reply.usage_metadata)

Token counts and latency always go to the metrics (a few counter increments); the span and its
attributes exist only when tracing is on. Message content never goes into a span unless
`AGENTOS_TELEMETRY__CAPTURE_CONTENT` is set.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from opentelemetry.trace import Span, SpanKind, Status, StatusCode

from core.telemetry import metrics, names, scope, tracing


def provider_of(spec: str) -> tuple[str, str]:
    """(provider, model) of a model spec string such as `openai:gpt-4o`."""
    provider, _, model = spec.partition(":")
    return (provider, model) if model else ("unknown", spec)


class ModelCall:
    """What a model call reports back: its token counts and, when captured, its output."""

    def __init__(self, provider: str, model: str, span: Span | None) -> None:
        self.provider, self.model, self.span = provider, model, span
        self.input_tokens = self.output_tokens = 0

    def usage(self, usage: Mapping[str, Any] | None) -> None:
        if not usage:
            return
        self.input_tokens += int(usage.get("input_tokens") or 0)
        self.output_tokens += int(usage.get("output_tokens") or 0)

    def output(self, text: str) -> None:
        """The model's answer, kept on the span only when content capture is on."""
        if self.span is not None and tracing.CAPTURE_CONTENT:
            self.span.set_attribute(names.GEN_AI_OUTPUT_MESSAGES,
                                    json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": text}]}]))


@contextmanager
def model_call(spec: str, agent_id: str, operation: str = "chat") -> Iterator[ModelCall]:
    provider, model = provider_of(spec)
    m = metrics.get()
    started = time.perf_counter()
    attributes = None
    if tracing.ON:
        attributes = {names.GEN_AI_OPERATION: operation, names.GEN_AI_SYSTEM: provider,
                      names.GEN_AI_PROVIDER: provider, names.GEN_AI_REQUEST_MODEL: model,
                      names.GEN_AI_AGENT_ID: agent_id, names.AGENT_ID: agent_id}
    with tracing.span(f"{operation} {model}", attributes, kind=SpanKind.CLIENT) as span:
        call = ModelCall(provider, model, span)
        outcome = "ok"
        try:
            yield call
        except BaseException as exc:
            outcome = "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"
            if span is not None:
                span.set_attribute(names.ERROR_TYPE, type(exc).__name__)
            raise
        finally:
            m.model_calls.labels(provider, model, outcome).inc()
            m.model_latency.labels(provider, model).observe(time.perf_counter() - started)
            org = m.org(scope.current().org_id or "") if m.org_label else ()
            if call.input_tokens:
                m.model_tokens.labels(provider, model, "input", *org).inc(call.input_tokens)
            if call.output_tokens:
                m.model_tokens.labels(provider, model, "output", *org).inc(call.output_tokens)
            if span is not None:
                span.set_attributes({names.GEN_AI_INPUT_TOKENS: call.input_tokens,
                                     names.GEN_AI_OUTPUT_TOKENS: call.output_tokens})


class SkillCall:
    def __init__(self, span: Span | None) -> None:
        self.span = span
        self.error: str | None = None

    def failed(self, error: str) -> None:
        """The skill reported an error to the model (the call itself returned)."""
        self.error = error


@contextmanager
def skill_call(name: str, tool_call_id: str, agent_id: str, args: Mapping[str, Any]) -> Iterator[SkillCall]:
    m = metrics.get()
    started = time.perf_counter()
    attributes = None
    if tracing.ON:
        attributes = {names.GEN_AI_OPERATION: "execute_tool", names.GEN_AI_TOOL_NAME: name,
                      names.GEN_AI_TOOL_CALL_ID: tool_call_id, names.AGENT_ID: agent_id}
        if tracing.CAPTURE_CONTENT:
            attributes[names.GEN_AI_TOOL_ARGUMENTS] = json.dumps(args, default=str)[:4096]
    with tracing.span(names.tool(name), attributes) as span:
        call = SkillCall(span)
        try:
            yield call
        except BaseException as exc:
            call.error = type(exc).__name__
            raise
        finally:
            m.skill_calls.labels(name).inc()
            m.skill_latency.labels(name).observe(time.perf_counter() - started)
            if call.error is not None:
                m.skill_errors.labels(name).inc()
                if span is not None:
                    # The error text may quote the call's data: only its kind goes on the span.
                    span.set_status(Status(StatusCode.ERROR))
                    span.set_attribute(names.ERROR_TYPE, "skill_error")
