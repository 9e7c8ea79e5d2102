"""Server-sent event streams of a run and of a session.

Both replay from `Last-Event-ID` (or `?after=`) and then follow live (`core.event_reader`).
A run's stream ends after its terminal event; a session's stays open. sse-starlette sends a
comment line every `events.keepalive_s` seconds so proxies keep the connection open.

When the API process shuts down (SIGTERM, a rolling deploy) every stream ends with a final
comment, `: shutting down; reconnect with Last-Event-ID`, and a `retry:` hint, so clients
reconnect (through the load balancer, to another API process) and resume where they were.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from contextlib import suppress
from typing import Any

import anyio
from sse_starlette import EventSourceResponse, ServerSentEvent
from starlette.responses import Response

from api.endpoint import Call, endpoint, resource
from api.routes.runs import reader_for, run_not_found, session_not_found
from api.state import state_of
from core.errors import ApiError
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
# How long sse-starlette lets a stream send its farewell before cancelling it; below uvicorn's
# graceful shutdown timeout (`agentos.cli._serve`).
FAREWELL_S = 5.0


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


async def _counted(stream: AsyncIterator[ServerSentEvent]) -> AsyncIterator[ServerSentEvent]:
    """The stream, counted in `agentos_sse_connections` while it is open."""
    gauge = metrics.get().sse_open
    gauge.inc()
    try:
        async for item in stream:
            yield item
    finally:
        gauge.dec()


def _response(call: Call[Any], stream: AsyncIterator[ServerSentEvent]) -> Response:
    keepalive = call.settings.events.keepalive_s
    shutdown = anyio.Event()  # set by sse-starlette when uvicorn begins to shut down
    return EventSourceResponse(_until_shutdown(_counted(stream), shutdown), ping=keepalive, shutdown_event=shutdown,
                               shutdown_grace_period=FAREWELL_S,
                               headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _until_shutdown(stream: AsyncIterator[ServerSentEvent], shutdown: anyio.Event,
                          ) -> AsyncIterator[ServerSentEvent]:
    """`stream`'s events until it ends or the server shuts down; then the farewell comment. An
    event already read is always sent before the farewell, so the client's Last-Event-ID is the
    last event it got."""
    stop = asyncio.ensure_future(shutdown.wait())
    following: asyncio.Future[ServerSentEvent] | None = None
    try:
        while True:
            following = asyncio.ensure_future(anext(stream))
            await asyncio.wait({following, stop}, return_when=asyncio.FIRST_COMPLETED)
            if following.done():
                try:
                    item = following.result()
                except StopAsyncIteration:
                    return
                yield item
                continue
            await _cancelled(following)
            yield ServerSentEvent(comment=SHUTDOWN_COMMENT, retry=RECONNECT_MS)
            return
    finally:
        # Closed early (the client left, or the farewell went out): stop reading first, since
        # an iterator that is being read cannot be closed.
        stop.cancel()
        if following is not None and not following.done():
            await _cancelled(following)
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


async def _cancelled(future: asyncio.Future[Any]) -> None:
    future.cancel()
    with suppress(asyncio.CancelledError, StopAsyncIteration):
        await future


@endpoint("Stream one run's events (SSE); replays after `Last-Event-ID`, ends after the terminal event.",
          stream=True)
async def run_events(call: Call[Any]) -> Response:
    run_id = call.path_id("run_id", "run")
    after = _after(call)
    fresh = state_of(call.request).fresh_runs.get(call.principal.org_id, run_id) if after is None else None
    if fresh is not None:  # created here seconds ago: from its run.queued on, its end is ahead
        session_id, start, finished = fresh.session_id, max(fresh.queue_seq - 1, 0), False
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
