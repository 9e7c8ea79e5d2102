"""What is told to others after a transaction about runs commits: events to the session's
live stream, runs to the workers, cancel flags to running workers — and, in `run_ended`, the
one path every ending of a run goes through (a worker's, a cancel, the watchdog's).

Postgres already holds the truth when these are called, so a Redis hiccup is logged, never
raised (except by `send_run`, whose caller decides what a failed send means).
"""

from __future__ import annotations

import logging
from typing import Any

from redis.exceptions import RedisError

from core import events, webhooks
from core.admission import RunTicket, not_released, stage_release
from core.infra import Infra
from core.redis_transport import Command
from core.store.runs import Finished
from core.telemetry import metrics
from core.tenancy import run_cancel_key, run_scratch_key

log = logging.getLogger("agentos.runs")

CANCEL_FLAG_TTL_S = 86_400


async def publish(infra: Infra, org_id: str, emitted: list[events.Event]) -> None:
    """Add committed events to their session's stream (never raises)."""
    await events.publish(infra.redis, org_id, emitted, maxlen=infra.settings.events.stream_maxlen,
                         ttl_s=infra.settings.events.stream_ttl_s)


async def announce_created(infra: Infra, org_id: str, emitted: list[events.Event], ticket: RunTicket,
                           run_id: str, queue: list[Command] | None = None) -> BaseException | None:
    """A run's row is committed: publish its events, bind its admission ticket to it and, given
    `queue` (`JobQueue.run_commands`), send it to the workers, in one Redis round trip. Redis runs
    the commands in order, so `run.queued` is in the stream before a worker can take the run.
    Answers why the run could not be queued (None when it was, or when `queue` was not given);
    never raises. Safe alongside `send_run`: should the run end before the bind lands, its place
    is left over like a lost release, which admission reconciles with Postgres before it ever
    refuses a run."""
    settings = infra.settings.events
    results: list[Any] | BaseException
    try:
        async with infra.redis.pipeline(transaction=False) as pipe:
            binds = ticket.queue_bind(pipe, run_id)
            published = events.stage_publish(pipe, org_id, emitted, maxlen=settings.stream_maxlen,
                                             ttl_s=settings.stream_ttl_s)
            for name, args in queue or ():
                getattr(pipe, name)(*args)
            results = await pipe.execute(raise_on_error=False)
    except (RedisError, OSError) as exc:
        results = exc
    await ticket.bound(results if isinstance(results, BaseException) else results[:binds])
    if isinstance(results, BaseException):
        if emitted:
            events.not_published(emitted, results)
        return results if queue else None
    if emitted:
        events.check_published(emitted, results[binds:binds + published])
    return next((r for r in results[binds + published:] if isinstance(r, Exception)), None)


async def send_run(infra: Infra, org_id: str, run_id: str) -> None:
    """Send a run to the workers; raises if the broker cannot be reached."""
    await infra.jobs.enqueue_run(run_id, org_id)


async def start_next(infra: Infra, org_id: str, run_id: str | None) -> None:
    """Send a queued run whose turn has come (the run before it ended, or a human decided). On
    failure it stays queued, and the watchdog sends it once the broker answers again."""
    if run_id is None:
        return
    try:
        await send_run(infra, org_id, run_id)
    except Exception as exc:
        log.warning("could not send run %s to the workers (the watchdog will): %s", run_id, exc)


async def flag_cancel(infra: Infra, org_id: str, run_ids: list[str]) -> None:
    """Tell the workers executing these runs to stop (they also see the request in Postgres)."""
    for run_id in run_ids:
        try:
            await infra.redis.set(run_cancel_key(org_id, run_id), b"1", ex=CANCEL_FLAG_TTL_S)
        except (RedisError, OSError) as exc:
            log.warning("cancel flag for run %s not set in Redis: %s", run_id, exc)


async def run_ended(infra: Infra, org_id: str, done: Finished) -> None:
    """After the transaction that made a run terminal committed: free its place among the org's
    active runs, publish its events, drop its cancel flag and scratch state (one Redis round
    trip for the three), start the session's next run, and send its webhook deliveries. Never
    raises for Redis or the broker being away."""
    run_id = done.run["id"]
    _count_ended(org_id, done)
    settings = infra.settings.events
    try:
        # One transaction (as `events.publish`: the run's last events reach followers in one
        # read). Redis runs its commands in order: the place is free before the terminal event
        # is in the stream, so a client that starts its next run as soon as it sees this one end
        # finds the place free.
        async with infra.redis.pipeline(transaction=True) as pipe:
            stage_release(pipe, org_id, run_id)
            published = events.stage_publish(pipe, org_id, done.events, maxlen=settings.stream_maxlen,
                                              ttl_s=settings.stream_ttl_s)
            pipe.delete(run_cancel_key(org_id, run_id), run_scratch_key(org_id, run_id))
            results = await pipe.execute(raise_on_error=False)
    except (RedisError, OSError) as exc:
        not_released([run_id], exc)
        if done.events:
            events.not_published(done.events, exc)
    else:
        if isinstance(results[0], Exception):
            not_released([run_id], results[0])
        events.check_published(done.events, results[1:1 + published])
    await start_next(infra, org_id, done.next_run_id)
    # Deliveries were stored with the terminal event; the webhook workers learn of them now.
    await webhooks.announce(infra, org_id, done.run["session_id"], done.deliveries)


def _count_ended(org_id: str, done: Finished) -> None:
    run, m = done.run, metrics.get()
    m.runs_finished.labels(run["status"], run["agent_id"], *m.org(org_id)).inc()
    if run["finished_at"] is not None:
        m.run_duration.labels(run["status"]).observe((run["finished_at"] - run["created_at"]).total_seconds())
