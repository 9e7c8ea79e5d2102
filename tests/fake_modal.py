"""A fake of the few Modal SDK calls the `modal` backend makes (skills/sandbox/modal.py), as a
module object handed to `ModalProvider(sdk=...)`: Modal has no offline mode. Signatures follow
modal 1.6.4's source; a "sandbox" runs its processes here, under a directory of this machine
that stands for the sandbox's filesystem root. Every call is recorded for the contract tests.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any


class SandboxFilesystemNotFoundError(Exception):
    pass


class ExecTimeoutError(Exception):
    pass


class AuthError(Exception):
    pass


@dataclass
class Calls:
    created: list[dict[str, Any]] = field(default_factory=list)
    terminated: int = 0
    fail_create: Exception | None = None
    fail_lookup: Exception | None = None


class FakeProcess:
    def __init__(self, done: subprocess.CompletedProcess[bytes]) -> None:
        self.stdout = [done.stdout[i:i + 4096] for i in range(0, len(done.stdout), 4096)]
        self.stderr = [done.stderr[i:i + 4096] for i in range(0, len(done.stderr), 4096)]
        self._code = done.returncode

    def wait(self) -> int:
        return self._code


class FakeFilesystem:
    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, remote: str) -> Path:
        assert remote.startswith("/"), "modal's filesystem API takes absolute paths"
        return self.root / remote.lstrip("/")

    def write_bytes(self, data: bytes, remote_path: str) -> None:
        path = self._path(remote_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    def read_bytes(self, remote_path: str) -> bytes:
        path = self._path(remote_path)
        if not path.is_file():
            raise SandboxFilesystemNotFoundError(remote_path)
        return path.read_bytes()


class FakeSandbox:
    def __init__(self, calls: Calls) -> None:
        self._calls = calls
        self.root = Path(tempfile.mkdtemp(prefix="fake-modal-"))
        self.root.chmod(0o755)
        self.filesystem = FakeFilesystem(self.root)

    def exec(self, *args: str, timeout: int | None = None, text: bool = True) -> FakeProcess:
        assert text is False
        # The sandbox's absolute paths live under self.root here.
        argv = [a.replace("/tmp/agentos", str(self.root / "tmp/agentos")) for a in args]
        try:
            done = subprocess.run(argv, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL,
                                  env={"PATH": "/usr/local/bin:/usr/bin:/bin"})
        except subprocess.TimeoutExpired:
            raise ExecTimeoutError("exec timed out") from None
        return FakeProcess(done)

    def terminate(self) -> None:
        self._calls.terminated += 1
        shutil.rmtree(self.root, ignore_errors=True)


def fake_sdk(calls: Calls) -> Any:
    def lookup(name: str, *, create_if_missing: bool = False) -> Any:
        if calls.fail_lookup is not None:
            raise calls.fail_lookup
        return SimpleNamespace(name=name)

    def create(*args: str, app: Any = None, image: Any = None, timeout: int | None = 300,
               cpu: float | tuple[float, float] | None = None, memory: int | tuple[int, int] | None = None,
               block_network: bool = False) -> FakeSandbox:
        calls.created.append({"app": app.name, "image": image, "timeout": timeout, "cpu": cpu, "memory": memory,
                              "block_network": block_network})
        if calls.fail_create is not None:
            raise calls.fail_create
        return FakeSandbox(calls)

    return SimpleNamespace(
        App=SimpleNamespace(lookup=lookup),
        Image=SimpleNamespace(debian_slim=lambda python_version=None: f"debian_slim:{python_version}"),
        Sandbox=SimpleNamespace(create=create),
    )
