"""A cancel asked for while a worker is pausing its run for a human's approval is not lost: the
pause refuses, and the run ends as cancelled instead of waiting for a decision nobody needs."""

from __future__ import annotations

import asyncio

from starlette.testclient import TestClient

from core.db import open_pool
from core.settings import Settings
from core.store import runs
from core.tenancy import tenant_tx
from tests.helpers import Org, stored_run


def _claimed_run(org: Org, settings: Settings, owner: str) -> str:
    """A run stored as the API stores it (never sent to a worker), claimed by `owner`."""
    agent = org.create_agent()
    session = org.create_session(str(agent["id"]))

    run_id = stored_run(settings, org.id, str(agent["id"]), str(session["id"]), "hi")

    async def claim() -> None:
        pool = await open_pool(settings.database)
        try:
            async with tenant_tx(pool, org.id) as conn:
                claimed = await runs.claim(conn, run_id, owner, 60, 60)
                assert isinstance(claimed, runs.Claimed)
        finally:
            await pool.close()

    asyncio.run(claim())
    return run_id


def _pause(settings: Settings, org: Org, run_id: str, owner: str) -> runs.Pause:
    async def go() -> runs.Pause:
        pool = await open_pool(settings.database)
        try:
            async with tenant_tx(pool, org.id) as conn:
                return await runs.pause(conn, run_id, owner)
        finally:
            await pool.close()

    return asyncio.run(go())


def test_a_cancel_during_the_pause_wins(org: Org, client: TestClient, settings: Settings):
    run_id = _claimed_run(org, settings, "worker-a")
    assert client.post(f"/v1/runs/{run_id}/cancel", headers=org.headers).status_code == 202  # running: requested
    assert _pause(settings, org, run_id, "worker-a") == runs.Pause.CANCEL_REQUESTED
    assert client.get(f"/v1/runs/{run_id}", headers=org.headers).json()["status"] == "running"  # still the worker's


def test_without_a_cancel_the_run_pauses_and_another_owner_cannot(org: Org, client: TestClient, settings: Settings):
    run_id = _claimed_run(org, settings, "worker-a")
    assert _pause(settings, org, run_id, "worker-b") == runs.Pause.LEASE_LOST
    assert _pause(settings, org, run_id, "worker-a") == runs.Pause.PAUSED
    assert client.get(f"/v1/runs/{run_id}", headers=org.headers).json()["status"] == "awaiting_confirmation"
