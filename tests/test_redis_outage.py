"""Redis down: reads still work, a new run is stored and deferred (never half-written), and
once Redis is back the watchdog sends it and it runs to the end, every event intact."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from agentos.stack.redis import EmbeddedRedis
from agentos.stack.worker import worker_process
from api.app import create_app
from runtime.watchdog import sweep_once
from tests.helpers import RsaKeys, make_settings, new_org
from tests.sse import read_events


@pytest.mark.timeout(180)
def test_runs_survive_a_redis_outage(stack: StackUrls, rsa_keys: RsaKeys, tmp_path: Path):
    redis = EmbeddedRedis(tmp_path, durable=False)
    redis.start()
    settings = make_settings(stack, rsa_keys, redis={"url": redis.url, "socket_timeout_s": 1.0},
                             worker={"requeue_after_s": 0.5})
    worker = worker_process(tmp_path / "worker.log", database_url=stack.database_url, redis_url=redis.url,
                            workspace_root=tmp_path / "ws", concurrency=1, extra_env={"AGENTOS_ENV": "test"})
    worker.start()
    try:
        worker.wait_until(lambda: " ready." in worker.log_tail(200), timeout_s=60)
        with TestClient(create_app(settings)) as client:
            org = new_org(client)
            agent = org.create_agent()
            session = org.create_session(str(agent["id"]))
            url = f"/v1/sessions/{session['id']}/runs"
            first = client.post(url, json={"input": "before"}, headers=org.headers).json()
            done = client.get(f"/v1/runs/{first['id']}/wait?timeout=30", headers=org.headers).json()
            assert done["status"] == "succeeded"

            redis.stop()
            # Reads need only Postgres.
            assert client.get(f"/v1/runs/{first['id']}", headers=org.headers).status_code == 200
            assert client.get(f"/v1/sessions/{session['id']}/messages", headers=org.headers).status_code == 200
            # A create is stored whole and deferred: message, queued run, run.queued.
            r = client.post(url, json={"input": "during"}, headers=org.headers)
            assert r.status_code == 202, r.text
            assert r.headers["AgentOS-Deferred"] == "broker-unavailable"
            deferred = r.json()
            assert client.get(f"/v1/runs/{deferred['id']}", headers=org.headers).json()["status"] == "queued"
            messages = client.get(f"/v1/sessions/{session['id']}/messages", headers=org.headers).json()["data"]
            assert [m["content"] for m in messages if m["role"] == "user"] == ["before", "during"]
            # A create that asks for its stream gets it at once, run.queued first: it was stored
            # whole, and the watchdog sends it as it sends the other (no AgentOS-Deferred, which
            # would hold the stream back until the send was tried).
            other = org.create_session(str(agent["id"]))
            answered: dict[str, str] = {}
            [queued] = read_events(client, f"/v1/sessions/{other['id']}/runs", org.headers, method="POST",
                                   json={"input": "streamed"}, status=202, limit=1, response_headers=answered)
            assert queued["type"] == "run.queued" and "agentos-deferred" not in answered
            streamed_id = queued["run_id"]
            assert client.get(f"/v1/runs/{streamed_id}", headers=org.headers).json()["status"] == "queued"

            redis.start()  # same port, empty: the stream and the queue are gone
            time.sleep(0.6)
            report = asyncio.run(sweep_once(settings))
            assert deferred["id"] in report.resent and streamed_id in report.resent
            final = client.get(f"/v1/runs/{deferred['id']}/wait?timeout=60", headers=org.headers).json()
            assert final["status"] == "succeeded", final
            streamed = client.get(f"/v1/runs/{streamed_id}/wait?timeout=60", headers=org.headers).json()
            assert streamed["status"] == "succeeded", streamed
            events = read_events(client, f"/v1/runs/{deferred['id']}/events", org.headers)
            types = [e["type"] for e in events]
            assert types[0] == "run.queued" and types[-1] == "run.succeeded"
            seqs = [e["seq"] for e in events]
            assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    finally:
        worker.stop()
        redis.stop()
