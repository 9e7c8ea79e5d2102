"""Every way a run ends goes through one path (`core.run_signals.run_ended`): its place among the
org's active runs is freed, its cancel flag and per-run scratch state leave Redis, and the
session's next run starts — whether a worker, a cancel or the watchdog ended it."""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from core.tenancy import org_active_runs_key, run_cancel_key, run_scratch_key
from tests.helpers import Org

pytestmark = pytest.mark.usefixtures("worker")

WRITE = 'call: file_manager {"action": "write", "path": "a.txt", "content": "x"}'


def _status(org: Org, run_id: str, wanted: str, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = dict(org.client.get(f"/v1/runs/{run_id}", headers=org.headers).json())
        if run["status"] == wanted:
            return run
        time.sleep(0.05)
    raise AssertionError(f"run {run_id} never reached {wanted}")


def test_cancelling_a_run_that_awaits_approval_leaves_nothing_of_it_in_redis(
    stack: StackUrls, client: TestClient, org: Org
):
    """Regression: the recall scratch state of a run cancelled while awaiting confirmation
    stayed in Redis (only a worker's ending cleared it)."""
    agent = org.create_agent(skills=["file_manager"])
    session = org.create_session(str(agent["id"]))
    first = client.post(f"/v1/sessions/{session['id']}/runs", json={"input": WRITE}, headers=org.headers).json()
    second = client.post(f"/v1/sessions/{session['id']}/runs", json={"input": "after"}, headers=org.headers).json()
    _status(org, first["id"], "awaiting_confirmation")
    r = redis.Redis.from_url(stack.redis_url)
    try:
        assert r.exists(run_scratch_key(org.id, first["id"])), "THINK kept what it recalled for the run"
        assert r.zscore(org_active_runs_key(org.id), first["id"]) is not None

        cancelled = client.post(f"/v1/runs/{first['id']}/cancel", headers=org.headers)
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"

        assert not r.exists(run_scratch_key(org.id, first["id"]))
        assert not r.exists(run_cancel_key(org.id, first["id"]))
        assert r.zscore(org_active_runs_key(org.id), first["id"]) is None
        # ... and the session's next run was started by the same path.
        assert _status(org, second["id"], "succeeded")["status"] == "succeeded"
    finally:
        r.close()
