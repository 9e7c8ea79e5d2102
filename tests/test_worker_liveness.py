"""Issue 20 #1: a worker whose run finished while Redis was down ("Couldn't ack") must go on
consuming once Redis is back, and its liveness probe says whether it consumes."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from agentos.stack.redis import EmbeddedRedis
from agentos.stack.worker import worker_process
from api.app import create_app
from runtime.liveness import Heartbeat, assess, check, read_heartbeat
from tests.helpers import RsaKeys, make_settings, new_org


def _wait_for_status(client: TestClient, run_id: str, headers: dict[str, str], status: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get(f"/v1/runs/{run_id}", headers=headers).json()["status"] == status:
            return
        time.sleep(0.1)
    raise AssertionError(f"run {run_id} not {status} after {timeout_s} s")


@pytest.mark.timeout(180)
def test_worker_consumes_again_after_a_redis_restart_that_broke_an_ack(
        stack: StackUrls, rsa_keys: RsaKeys, tmp_path: Path) -> None:
    redis = EmbeddedRedis(tmp_path, durable=False)
    redis.start()
    settings = make_settings(stack, rsa_keys, redis={"url": redis.url, "socket_timeout_s": 1.0})
    health = tmp_path / "worker.health.json"
    worker = worker_process(tmp_path / "worker.log", database_url=stack.database_url, redis_url=redis.url,
                            workspace_root=tmp_path / "ws", concurrency=1,
                            extra_env={"AGENTOS_ENV": "test", "AGENTOS_WORKER__HEALTH_FILE": str(health),
                                       "AGENTOS_WORKER__PROBE_INTERVAL_S": "0.5",
                                       "AGENTOS_WORKER__STALL_AFTER_S": "3"})
    worker.start()
    try:
        worker.wait_until(lambda: " ready." in worker.log_tail(200), timeout_s=60)
        with TestClient(create_app(settings)) as client:
            org = new_org(client)
            agent = org.create_agent()
            first_session = org.create_session(str(agent["id"]))
            r = client.post(f"/v1/sessions/{first_session['id']}/runs", json={"input": "wait: 4"},
                            headers=org.headers)
            first = r.json()
            _wait_for_status(client, first["id"], org.headers, "running", timeout_s=30)

            # The run finishes while Redis is away: its ack cannot reach the broker.
            time.sleep(0.5)
            redis.stop()
            time.sleep(12)
            redis.start()  # same port, empty
            assert client.get(f"/v1/runs/{first['id']}", headers=org.headers).json()["status"] == "succeeded"
            assert "Couldn't ack" in worker.log_tail(400)

            # A run created now is taken by the same worker.
            second_session = org.create_session(str(agent["id"]))
            r = client.post(f"/v1/sessions/{second_session['id']}/runs", json={"input": "after"},
                            headers=org.headers)
            assert r.status_code == 202, r.text
            final = client.get(f"/v1/runs/{r.json()['id']}/wait?timeout=45", headers=org.headers).json()
            assert final["status"] == "succeeded", final

        time.sleep(1.5)  # a probe round trip after the run
        assert worker.alive() and worker.pid is not None
        verdict = check(health, redis.url, pid=worker.pid)
        assert verdict.healthy, verdict
        heartbeat = read_heartbeat(health)
        assert heartbeat is not None and heartbeat.probe_received_at is not None
        assert heartbeat.probe_received_at > time.time() - 5
    finally:
        worker.stop()
        redis.stop()


def _heartbeat(**fields: object) -> Heartbeat:
    now = time.time()
    base: dict[str, object] = {
        "pid": 1, "hostname": "h", "queue": "q", "written_at": now, "busy": False, "pending": 0,
        "probe_sent_at": now - 1, "probe_received_at": now - 1, "stalled_s": 0.0, "broker_ok": True,
        "reconnects": 0, "stall_after_s": 10.0,
    }
    return Heartbeat(**(base | fields))  # type: ignore[arg-type]


def test_liveness_verdicts() -> None:
    now = time.time()
    assert assess(_heartbeat(), now, broker_reachable=True).healthy
    # Busy with a probe waiting: fine (a probe can only be fetched by a free slot).
    assert assess(_heartbeat(busy=True, pending=3, probe_received_at=now - 300), now, broker_reachable=True).healthy
    stalled = assess(_heartbeat(stalled_s=25.0, reconnects=1), now, broker_reachable=True)
    assert not stalled.healthy and "not consuming" in stalled.reason
    # Still within the reconnect's chance to help.
    assert assess(_heartbeat(stalled_s=15.0, reconnects=1), now, broker_reachable=True).healthy
    frozen = assess(_heartbeat(written_at=now - 120), now, broker_reachable=True)
    assert not frozen.healthy and "event loop stopped" in frozen.reason
    assert not assess(None, now, broker_reachable=True).healthy
    # In Celery's reconnect loop: fine until the broker has answered again for a minute.
    assert assess(_heartbeat(reconnecting=True, stalled_s=99.0), now, broker_reachable=True).healthy
    assert assess(_heartbeat(reconnecting=True, broker_back_at=now - 30), now, broker_reachable=True).healthy
    stuck = assess(_heartbeat(reconnecting=True, broker_back_at=now - 90), now, broker_reachable=True)
    assert not stuck.healthy and "not reconnected" in stuck.reason
    # With the broker away nothing is judged: a restart would not help.
    assert assess(_heartbeat(written_at=now - 120, stalled_s=99.0), now, broker_reachable=False).healthy
    assert assess(None, now, broker_reachable=False).healthy
