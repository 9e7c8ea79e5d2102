"""`agentos dev` as a user runs it: start, use, Ctrl-C, start again on the same data."""

from __future__ import annotations

import json
import signal
import subprocess
from pathlib import Path

import httpx
import psutil
import pytest

from agentos.stack.process import free_port
from tests.helpers import AGENTOS
from tests.helpers import cli_env as _env
from tests.helpers import wait_ready as _wait_ready


def _start(workdir: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen([*AGENTOS, "dev", "--port", str(port)], cwd=workdir, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _interrupt(proc: subprocess.Popen[str]) -> str:
    """Ctrl-C, then check every process it started is gone."""
    family = psutil.Process(proc.pid).children(recursive=True)
    assert {p.name() for p in family} >= {"postgres", "redis-server"}
    assert any("worker" in p.cmdline() for p in family), "agentos dev runs a worker"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode in (0, 130, -signal.SIGINT), out  # 130: exited "by" Ctrl-C, as shells expect
    gone, alive = psutil.wait_procs(family, timeout=10)
    assert alive == [], f"left behind: {[p.pid for p in alive]}"
    return out


@pytest.mark.timeout(300)
def test_dev_starts_serves_stops_cleanly_and_reuses_its_data(tmp_path):
    port = free_port()
    proc = _start(tmp_path, port)
    try:
        _wait_ready(proc, port)
        key = (tmp_path / ".agentos" / "owner_key").read_text().strip()
        me = httpx.get(f"http://127.0.0.1:{port}/v1/me", headers={"Authorization": f"Bearer {key}"}).json()
        agent = httpx.post(f"http://127.0.0.1:{port}/v1/agents", json={"name": "keeper"},
                           headers={"Authorization": f"Bearer {key}"})
        assert agent.status_code == 201
        # A page on a local dev server (any port) may call it: the preflight passes, unauthenticated.
        preflight = httpx.options(f"http://127.0.0.1:{port}/v1/agents", headers={
            "Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 200, preflight.text
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:5173"
        created = subprocess.run([*AGENTOS, "org", "create", "second org"], cwd=tmp_path, env=_env(),
                                 capture_output=True, text=True, timeout=60)
        assert created.returncode == 0, created.stderr
        new_key = created.stdout.split("owner_api_key: ")[1].strip()
        other = httpx.get(f"http://127.0.0.1:{port}/v1/me", headers={"Authorization": f"Bearer {new_key}"})
        assert other.json()["org_id"] != me["org_id"]
        # The first run a newcomer makes: the default offline agent answers, streamed.
        ran = subprocess.run([*AGENTOS, "run", "assistant", "hello there"], cwd=tmp_path, env=_env(),
                             capture_output=True, text=True, timeout=60)
        assert ran.returncode == 0, ran.stderr
        assert "offline model" in ran.stdout and 'You said: "hello there"' in ran.stdout
        assert "· think" in ran.stderr and "· respond" in ran.stderr
        # A write waits for approval; --yes gives it (stdin is not a terminal here).
        script = 'call: file_manager {"action": "write", "path": "hi.md", "content": "hi"}'
        wrote = subprocess.run([*AGENTOS, "run", "assistant", "--yes", script], cwd=tmp_path, env=_env(),
                               capture_output=True, text=True, timeout=60)
        assert wrote.returncode == 0, wrote.stderr
        assert "needs your approval" in wrote.stderr and "approved" in wrote.stderr
        assert list((tmp_path / ".agentos" / "workspaces").glob("*/*/hi.md")), "the approved write happened"
        failed = subprocess.run([*AGENTOS, "run", "assistant", "fail: on purpose"], cwd=tmp_path, env=_env(),
                                capture_output=True, text=True, timeout=60)
        assert failed.returncode == 1 and "run.failed" in failed.stderr, failed.stderr
    finally:
        out = _interrupt(proc) if proc.poll() is None else ""
    assert "stopped" in out
    assert not (tmp_path / ".agentos" / "stack.json").exists()

    proc = _start(tmp_path, port)
    try:
        _wait_ready(proc, port)
        again = httpx.get(f"http://127.0.0.1:{port}/v1/me", headers={"Authorization": f"Bearer {key}"}).json()
        assert again["org_id"] == me["org_id"]
        agents = httpx.get(f"http://127.0.0.1:{port}/v1/agents", headers={"Authorization": f"Bearer {key}"})
        assert sorted(a["name"] for a in agents.json()["data"]) == ["assistant", "helper", "keeper"]
        assert json.loads((tmp_path / ".agentos" / "dev.json").read_text())["org_id"] == me["org_id"]
    finally:
        out = _interrupt(proc) if proc.poll() is None else ""
    assert "reused" in out


def _serve_until_ready(args: list[str], env: dict[str, str], cwd: Path, port: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([*AGENTOS, *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    _wait_ready(proc, port)
    return proc


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", ["dev", "api"])
def test_given_urls_it_uses_those_servers_and_starts_none(tmp_path, stack, command):
    port = free_port()
    env = _env() | {"AGENTOS_DATABASE_URL": stack.database_url, "AGENTOS_REDIS_URL": stack.redis_url}
    proc = _serve_until_ready([command, "--port", str(port)], env, tmp_path, port)
    try:
        children = {p.name() for p in psutil.Process(proc.pid).children(recursive=True)}
        assert not children & {"postgres", "redis-server"}
        assert not (tmp_path / ".agentos" / "pgdata").exists()
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").json()["checks"] == {"postgres": "ok", "redis": "ok"}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
