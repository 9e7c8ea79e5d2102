"""A real sandbox service (`agentos sandbox`) as a child process, for the sandbox tests.

It needs bubblewrap and root (each execution drops to uid 65534): missing either fails the
tests loudly with how to fix it, since `.ci/run` installs bubblewrap and CI runs as root."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentos.stack.process import ServerProcess, free_port

SANDBOX_UID = 65534
# Put into the service's environment (and this process's): no probe may ever see it.
CANARY = "agentos-canary-" + secrets.token_hex(8)


def require_bwrap() -> None:
    """The sandbox tests need bubblewrap and root. In CI (`CI` set, as `.ci/run` runs; it installs
    bubblewrap) a missing one fails the test; on a developer's machine it skips with how to fix it,
    so the README's test command works with Python alone."""
    missing = None
    if shutil.which("bwrap") is None:
        missing = "bubblewrap is not installed: `apt-get install -y bubblewrap` (.ci/run installs it)"
    elif os.geteuid() != 0:
        missing = "the sandbox tests must run as root: the service drops each execution to uid 65534"
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(missing)
    pytest.skip(missing)


@dataclass
class Sandbox:
    process: ServerProcess
    url: str
    token: str

    def execute(self, code: str, language: str = "python", timeout: float = 60, **body: Any) -> dict[str, Any]:
        """POST /execute; the JSON result (asserts a 200)."""
        response = self.post({"language": language, "code": code, **body}, timeout=timeout)
        assert response.status_code == 200, response.text
        result: dict[str, Any] = response.json()
        return result

    def post(self, body: dict[str, Any], token: str | None = None, timeout: float = 60) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.token if token is None else token}"}
        return httpx.post(f"{self.url}/execute", json=body, headers=headers, timeout=timeout)


def sandbox_processes() -> list[str]:
    """Processes on the host whose real uid is the sandbox uid, as 'pid cmdline'."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        uid_line = next((line for line in status.splitlines() if line.startswith("Uid:")), "")
        if uid_line.split()[1:2] == [str(SANDBOX_UID)]:
            found.append(f"{entry.name} {cmdline}")
    return found


@contextmanager
def running_sandbox(log_dir: Path, extra_env: dict[str, str] | None = None, **settings: str) -> Iterator[Sandbox]:
    """`agentos sandbox` on a free loopback port with a fresh token; `settings` are extra
    AGENTOS_SANDBOX__* values (e.g. DEFAULTS__WALL_S="2")."""
    require_bwrap()
    port, token = free_port(), secrets.token_urlsafe(24)
    env = {**os.environ, "AGENTOS_SANDBOX__TOKEN": token, "AGENTOS_SANDBOX__HOST": "127.0.0.1",
           "AGENTOS_SANDBOX__PORT": str(port), "AGENTOS_TEST_CANARY": CANARY,
           **{f"AGENTOS_SANDBOX__{k.upper()}": v for k, v in settings.items()}, **(extra_env or {})}
    proc = ServerProcess("sandbox", [sys.executable, "-m", "agentos", "sandbox"], log_dir / "sandbox.log",
                         stop_signal=signal.SIGTERM, env=env, group=True)
    proc.start()
    try:
        proc.wait_until(lambda: "Uvicorn running on" in proc.log_tail(50), timeout_s=60)
        yield Sandbox(proc, f"http://127.0.0.1:{port}", token)
    finally:
        proc.stop()
