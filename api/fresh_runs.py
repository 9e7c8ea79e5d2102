"""Runs this API process just created, remembered for a few seconds, so that the client's
`GET /v1/runs/{id}/events` that follows its POST at once (the common case: POST, then stream)
starts reading the session's events without a Postgres round trip to look the run up.

Only what the POST itself stored is kept (the run's session and its `run.queued` seq, which
never change), keyed by the org that created it: another org's request never finds it. Only a
stream opened without a cursor uses it: such a stream starts at `run.queued`, so it always has
the run's terminal event ahead of it and ends there, exactly as after a lookup.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

TTL_S = 30.0
MAX_RUNS = 10_000  # per process; the oldest go first


@dataclass(frozen=True)
class FreshRun:
    session_id: str
    queue_seq: int


class FreshRuns:
    def __init__(self, ttl_s: float = TTL_S, max_runs: int = MAX_RUNS) -> None:
        self._ttl_s = ttl_s
        self._max = max_runs
        self._runs: OrderedDict[tuple[str, str], tuple[float, FreshRun]] = OrderedDict()

    def remember(self, org_id: str, run_id: str, session_id: str, queue_seq: int) -> None:
        self._runs[(org_id, run_id)] = (time.monotonic() + self._ttl_s, FreshRun(session_id, queue_seq))
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
