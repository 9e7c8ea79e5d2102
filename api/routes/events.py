"""Server-sent event streams of a run and of a session.

Both replay from `Last-Event-ID` (or `?after=`) and then follow live (`core.event_reader`).
A run's stream ends after its terminal event; a session's stays open. sse-starlette sends a
comment line every `events.keepalive_s` seconds so proxies keep the connection open.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response

from api.endpoint import Call, endpoint, resource
from api.routes.runs import reader_for, run_not_found, session_not_found
from core.errors import ApiError
from core.events import Event
from core.store import runs
from core.tenancy import tenant_tx

CURSOR = re.compile(r"[0-9]{1,18}")
RUN_HAS_EVENTS_AFTER_SQL = "SELECT 1 FROM run_events WHERE run_id = %s AND seq > %s LIMIT 1"
SESSION_SEQ_SQL = "SELECT event_seq FROM sessions WHERE id = %s AND deleted_at IS NULL"


def _after(call: Call[Any]) -> int | None:
    """The cursor: `Last-Event-ID` wins over `?after=`; None when neither is given."""
    raw = call.request.headers.get("last-event-id") or call.request.query_params.get("after")
    if raw is None or raw == "":
        return None
    if not CURSOR.fullmatch(raw):
        raise ApiError("BAD_REQUEST", "Last-Event-ID (or ?after=) must be an event seq: a non-negative integer.")
    return int(raw)


def _sse(event: Event) -> ServerSentEvent:
    return ServerSentEvent(data=event.to_json().decode(), event=event.type, id=str(event.seq))


def _response(call: Call[Any], stream: AsyncIterator[ServerSentEvent]) -> Response:
    keepalive = call.settings.events.keepalive_s
    return EventSourceResponse(stream, ping=keepalive, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@endpoint("Stream one run's events (SSE); replays after `Last-Event-ID`, ends after the terminal event.",
          stream=True)
async def run_events(call: Call[Any]) -> Response:
    run_id = call.path_id("run_id", "run")
    after = _after(call)
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        run = await runs.get(conn, run_id)
        if run is None:
            raise run_not_found(run_id)
        start = after if after is not None else max(int(run["queue_seq"] or 1) - 1, 0)
        finished = run["status"] in runs.TERMINAL and (
            await (await conn.execute(RUN_HAS_EVENTS_AFTER_SQL, (run_id, start))).fetchone() is None
        )
    reader = reader_for(call, run["session_id"])

    async def stream() -> AsyncIterator[ServerSentEvent]:
        if finished:
            return
        async for event in reader.follow(start):
            if event.run_id != run_id:
                continue
            yield _sse(event)
            if event.terminal:
                return

    return _response(call, stream())


@endpoint("Stream every event of a session (SSE), live; `Last-Event-ID` or `?after=0` replays first.",
          stream=True)
async def session_events(call: Call[Any]) -> Response:
    session_id = call.path_id("session_id", "session")
    after = _after(call)
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await (await conn.execute(SESSION_SEQ_SQL, (session_id,))).fetchone()
    if row is None:
        raise session_not_found(session_id)
    start = after if after is not None else int(row["event_seq"])
    reader = reader_for(call, session_id)

    async def stream() -> AsyncIterator[ServerSentEvent]:
        async for event in reader.follow(start):
            yield _sse(event)

    return _response(call, stream())


routes = [
    resource("/v1/runs/{run_id}/events", GET=run_events),
    resource("/v1/sessions/{session_id}/events", GET=session_events),
]
