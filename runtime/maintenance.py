"""Maintenance: slow, periodic housekeeping jobs, run by the watchdog between its sweeps.

The watchdog's sweep (runtime/watchdog.py) moves stalled runs forward every few seconds; the
jobs here are slower and heavier (building vector indexes for growing orgs, enforcing data
retention, creating event-log partitions ahead of time), so each runs on its own interval and
in small batches that never hold a lock live traffic waits on. This module is their one home:
a job is a `MaintenanceJob` in `JOBS`; `run_due` runs those whose interval has passed.

Several watchdogs may run at once (one per region or host); a job must therefore be safe to
run concurrently with itself — each job takes a Postgres advisory lock on its name
(`pg_try_advisory_lock`) so only one copy does the work, and the others skip that turn.
"""

from __future__ import annotations

import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from core import event_partitions, org_purge, retention
from core.infra import Infra
from core.runner_waits import fail_overdue_waits
from core.settings import Settings
from memory import index_maintenance

log = logging.getLogger("agentos.maintenance")

# What a job reports: a short line for the log ("created 2 indexes, dropped 0"), or None when it
# found nothing to do (nothing is logged then).
JobRun = Callable[[Infra], Awaitable[str | None]]


@dataclass(frozen=True)
class MaintenanceJob:
    name: str
    # How often the job runs, read from the settings (so tests and operators can change it).
    interval_s: Callable[[Settings], float]
    run: JobRun


# The registered jobs, in the order they run within one pass. Append new ones here.
JOBS: tuple[MaintenanceJob, ...] = (
    MaintenanceJob("runner_offline_timeouts", lambda s: min(s.runners.offline_timeout_s / 4, 30.0),
                   fail_overdue_waits),
    MaintenanceJob("org_purge", lambda s: s.lifecycle.purge_interval_s, org_purge.purge_job),
    MaintenanceJob("retention", lambda s: s.lifecycle.retention_interval_s, retention.enforce),
    MaintenanceJob("memory-indexes", lambda s: s.memory.index_interval_s, index_maintenance.run_job),
    MaintenanceJob("event-partitions", lambda s: s.lifecycle.event_partitions_interval_s,
                   event_partitions.create_ahead),
)


@dataclass
class MaintenanceClock:
    """When each job last ran in this process (monotonic seconds)."""

    last: dict[str, float] = field(default_factory=dict)

    def due(self, job: MaintenanceJob, settings: Settings, now: float) -> bool:
        last = self.last.get(job.name)
        return last is None or now - last >= job.interval_s(settings)


def lock_key(name: str) -> int:
    """The advisory-lock key of a job: a stable 31-bit hash of its name."""
    return zlib.crc32(f"agentos.maintenance.{name}".encode()) & 0x7FFFFFFF


async def run_job(infra: Infra, job: MaintenanceJob) -> str | None:
    """Run `job` once if no other process is running it (session advisory lock on a dedicated
    connection, released when the job ends); returns its report, or None if skipped/idle."""
    async with infra.pool.connection() as conn:
        await conn.set_autocommit(True)
        try:
            got = await (await conn.execute("SELECT pg_try_advisory_lock(%s) AS locked",
                                            (lock_key(job.name),))).fetchone()
            if not got or not got["locked"]:
                return None
            try:
                return await job.run(infra)
            finally:
                await conn.execute("SELECT pg_advisory_unlock(%s)", (lock_key(job.name),))
        finally:
            await conn.set_autocommit(False)


async def run_due(infra: Infra, clock: MaintenanceClock, jobs: tuple[MaintenanceJob, ...] = JOBS) -> list[str]:
    """Run every job of `jobs` whose interval has passed. A failing job is logged and retried
    at its next interval; it never stops the others (or the watchdog's sweeps)."""
    reports = []
    for job in jobs:
        now = time.monotonic()
        if not infra.settings.maintenance.enabled or not clock.due(job, infra.settings, now):
            continue
        clock.last[job.name] = now
        try:
            report = await run_job(infra, job)
        except Exception:
            log.exception("maintenance job %s failed (retried in %.0f s)", job.name, job.interval_s(infra.settings))
            continue
        if report:
            log.info("maintenance %s: %s", job.name, report)
            reports.append(f"{job.name}: {report}")
    return reports
