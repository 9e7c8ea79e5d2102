"""`agentos dev --workers 2` as a crash rehearsal: SIGKILL the worker that is executing a run;
the supervisor starts a new worker, the watchdog hands the run (whose message died with the
worker) to a live one, the run completes, and Ctrl-C still leaves nothing behind."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import psycopg
import pytest

from agentos.stack.process import free_port
from tests.helpers import AGENTOS
from tests.helpers import cli_env as _env
from tests.helpers import wait_ready as _wait_ready


def _workers(dev: psutil.Process) -> dict[int, psutil.Process]:
    """The run workers `agentos dev` supervises (its direct children running `agentos worker`, but
    the webhook delivery worker)."""
    found = {}
    for child in dev.children():
        try:
            if "worker" in child.cmdline() and "--queues=agentos.webhooks" not in child.cmdline():
                found[child.pid] = child
        except psutil.NoSuchProcess:
            pass
    return found


def _until(check, timeout_s: float, what: str):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.timeout(120)
def test_a_killed_worker_is_restarted_and_its_run_still_completes(tmp_path: Path):
    port = free_port()
    log_path = tmp_path / "dev.out"
    env = _env() | {"AGENTOS_WORKER__LEASE_S": "2", "AGENTOS_WORKER__HEARTBEAT_S": "0.3",
                    "AGENTOS_WORKER__WATCHDOG_INTERVAL_S": "0.3"}
    with open(log_path, "w") as out:
        proc = subprocess.Popen([*AGENTOS, "dev", "--port", str(port), "--workers", "2"], cwd=tmp_path, env=env,
                                stdout=out, stderr=subprocess.STDOUT, text=True)
    dev = psutil.Process(proc.pid)
    family: list[psutil.Process] = []
    try:
        _wait_ready(proc, port)
        output = log_path.read_text()
        assert "2 worker(s), one run at a time each" in output and "watchdog pid" in output, output
        workers = _workers(dev)
        assert len(workers) == 2, workers
        assert any("watchdog" in c.cmdline() for c in dev.children())

        base = f"http://127.0.0.1:{port}"
        headers = {"Authorization": f"Bearer {(tmp_path / '.agentos' / 'owner_key').read_text().strip()}"}
        agents = httpx.get(f"{base}/v1/agents", headers=headers).json()["data"]
        assistant = next(a for a in agents if a["name"] == "assistant")
        session = httpx.post(f"{base}/v1/sessions", json={"agent_id": assistant["id"]}, headers=headers).json()
        run = httpx.post(f"{base}/v1/sessions/{session['id']}/runs", json={"input": "wait: 2"}, headers=headers)
        assert run.status_code == 202, run.text
        run_id = run.json()["id"]

        # Which worker holds it: the lease owner is `<host>:<pid of the prefork child>:<nonce>`.
        database_url = json.loads((tmp_path / ".agentos" / "stack.json").read_text())["database_url"]

        def holder() -> int | None:
            with psycopg.connect(database_url, autocommit=True) as conn:  # the superuser: no RLS
                row = conn.execute("SELECT lease_owner FROM runs WHERE id = %s AND status = 'running'",
                                   (run_id,)).fetchone()
            return int(row[0].split(":")[1]) if row and row[0] else None

        child = psutil.Process(_until(holder, 20, "a worker to claim the run"))
        victim = child.parent()
        assert victim is not None and victim.pid in workers, (victim, workers)
        victim.send_signal(signal.SIGKILL)  # the worker and its message are gone; its child is orphaned

        new = _until(lambda: set(_workers(dev)) - set(workers), 20, "the supervisor to start a new worker")
        assert len(_workers(dev)) == 2
        _until(lambda: not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, 10,
               "the orphaned prefork child to be killed with its group")
        final = httpx.get(f"{base}/v1/runs/{run_id}/wait", params={"timeout": 40}, headers=headers, timeout=45).json()
        assert final["status"] == "succeeded", final
        assert final["attempt"] == 2, "taken over after the watchdog re-sent it"
        output = log_path.read_text()
        assert f"worker {list(workers).index(victim.pid) + 1} (pid {victim.pid}) was killed (SIGKILL)" in output, output
        assert f"restarted: pid {new.pop()}" in output, output
        family = dev.children(recursive=True)
    finally:
        family = family or dev.children(recursive=True)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode in (0, 130, -signal.SIGINT), log_path.read_text()
    _, alive = psutil.wait_procs(family, timeout=10)
    assert alive == [], f"left behind: {[(p.pid, p.name()) for p in alive]}"
    assert "stopped" in log_path.read_text()
