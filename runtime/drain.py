"""A worker's graceful shutdown: finish the current runs within a grace period, then release
the ones still going so another worker resumes them at once.

SIGTERM reaches a worker's main process (tini, Kubernetes, Fly and ECS signal the container's
main process); Celery then stops consuming and waits for the runs its prefork children execute.
The children learn of it through `Drain`, a deadline in shared memory made before the fork: the
main process sets it when Celery announces the warm shutdown, and each child's run watcher
(`runtime.executor`) compares it with the clock. A run still executing at the deadline is
stopped and handed back (`core.store.runs.release`, then sent to the queue again): it resumes
on another worker from its last checkpoint, without waiting for its lease to lapse.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from typing import Any

log = logging.getLogger("agentos.worker")


class Drain:
    """When this worker's runs must be released (a wall-clock deadline), shared by the worker's
    main process and its children. Unset (0) until shutdown begins."""

    def __init__(self) -> None:
        # RawValue: a double in anonymous shared memory; one writer (the main process, once), and
        # readers that only compare it with the clock, so no lock is needed.
        self._deadline: Any = multiprocessing.RawValue("d", 0.0)

    def begin(self, grace_s: float) -> None:
        """Shutdown began: runs still executing in `grace_s` seconds are released. A second call
        (another SIGTERM) may only bring the deadline closer."""
        deadline = time.time() + max(grace_s, 0.0)
        current = float(self._deadline.value)
        if current == 0.0 or deadline < current:
            self._deadline.value = deadline

    @property
    def draining(self) -> bool:
        return float(self._deadline.value) > 0.0

    def release_due(self) -> bool:
        """Whether runs still executing must be released now."""
        deadline = float(self._deadline.value)
        return deadline > 0.0 and time.time() >= deadline
