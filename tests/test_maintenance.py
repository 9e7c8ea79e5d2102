"""The maintenance home (runtime/maintenance.py) against real Postgres and Redis: jobs run on
their own interval, one copy at a time across processes, and a failing job stops no other."""

from __future__ import annotations

import asyncio

from core.infra import Infra
from core.settings import Settings
from runtime.maintenance import MaintenanceClock, MaintenanceJob, lock_key, run_due


def _job(name: str, calls: list[str], *, interval_s: float = 3600.0, fail: bool = False) -> MaintenanceJob:
    async def run(infra: Infra) -> str | None:
        calls.append(name)
        if fail:
            raise RuntimeError("boom")
        return f"{name} did work"

    return MaintenanceJob(name=name, interval_s=lambda _s: interval_s, run=run)


def test_jobs_run_on_their_interval_and_a_failure_stops_no_other(settings: Settings) -> None:
    calls: list[str] = []
    jobs = (_job("broken", calls, fail=True), _job("hourly", calls), _job("always", calls, interval_s=0.0))

    async def go() -> list[list[str]]:
        infra = await Infra.open(settings, name="test-maintenance", pool_min=0, pool_max=3)
        try:
            clock = MaintenanceClock()
            return [await run_due(infra, clock, jobs), await run_due(infra, clock, jobs)]
        finally:
            await infra.close()

    first, second = asyncio.run(go())
    assert first == ["hourly: hourly did work", "always: always did work"]
    assert second == ["always: always did work"]  # the hourly and the broken job wait their interval
    assert calls == ["broken", "hourly", "always", "always"]


def test_a_job_held_by_another_process_is_skipped(settings: Settings) -> None:
    calls: list[str] = []
    job = _job("exclusive", calls, interval_s=0.0)

    async def go() -> tuple[list[str], list[str]]:
        infra = await Infra.open(settings, name="test-maintenance", pool_min=0, pool_max=4)
        try:
            async with infra.pool.connection() as holder:  # another watchdog runs the job now
                await holder.set_autocommit(True)
                await holder.execute("SELECT pg_advisory_lock(%s)", (lock_key(job.name),))
                skipped = await run_due(infra, MaintenanceClock(), (job,))
                await holder.execute("SELECT pg_advisory_unlock(%s)", (lock_key(job.name),))
                await holder.set_autocommit(False)
            return skipped, await run_due(infra, MaintenanceClock(), (job,))
        finally:
            await infra.close()

    skipped, ran = asyncio.run(go())
    assert skipped == []
    assert ran == ["exclusive: exclusive did work"]
    assert calls == ["exclusive"]  # only the second pass, after the lock was released, ran it


def test_disabled_maintenance_runs_nothing(settings: Settings) -> None:
    calls: list[str] = []
    off = settings.model_copy(update={"maintenance": settings.maintenance.model_copy(update={"enabled": False})})

    async def go() -> list[str]:
        infra = await Infra.open(off, name="test-maintenance", pool_min=0, pool_max=2)
        try:
            return await run_due(infra, MaintenanceClock(), (_job("any", calls, interval_s=0.0),))
        finally:
            await infra.close()

    assert asyncio.run(go()) == [] and calls == []
