"""The gVisor backend against the same contract as bwrap, where runsc is installed (it is not
part of CI: `.ci/run` installs only bubblewrap). Runs the backend in-process."""

from __future__ import annotations

import base64
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from core.settings import SandboxSettings
from skills.sandbox.backend import BackendUnavailable
from skills.sandbox.gvisor import GVisorBackend
from skills.sandbox.protocol import ExecuteRequest, ExecuteResult

pytestmark = pytest.mark.skipif(shutil.which("runsc") is None, reason="runsc (gVisor) is not installed")

DEFAULTS = SandboxSettings().defaults


@pytest.fixture(scope="module")
def gvisor() -> Iterator[GVisorBackend]:
    backend = GVisorBackend(SandboxSettings(backend="gvisor"))
    backend.check()
    yield backend
    backend.close()


def run(backend: GVisorBackend, code: str, language: str = "python", **limits: object) -> ExecuteResult:
    request = ExecuteRequest(language=language, code=code,  # type: ignore[arg-type]
                             files={"in.txt": base64.b64encode(b"given").decode()})
    return backend.execute(request, DEFAULTS.model_copy(update=limits))


def runsc_processes() -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"agentos-gvisor-" in cmdline:
            found.append(cmdline.replace(b"\0", b" ").decode(errors="replace"))
    return found


def test_python_runs_unprivileged_with_the_files_and_returns_changes(gvisor: GVisorBackend) -> None:
    result = run(gvisor, "import os\nprint(os.getuid(), open('in.txt').read())\nopen('out.txt', 'w').write('made')")
    assert (result.exit_code, result.stdout) == (0, "65534 given\n")
    assert [(c.path, c.change, c.size) for c in result.files_changed] == [("out.txt", "created", 4)]


def test_the_result_directory_is_out_of_the_codes_reach(gvisor: GVisorBackend) -> None:
    result = run(gvisor, "touch /out/forged 2>&1; echo $?", "bash")
    assert result.stdout.endswith("1\n") and result.exit_code == 0


def test_network_is_loopback_only_and_host_ports_are_unreachable(gvisor: GVisorBackend) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    try:
        code = ("import socket\nprint(socket.if_nameindex())\ntry:\n"
                f"    socket.create_connection(('127.0.0.1', {port}), 2)\n"
                "except OSError as e:\n    print(type(e).__name__)\n")
        assert run(gvisor, code).stdout == "[(1, 'lo')]\nConnectionRefusedError\n"
    finally:
        listener.close()


def test_the_wall_limit_kills_the_container_and_nothing_is_left(gvisor: GVisorBackend) -> None:
    result = run(gvisor, "import time; time.sleep(60)", wall_s=2)
    assert (result.timed_out, result.killed_by) == (True, "SIGKILL")
    assert runsc_processes() == []


def test_a_missing_runsc_is_one_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BackendUnavailable, match="gVisor not found: apt-get install runsc"):
        GVisorBackend(SandboxSettings(backend="gvisor")).check()
