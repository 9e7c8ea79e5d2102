"""The `modal` provider: a fresh `modal.Sandbox` (gVisor on Modal's machines) per execution,
through the Modal SDK (the pip extra `agentos[modal]`; credentials are Modal's own:
MODAL_TOKEN_ID / MODAL_TOKEN_SECRET or ~/.modal.toml in the service's environment).

Modal has no offline mode and speaks gRPC, so this module is the narrow adapter between
`HostedBackend` and the few SDK calls it needs (read from modal 1.6.4's source):
`App.lookup(name, create_if_missing=True)`, `Image.debian_slim(python_version=)`,
`Sandbox.create(app=, image=, timeout=, cpu=(c, c), memory=(mb, mb), block_network=True)`,
`sandbox.filesystem.write_bytes(data, path)` / `.read_bytes(path)`,
`sandbox.exec(*argv, timeout=, text=False)` with `.stdout` / `.stderr` iterated as bytes and
`.wait()`, and `sandbox.terminate()`. The contract tests hand it a fake SDK module with these
calls; that Modal's servers behave as the fake does is not verified offline (docs/sandbox.md).
"""

from __future__ import annotations

import importlib
import logging
import math
from types import ModuleType
from typing import Any

from core.settings import ModalSettings, SandboxLimits
from skills.sandbox.backend import BackendUnavailable
from skills.sandbox.execution import Stream
from skills.sandbox.hosted import OVERHEAD_S, HostedError

log = logging.getLogger("agentos.sandbox.modal")
EXTRA_HINT = "the modal backend needs the Modal SDK: pip install 'agentos[modal]'"


def load_sdk() -> ModuleType:
    """The `modal` package, or BackendUnavailable naming the pip extra."""
    try:
        return importlib.import_module("modal")
    except ImportError:
        raise BackendUnavailable(EXTRA_HINT) from None


class ModalProvider:
    name = "modal"
    # The container's disk is Modal's; `ulimit -f` bounds one file only.
    unenforced = frozenset({"disk_mb"})

    def __init__(self, settings: ModalSettings, sdk: ModuleType | None = None) -> None:
        self.settings = settings
        self._sdk = sdk
        self._app: Any = None
        self._image: Any = None

    def ready(self) -> None:
        sdk = self._sdk or load_sdk()
        self._sdk = sdk
        try:
            self._app = sdk.App.lookup(self.settings.app_name, create_if_missing=True)
        except Exception as exc:  # the SDK's errors (auth, connection) have no common base we can name offline
            raise BackendUnavailable(f"Modal refused or could not be reached ({type(exc).__name__}: {exc}); "
                                     "check MODAL_TOKEN_ID / MODAL_TOKEN_SECRET") from None
        self._image = sdk.Image.debian_slim(python_version=self.settings.python_version)

    def open(self, limits: SandboxLimits) -> ModalBox:
        if self._sdk is None or self._app is None:
            self.ready()
        assert self._sdk is not None
        s = self.settings
        try:
            sandbox = self._sdk.Sandbox.create(
                app=self._app, image=self._image, timeout=math.ceil(limits.wall_s + OVERHEAD_S),
                cpu=(s.cpu, s.cpu), memory=(limits.memory_mb, limits.memory_mb), block_network=True)
        except Exception as exc:
            raise HostedError(f"Modal could not create a sandbox ({type(exc).__name__}: {exc})") from None
        return ModalBox(sandbox, s.workdir)


class ModalBox:
    def __init__(self, sandbox: Any, base: str) -> None:
        self._sandbox = sandbox
        self.base = base

    def put(self, path: str, data: bytes) -> None:
        try:
            self._sandbox.filesystem.write_bytes(data, path)
        except Exception as exc:
            raise HostedError(f"Modal sandbox: uploading a file failed ({type(exc).__name__}: {exc})") from None

    def get(self, path: str) -> bytes | None:
        try:
            return bytes(self._sandbox.filesystem.read_bytes(path))
        except Exception as exc:
            if type(exc).__name__ == "SandboxFilesystemNotFoundError":
                return None
            raise HostedError(f"Modal sandbox: downloading a file failed ({type(exc).__name__}: {exc})") from None

    def run(self, argv: list[str], timeout_s: float, stdout: Stream, stderr: Stream) -> int | None:
        try:
            process = self._sandbox.exec(*argv, timeout=math.ceil(timeout_s), text=False)
            for chunk in process.stdout:
                stdout.feed(bytes(chunk))
            for chunk in process.stderr:
                stderr.feed(bytes(chunk))
            return int(process.wait())
        except Exception as exc:
            if "Timeout" in type(exc).__name__:  # ExecTimeoutError, SandboxTimeoutError
                return None
            raise HostedError(f"Modal sandbox: the process failed ({type(exc).__name__}: {exc}); "
                              "the code's result is lost") from None

    def close(self) -> None:
        try:
            self._sandbox.terminate()
        except Exception as exc:
            log.warning("Modal sandbox not terminated (%s); it ends at its timeout", exc)
