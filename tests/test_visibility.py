"""A run that outlives the broker's visibility timeout executes exactly once: the broker hands
its message out again, but the new delivery finds the run's live lease and stands aside."""

from __future__ import annotations

from pathlib import Path

import pytest
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from agentos.stack.worker import worker_process
from tests.helpers import Org, Worker, start_run, wait
from tests.sse import read_events


@pytest.mark.timeout(120)
def test_a_run_longer_than_the_visibility_timeout_runs_once(
    client: TestClient, org: Org, worker: Worker, stack: StackUrls, tmp_path: Path
):
    # A second worker whose broker view re-delivers anything unacknowledged for over 1 s.
    eager = worker_process(
        tmp_path / "eager.log", database_url=stack.database_url, redis_url=stack.redis_url,
        workspace_root=worker.workspace_root, concurrency=1,
        extra_env={"AGENTOS_ENV": "test", "AGENTOS_WORKER__VISIBILITY_TIMEOUT_S": "1",
                   "AGENTOS_WORKER__LEASE_S": "3", "AGENTOS_WORKER__HEARTBEAT_S": "0.5"},
    )
    eager.start()
    try:
        eager.wait_until(lambda: " ready." in eager.log_tail(200), timeout_s=60)
        agent = org.create_agent(skills=["file_manager"], confirm="none")
        session = org.create_session(str(agent["id"]))
        run = start_run(org, str(session["id"]),
                        'call: file_manager {"action": "write", "path": "once.txt", "content": "1"}\nwait: 6')
        final = wait(org, run["id"], timeout=60)
        logs = eager.log_tail(2000) + worker.process.log_tail(4000)
    finally:
        eager.stop()
    assert final["status"] == "succeeded", final
    assert final["attempt"] == 1
    events = read_events(client, f"/v1/runs/{run['id']}/events", org.headers)
    types = [e["type"] for e in events]
    assert types.count("run.started") == 1 and types.count("tool.call") == 1
    redelivered = f"run {run['id']}: held by another worker's lease"
    assert redelivered in logs, "the broker did re-deliver the message while the run was executing"
