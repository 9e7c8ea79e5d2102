"""Runs this API process just created, remembered for a few seconds, so that the client's
`GET /v1/runs/{id}/events` that follows its POST at once (the common case: POST, then stream)
starts without a Postgres round trip to look the run up, and sends the run's first event, its
`run.queued`, before it reads anything at all.

Only what the POST itself stored is kept (the run's session and its `run.queued` event, which
never change: the very event the POST published, with the bytes it published), keyed by the org
that created it: another org's request never finds it. Only a stream opened without a cursor
uses it: such a stream starts at `run.queued`, so it always has the run's terminal event ahead
of it and ends there, exactly as after a lookup.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

from core.events import Event

TTL_S = 30.0
MAX_RUNS = 10_000  # per process; the oldest go first


@dataclass(frozen=True)
class FreshRun:
    # The run's `run.queued`: its seq is the run's place in its session's line (`queue_seq`).
    queued: Event

    @property
    def session_id(self) -> str:
        return self.queued.session_id


class FreshRuns:
    def __init__(self, ttl_s: float = TTL_S, max_runs: int = MAX_RUNS) -> None:
        self._ttl_s = ttl_s
        self._max = max_runs
        self._runs: OrderedDict[tuple[str, str], tuple[float, FreshRun]] = OrderedDict()

    def remember(self, org_id: str, queued: Event) -> None:
        """A run this process just created, by its `run.queued` event."""
        self._runs[(org_id, queued.run_id)] = (time.monotonic() + self._ttl_s, FreshRun(queued))
        while len(self._runs) > self._max:
            self._runs.popitem(last=False)

    def get(self, org_id: str, run_id: str) -> FreshRun | None:
        found = self._runs.get((org_id, run_id))
        if found is None:
            return None
        if found[0] <= time.monotonic():
            del self._runs[(org_id, run_id)]
            return None
        return found[1]
