"""Server-sent event streams of a run and of a session (`api.run_streams` answers them).

Both replay from `Last-Event-ID` (or `?after=`) and then follow live (`core.event_reader`).
A run's stream ends after its terminal event; a session's stays open. A quiet stream gets a
comment line every `events.keepalive_s` seconds (the event hub's one timer marks them due) so
proxies keep the connection open. The response is `api.sse.EventStream`: one waiting coroutine
and one small task per idle stream.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from api.endpoint import Call, endpoint, resource
from api.run_streams import cursor_of, reader_for, run_stream, session_not_found, stream_response
from core.tenancy import tenant_tx

SESSION_SEQ_SQL = "SELECT event_seq FROM sessions WHERE id = %s AND deleted_at IS NULL"


@endpoint("Stream one run's events (SSE); replays after `Last-Event-ID`, ends after the terminal event.",
          stream=True)
async def run_events(call: Call[Any]) -> Response:
    return await run_stream(call, call.path_id("run_id", "run"), cursor_of(call))


@endpoint("Stream every event of a session (SSE), live; `Last-Event-ID` or `?after=0` replays first.",
          stream=True)
async def session_events(call: Call[Any]) -> Response:
    session_id = call.path_id("session_id", "session")
    after = cursor_of(call)
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await (await conn.execute(SESSION_SEQ_SQL, (session_id,))).fetchone()
    if row is None:
        raise session_not_found(session_id)
    newest = int(row["event_seq"])
    start = after if after is not None else newest
    return stream_response(call, reader_for(call, session_id).follow_with_keepalives(start, newest))


routes = [
    resource("/v1/runs/{run_id}/events", GET=run_events),
    resource("/v1/sessions/{session_id}/events", GET=session_events),
]
