"""Server-sent event streams of a run and of a session.

Both replay from `Last-Event-ID` (or `?after=`) and then follow live (`core.event_reader`).
A run's stream ends after its terminal event; a session's stays open. A quiet stream gets a
comment line every `events.keepalive_s` seconds (the event hub's one timer marks them due) so
proxies keep the connection open. The response is `api.sse.EventStream`: one waiting coroutine
and one small task per idle stream.

When the API process shuts down (SIGTERM, a rolling deploy) every stream ends with a final
comment, `: shutting down; reconnect with Last-Event-ID`, and a `retry:` hint, so clients
reconnect (through the load balancer, to another API process) and resume where they were.
"""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator
from typing import Any

from starlette.responses import Response

from api.endpoint import Call, endpoint, resource
from api.routes.runs import reader_for, run_not_found, session_not_found
from api.sse import EventStream, comment_bytes
from api.state import state_of
from core.errors import ApiError
from core.event_hub import EventHub
from core.events import Event
from core.store import runs
from core.telemetry import metrics
from core.tenancy import tenant_tx

CURSOR = re.compile(r"[0-9]{1,18}")
RUN_HAS_EVENTS_AFTER_SQL = "SELECT 1 FROM run_events WHERE run_id = %s AND seq > %s LIMIT 1"
SESSION_SEQ_SQL = "SELECT event_seq FROM sessions WHERE id = %s AND deleted_at IS NULL"
SHUTDOWN_COMMENT = "shutting down; reconnect with Last-Event-ID"
# How soon (ms) a client reconnects after the shutdown comment; EventSource honours `retry:`.
RECONNECT_MS = 500
FAREWELL = comment_bytes(SHUTDOWN_COMMENT, retry_ms=RECONNECT_MS)


def _after(call: Call[Any]) -> int | None:
    """The cursor: `Last-Event-ID` wins over `?after=`; None when neither is given."""
    raw = call.request.headers.get("last-event-id") or call.request.query_params.get("after")
    if raw is None or raw == "":
        return None
    if not CURSOR.fullmatch(raw):
        raise ApiError("BAD_REQUEST", "Last-Event-ID (or ?after=) must be an event seq: a non-negative integer.")
    return int(raw)


def _response(call: Call[Any], events: AsyncGenerator[list[Event] | None, None], run_id: str | None = None) -> Response:
    """The stream, counted in `agentos_sse_connections` while open; when it ends because the
    process is shutting down (the hub drained its followers), the farewell closes it. An event
    already read is always sent before the farewell, so the client's Last-Event-ID is the last
    event it got."""
    return EventStream(events, gauge=metrics.get().sse_open, run_id=run_id,
                       farewell=_Farewell(state_of(call.request).events),
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


class _Farewell:
    """The shutdown comment once the hub drains (a slotted object: a third of a closure's
    bytes, held by every open stream)."""

    __slots__ = ("hub",)

    def __init__(self, hub: EventHub) -> None:
        self.hub = hub

    def __call__(self) -> bytes | None:
        return FAREWELL if self.hub.draining else None


async def _nothing() -> AsyncGenerator[list[Event] | None, None]:
    """The events of a run that has ended and whose every event the client has."""
    return
    yield


@endpoint("Stream one run's events (SSE); replays after `Last-Event-ID`, ends after the terminal event.",
          stream=True)
async def run_events(call: Call[Any]) -> Response:
    run_id = call.path_id("run_id", "run")
    after = _after(call)
    fresh = state_of(call.request).fresh_runs.get(call.principal.org_id, run_id) if after is None else None
    first: Event | None = None
    if fresh is not None:  # created here seconds ago: from its run.queued on, its end is ahead
        # The run.queued this process published is sent as it was, before anything is read.
        first = fresh.queued
        session_id, start, finished = fresh.session_id, first.seq - 1, False
    else:
        async with tenant_tx(call.pool, call.principal.org_id) as conn:
            run = await runs.get(conn, run_id)
            if run is None:
                raise run_not_found(run_id)
            start = after if after is not None else max(int(run["queue_seq"] or 1) - 1, 0)
            finished = run["status"] in runs.TERMINAL and (
                await (await conn.execute(RUN_HAS_EVENTS_AFTER_SQL, (run_id, start))).fetchone() is None
            )
        session_id = run["session_id"]
    reader = reader_for(call, session_id)

    return _response(call, _nothing() if finished else reader.follow_with_keepalives(start, first=first),
                     run_id=run_id)


@endpoint("Stream every event of a session (SSE), live; `Last-Event-ID` or `?after=0` replays first.",
          stream=True)
async def session_events(call: Call[Any]) -> Response:
    session_id = call.path_id("session_id", "session")
    after = _after(call)
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await (await conn.execute(SESSION_SEQ_SQL, (session_id,))).fetchone()
    if row is None:
        raise session_not_found(session_id)
    newest = int(row["event_seq"])
    start = after if after is not None else newest
    return _response(call, reader_for(call, session_id).follow_with_keepalives(start, newest))


routes = [
    resource("/v1/runs/{run_id}/events", GET=run_events),
    resource("/v1/sessions/{session_id}/events", GET=session_events),
]
