"""What the API tells others after a commit: events to the live stream, runs to the workers,
cancel flags to running workers. Postgres already holds the truth, so a Redis hiccup here is
logged, never turned into a failed request (except when enqueuing a new run: see runs.py)."""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError

from core import events
from core.jobs import JobQueue
from core.settings import Settings
from core.tenancy import run_cancel_key

log = logging.getLogger("agentos.api")

CANCEL_FLAG_TTL_S = 86_400


async def publish_events(state: Any, org_id: str, emitted: list[events.Event]) -> None:
    settings: Settings = state.settings
    await events.publish(state.redis, org_id, emitted, maxlen=settings.events.stream_maxlen,
                         ttl_s=settings.events.stream_ttl_s)


async def enqueue(state: Any, org_id: str, run_id: str) -> None:
    """Send a run to the workers; raises if the broker cannot be reached."""
    jobs: JobQueue = state.jobs
    await jobs.enqueue_run(run_id, org_id)


async def enqueue_next(state: Any, org_id: str, run_id: str | None) -> None:
    """Send the session's next run (the run before it ended here); it stays queued on failure."""
    if run_id is None:
        return
    try:
        await enqueue(state, org_id, run_id)
    except Exception as exc:
        log.warning("could not enqueue run %s: %s", run_id, exc)


async def flag_cancel(state: Any, org_id: str, run_ids: list[str]) -> None:
    """Tell the workers executing these runs to stop (they also see the request in Postgres)."""
    for run_id in run_ids:
        try:
            await state.redis.set(run_cancel_key(org_id, run_id), b"1", ex=CANCEL_FLAG_TTL_S)
        except (RedisError, OSError) as exc:
            log.warning("cancel flag for run %s not set in Redis: %s", run_id, exc)
