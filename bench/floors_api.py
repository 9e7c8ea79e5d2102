"""`agentos api` with two trivial routes added, for bench/floors.py's HTTP floor.

    python -m bench.floors_api api --host 127.0.0.1 --port P     # the same arguments as `agentos api`

The API is built by `api.app.create_app` and served by `agentos api`'s own code (settings, logs,
uvicorn, lifespan), with two more routes through `@endpoint`, so every request passes the whole
middleware stack, authentication (the key cache), the org's rate check and body parsing:

- `POST /bench/noop` (member, a run's body): does nothing and answers `202`; with `Accept:
  text/event-stream`, the stream below (one request instead of two).
- `GET /bench/noop/events` (viewer): an `api.sse.EventStream` of 7 events made in memory (a hello
  run's count: queued, started, 2 steps, a delta, message.completed, succeeded), ending with the
  terminal one.

What the pair costs is the floor of a run's two requests in this API: no Postgres, no Redis read.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from starlette.responses import Response  # noqa: E402
from starlette.routing import BaseRoute  # noqa: E402

import api.app  # noqa: E402
from api.endpoint import Call, endpoint, resource  # noqa: E402
from api.routes.runs import RunCreate  # noqa: E402
from api.run_streams import wants_stream  # noqa: E402
from api.schemas.health import Health  # noqa: E402
from api.sse import EventStream  # noqa: E402
from core import events  # noqa: E402
from core.events import Event  # noqa: E402
from core.telemetry import metrics  # noqa: E402

NOOP_PATH = "/bench/noop"
NOOP_EVENTS_PATH = "/bench/noop/events"
KINDS = (events.RUN_QUEUED, events.RUN_STARTED, events.STEP_STARTED, events.MESSAGE_DELTA, events.STEP_STARTED,
         events.MESSAGE_COMPLETED, events.RUN_SUCCEEDED)


@endpoint("bench: a POST that does nothing.", role="member", body=RunCreate, status=202, response=Health,
          streams_on_accept=True)
async def noop_post(call: Call[RunCreate]) -> Response:
    """`202`; with `Accept: text/event-stream`, the 7 events of `GET /bench/noop/events` (a run's
    POST that answers with its stream, `api.run_streams`)."""
    if wants_stream(call):
        return EventStream(_ready_events("run_bench"), gauge=metrics.get().sse_open, run_id="run_bench", status=202,
                           body_read=True, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return call.reply({"status": "ok"})


async def _ready_events(run_id: str) -> AsyncGenerator[list[Event] | None, None]:
    """One batch per event, as a run's events mostly reach a stream (`EventStream` takes batches)."""
    now = datetime.now(UTC)
    for seq, kind in enumerate(KINDS, start=1):
        data: dict[str, Any] = {"text": "Hello! "} if kind == events.MESSAGE_DELTA else {"node": "think"}
        yield [Event(seq, kind, run_id, "session_bench", now, data)]


@endpoint("bench: an event stream of 7 events made in memory.", stream=True)
async def noop_events(call: Call[Any]) -> Response:
    run_id = "run_bench"
    return EventStream(_ready_events(run_id), gauge=metrics.get().sse_open, run_id=run_id,
                       headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


_original_routes = api.app._routes


def _with_bench_routes() -> list[BaseRoute]:
    return [*_original_routes(), resource(NOOP_PATH, POST=noop_post), resource(NOOP_EVENTS_PATH, GET=noop_events)]


if __name__ == "__main__":
    api.app._routes = _with_bench_routes  # create_app() reads the routes from here
    from agentos.cli import main

    sys.argv = ["agentos", *sys.argv[1:]]
    main()
