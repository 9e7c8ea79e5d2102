"""A run whose worker process dies is not left `running`: the broker redelivers it, the new
delivery waits for the dead worker's lease to lapse, takes over and resumes from the last
checkpoint (the durability milestone hardens this further)."""

from __future__ import annotations

import signal

import psutil
import pytest
from starlette.testclient import TestClient

from tests.helpers import Org, Worker, start_run, wait
from tests.sse import read_events


@pytest.mark.timeout(90)
def test_a_killed_worker_process_does_not_lose_the_run(client: TestClient, org: Org, worker: Worker):
    agent = org.create_agent(skills=["file_manager"], confirm="none")
    session = org.create_session(str(agent["id"]))
    script = 'call: file_manager {"action": "write", "path": "once.txt", "content": "1"}\n' \
             "wait: 4\n" \
             'call: file_manager {"action": "list"}'
    run = start_run(org, str(session["id"]), script)
    # queued, started, think, memory.recalled, act, tool.call, tool.result, think: the write has
    # happened and the model now sits in `wait: 4` before its next directive.
    first = read_events(client, f"/v1/runs/{run['id']}/events", org.headers, limit=8)
    assert [e["type"] for e in first][-2:] == ["tool.result", "step.started"], first
    children = psutil.Process(worker.process.pid).children()
    assert children, "the worker runs prefork children"
    for child in children:
        child.send_signal(signal.SIGKILL)

    final = wait(org, run["id"], timeout=60)
    assert final["status"] == "succeeded", final
    assert final["attempt"] == 2
    events = read_events(client, f"/v1/runs/{run['id']}/events", org.headers)
    types = [e["type"] for e in events]
    assert types.count("run.started") == 2
    assert [t for t in types if t.startswith("run.") and t not in ("run.queued", "run.started")] == ["run.succeeded"]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    writes = [e for e in events if e["type"] == "tool.call" and e["data"]["args"]["action"] == "write"]
    assert len(writes) == 1, "resumed from the checkpoint after the write, not from the start"
    assert [e["data"]["args"]["action"] for e in events if e["type"] == "tool.call"] == ["write", "list"]
