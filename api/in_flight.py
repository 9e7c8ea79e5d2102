"""Work a request started that must finish even if its client leaves: held here until done.

A run's streaming POST (`api.routes.runs`) answers with the run's stream before the run is
published and sent to the workers; that send runs as a task of its own, so a client that drops
the stream at once cannot cancel it. The event loop keeps only weak references to tasks, so each
is held here until it ends; at shutdown the lifespan waits a moment for those still running (a
run not sent by then stays `queued`, and the watchdog sends it).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("agentos.api")

T = TypeVar("T")


class InFlight:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def start(self, work: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
        """Run `work` as a task held until it ends; cancelling whoever awaits it does not stop it
        (await it through `asyncio.shield`)."""
        task = asyncio.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def __len__(self) -> int:
        return len(self._tasks)

    async def drain(self, timeout_s: float) -> None:
        """Wait up to `timeout_s` for the tasks still running; those left are cancelled."""
        if not self._tasks:
            return
        pending = set(self._tasks)
        _, left = await asyncio.wait(pending, timeout=timeout_s)
        for task in left:
            log.warning("shutting down: %s cancelled before it ended", task.get_name())
            task.cancel()
        if left:
            await asyncio.wait(left, timeout=1.0)
