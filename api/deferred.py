"""`AgentOS-Deferred`: what a `202` says when its work is stored but could not be sent to the
workers (the broker is away). The row stays (`queued`, `pending` or due) and the watchdog sends it
once the broker answers (docs/runs.md, "Redis trouble"); nothing is lost or half-written."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

log = logging.getLogger("agentos.api")

HEADER = "AgentOS-Deferred"


def deferred(what: str, exc: BaseException) -> dict[str, str]:
    """The header for `what` (e.g. "run run_…"), whose send failed with `exc`; logged here."""
    log.warning("broker unreachable: %s deferred to the watchdog (%s)", what, exc)
    return {HEADER: "broker-unavailable"}


async def send_or_defer(send: Awaitable[None], what: str) -> dict[str, str]:
    """Await `send` (a job to the workers, after its row committed): no header when the broker
    took it, else `deferred`'s."""
    try:
        await send
    except Exception as exc:  # whatever the dispatch raised: the row is stored and the watchdog sends it
        return deferred(what, exc)
    return {}
