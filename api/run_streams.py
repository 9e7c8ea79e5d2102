"""How the API answers with a stream of events: a run's (`GET /v1/runs/{id}/events`, and a
`POST /v1/sessions/{id}/runs` that asks for `Accept: text/event-stream`) and a session's.

Every stream is an `api.sse.EventStream` fed by `core.event_reader`: it replays after its cursor,
then follows live. A run's stream starts at the run's `run.queued` without a cursor and ends after
the run's terminal event; a run this process created seconds ago (`api.fresh_runs`) starts from
memory, with no Postgres round trip.

When the API process shuts down (SIGTERM, a rolling deploy) every stream ends with a final
comment, `: shutting down; reconnect with Last-Event-ID`, and a `retry:` hint, so clients
reconnect (through the load balancer, to another API process) and resume where they were.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator
from typing import Any

from starlette.responses import Response

from api.endpoint import Call
from api.sse import EventStream, comment_bytes
from api.state import state_of
from core.errors import ApiError
from core.event_hub import EventHub
from core.event_reader import EventReader
from core.events import Event
from core.store import runs
from core.telemetry import metrics
from core.tenancy import tenant_tx

CURSOR = re.compile(r"[0-9]{1,18}")
RUN_HAS_EVENTS_AFTER_SQL = "SELECT 1 FROM run_events WHERE run_id = %s AND seq > %s LIMIT 1"
SHUTDOWN_COMMENT = "shutting down; reconnect with Last-Event-ID"
# How soon (ms) a client reconnects after the shutdown comment; EventSource honours `retry:`.
RECONNECT_MS = 500
FAREWELL = comment_bytes(SHUTDOWN_COMMENT, retry_ms=RECONNECT_MS)


def run_not_found(run_id: str) -> ApiError:
    return ApiError("NOT_FOUND", f"No run with id {run_id!r} in this organisation.")


def session_not_found(session_id: str) -> ApiError:
    return ApiError("NOT_FOUND", f"No session with id {session_id!r} in this organisation.")


def reader_for(call: Call[Any], session_id: str) -> EventReader:
    return EventReader(state_of(call.request).events, call.principal.org_id, session_id)


def wants_stream(call: Call[Any]) -> bool:
    """The request's `Accept` names `text/event-stream`, and not with `q=0` (a create that
    answers with the stream)."""
    accept, wanted = call.request.headers.get("accept", "").lower(), EventStream.media_type
    if wanted not in accept:
        return False
    for media_range in accept.split(","):
        media, *params = (part.strip() for part in media_range.split(";"))
        if media == wanted:
            quality = next((p[2:].strip() for p in params if p.startswith("q=")), "1")
            return quality.rstrip("0").rstrip(".") not in ("0", "")
    return False


def cursor_of(call: Call[Any]) -> int | None:
    """The cursor: `Last-Event-ID` wins over `?after=`; None when neither is given."""
    raw = call.request.headers.get("last-event-id") or call.request.query_params.get("after")
    if raw is None or raw == "":
        return None
    if not CURSOR.fullmatch(raw):
        raise ApiError("BAD_REQUEST", "Last-Event-ID (or ?after=) must be an event seq: a non-negative integer.")
    return int(raw)


def stream_response(call: Call[Any], events: AsyncGenerator[list[Event] | None, None], run_id: str | None = None,
                    *, status: int = 200) -> Response:
    """The stream, counted in `agentos_sse_connections` while open; when it ends because the
    process is shutting down (the hub drained its followers), the farewell closes it. An event
    already read is always sent before the farewell, so the client's Last-Event-ID is the last
    event it got."""
    return EventStream(events, gauge=metrics.get().sse_open, run_id=run_id,
                       farewell=_Farewell(state_of(call.request).events), status=status,
                       body_read=call.request.method != "GET",
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def run_stream(call: Call[Any], run_id: str, after: int | None, *, status: int = 200,
                     published: asyncio.Future[Any] | None = None) -> Response:
    """Run `run_id`'s stream after `after` (None: from its `run.queued`), up to its terminal event.
    NOT_FOUND when the caller's org has no such run. `published`: the creating POST's publish of
    the run's `run.queued`, still in flight (the stream reads nothing before it is done)."""
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
    events = _nothing() if finished else reader_for(call, session_id).follow_with_keepalives(
        start, first=first, published=published if first is not None else None)
    return stream_response(call, events, run_id=run_id, status=status)


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
