"""Issue 20 #7 and the worker health check: `agentos dev`'s supervisor restarts a dead Postgres
or Redis (same port and data directory), gives up loudly (never a half-alive stack) when one
cannot come back, and restarts a process that is alive but reported unhealthy."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest
import redis

from agentos.stack.postgres import EmbeddedPostgres
from agentos.stack.process import ServerProcess, free_port
from agentos.stack.redis import EmbeddedRedis
from agentos.stack.supervisor import Supervisor


def _until(check: Callable[[], object], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _redis_answers(port: int) -> bool:
    try:
        return bool(redis.Redis(port=port, socket_connect_timeout=0.5).ping())
    except redis.RedisError:
        return False


class Reports(list[str]):
    def __call__(self, text: str) -> None:
        self.append(text)

    def any(self, fragment: str) -> bool:
        return any(fragment in line for line in self)


@pytest.mark.timeout(60)
def test_a_killed_redis_is_restarted_on_its_port(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, durable=False)
    server.start()
    reports = Reports()
    supervisor = Supervisor(reports, poll_s=0.05)
    supervisor.watch("Redis", lambda: server.server, server.start)
    supervisor.supervise()
    try:
        assert server.server is not None and server.server.pid is not None
        old = server.server.pid
        os.kill(old, signal.SIGKILL)
        _until(lambda: reports.any("Redis restarted"), 30, "Redis to be restarted")
        assert reports.any(f"Redis (pid {old}) was killed (SIGKILL); restarting it"), reports
        assert server.server.pid != old and _redis_answers(server.port)
        assert supervisor.failed is None
    finally:
        supervisor.stop()
        server.stop()


@pytest.mark.timeout(120)
def test_a_killed_postgres_is_restarted_on_its_port(tmp_path: Path) -> None:
    server = EmbeddedPostgres(tmp_path, durable=False)
    server.start()
    reports = Reports()
    supervisor = Supervisor(reports, poll_s=0.05)
    supervisor.watch("PostgreSQL", lambda: server.server, server.start)
    supervisor.supervise()
    try:
        assert server.server is not None and server.server.pid is not None
        old = server.server.pid
        os.kill(old, signal.SIGKILL)
        _until(lambda: reports.any("PostgreSQL restarted"), 90, "PostgreSQL to be restarted")
        assert reports.any(f"PostgreSQL (pid {old}) was killed (SIGKILL); restarting it"), reports
        with psycopg.connect(server.url(), autocommit=True) as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        assert supervisor.failed is None
    finally:
        supervisor.stop()
        server.stop()


@pytest.mark.timeout(60)
def test_a_service_that_cannot_come_back_stops_everything_with_the_reason(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, durable=False)
    server.start()
    reports = Reports()
    fatal: list[str] = []
    gave_up = threading.Event()

    def on_fatal(reason: str) -> None:
        fatal.append(reason)
        gave_up.set()

    supervisor = Supervisor(reports, poll_s=0.05, backoff_s=0.1, max_service_failures=2, on_fatal=on_fatal)
    supervisor.watch("Redis", lambda: server.server, lambda: server.start(timeout_s=3))
    supervisor.supervise()
    squatter = socket.socket()
    try:
        assert server.server is not None
        # Its port now belongs to someone else (another port, taken first, stands for it, as the
        # supervisor would otherwise win the race for the real one): Redis cannot start again.
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        server.port = squatter.getsockname()[1]
        server.server.stop()
        assert gave_up.wait(40), reports
        assert fatal == ["Redis died and could not be restarted"]
        assert supervisor.failed == fatal[0]
        assert reports.any("Redis could not be restarted")
        assert reports[-1] == "Redis died and could not be restarted; stopping everything"
    finally:
        squatter.close()
        supervisor.stop()
        server.stop()


@pytest.mark.timeout(60)
def test_a_live_process_reported_unhealthy_is_killed_and_restarted(tmp_path: Path) -> None:
    argv = [sys.executable, "-c", "import time; print('idle ready.', flush=True); time.sleep(300)"]
    reports = Reports()
    condemned: set[int] = set()

    def health(pid: int) -> str | None:
        return "not consuming (test)" if not condemned or pid in condemned else None

    supervisor = Supervisor(reports, poll_s=0.05, backoff_s=0.1, health_grace_s=0.2, health_every_s=0.1)
    supervisor.add("worker 1", lambda: ServerProcess("worker", argv, tmp_path / "w.log",
                                                     stop_signal=signal.SIGTERM, group=True),
                   ready_marker=" ready.", health=health)
    supervisor.start()
    try:
        supervisor.wait_ready(30)
        first = supervisor.pids()[0]
        condemned.add(first)
        supervisor.supervise()
        _until(lambda: reports.any("worker 1 restarted"), 30, "the unhealthy worker to be restarted")
        assert reports.any(f"worker 1 (pid {first}) is alive but not consuming (test): killed it"), reports
        second = supervisor.pids()[0]
        assert second != first
        time.sleep(1.0)  # the healthy one is left alone
        assert supervisor.pids() == [second]
        with pytest.raises(ProcessLookupError):
            os.kill(first, 0)
    finally:
        supervisor.stop()


AGENTOS = [sys.executable, "-c", "from agentos.cli import main; main()"]


@pytest.mark.timeout(240)
def test_agentos_dev_brings_back_its_redis_and_postgres_and_runs_go_on(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTOS_")} | {
        "PYTHONUNBUFFERED": "1", "AGENTOS_WORKER__PROBE_INTERVAL_S": "0.5", "AGENTOS_WORKER__STALL_AFTER_S": "3",
        "AGENTOS_WORKER__WATCHDOG_INTERVAL_S": "0.5", "AGENTOS_WORKER__REQUEUE_AFTER_S": "2"}
    out_path = tmp_path / "dev.out"
    with open(out_path, "w") as out:
        proc = subprocess.Popen([*AGENTOS, "dev", "--port", str(port)], cwd=tmp_path, env=env, stdout=out,
                                stderr=subprocess.STDOUT, text=True)
    dev = psutil.Process(proc.pid)
    family: list[psutil.Process] = []
    base = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        assert proc.poll() is None, out_path.read_text()
        try:
            return httpx.get(f"{base}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def child(name: str) -> psutil.Process:
        return next(c for c in dev.children() if c.name().startswith(name))

    def a_run_succeeds(text: str) -> None:
        headers = {"Authorization": f"Bearer {(tmp_path / '.agentos' / 'owner_key').read_text().strip()}"}
        agents = httpx.get(f"{base}/v1/agents", headers=headers).json()["data"]
        assistant = next(a for a in agents if a["name"] == "assistant")
        session = httpx.post(f"{base}/v1/sessions", json={"agent_id": assistant["id"]}, headers=headers).json()
        run = httpx.post(f"{base}/v1/sessions/{session['id']}/runs", json={"input": text}, headers=headers)
        assert run.status_code == 202, run.text
        final = httpx.get(f"{base}/v1/runs/{run.json()['id']}/wait?timeout=60", headers=headers, timeout=70).json()
        assert final["status"] == "succeeded", (final.get("error"), out_path.read_text()[-3000:])

    try:
        _until(ready, 120, "agentos dev to be ready")
        family = dev.children(recursive=True)
        a_run_succeeds("first")

        for name, label in (("redis-server", "Redis"), ("postgres", "PostgreSQL")):
            victim = child(name)
            victim.kill()
            _until(lambda label=label: f"{label} restarted" in out_path.read_text(), 90, f"{label} to come back")
            assert f"{label} (pid {victim.pid}) was killed (SIGKILL); restarting it" in out_path.read_text()
            _until(ready, 60, "the API to be ready again")
            a_run_succeeds(f"after {label}")
        family += dev.children(recursive=True)

        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) in (0, 130, -signal.SIGINT), out_path.read_text()
        time.sleep(0.5)
        assert not [p for p in family if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    finally:
        if proc.poll() is None:
            proc.kill()
        for p in family:
            with contextlib.suppress(psutil.Error):
                p.kill()
