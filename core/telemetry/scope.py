"""What the current unit of work is about: one context variable read by the log formatter and
the span processor, so logs and spans carry the org, run, session and agent without every call
passing them. Set by whoever learns them (the API after authenticating, a worker after loading
the run); asyncio tasks inherit it."""

from __future__ import annotations

from contextvars import ContextVar, Token
from dataclasses import dataclass, replace

from core.telemetry import names


@dataclass(frozen=True, slots=True)
class Scope:
    org_id: str | None = None
    run_id: str | None = None
    session_id: str | None = None
    agent_id: str | None = None
    # The run's trace id: logs carry it even when tracing is off.
    trace_id: str | None = None


EMPTY = Scope()
_current: ContextVar[Scope] = ContextVar("agentos_scope", default=EMPTY)


def current() -> Scope:
    return _current.get()


def bind(**fields: str | None) -> Token[Scope]:
    """Add to the current scope (for this task and the tasks it starts)."""
    return _current.set(replace(_current.get(), **fields))


def reset(token: Token[Scope]) -> None:
    _current.reset(token)


def attributes() -> dict[str, str]:
    """The current scope as span attributes (only what is known)."""
    now = _current.get()
    pairs = ((names.ORG_ID, now.org_id), (names.RUN_ID, now.run_id), (names.SESSION_ID, now.session_id),
             (names.AGENT_ID, now.agent_id))
    return {key: value for key, value in pairs if value is not None}
