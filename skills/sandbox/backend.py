"""The one interface every sandbox backend implements, and the choice among them by setting."""

from __future__ import annotations

from typing import Protocol

from core.settings import SandboxLimits, SandboxSettings
from skills.sandbox.protocol import ExecuteRequest, ExecuteResult


class BackendUnavailable(Exception):
    """The backend cannot run here (a binary is missing, wrong privileges); str(e) says what to do."""


class Backend(Protocol):
    name: str

    def check(self) -> None:
        """Raise BackendUnavailable unless executions can run; called once when the service starts."""

    def execute(self, request: ExecuteRequest, limits: SandboxLimits) -> ExecuteResult:
        """Run one request to completion within `limits` (blocking: the service calls it in a thread).
        Nothing the code started may outlive the call."""

    def close(self) -> None:
        """Remove what the backend keeps on the host (its staging directory)."""


def make_backend(settings: SandboxSettings) -> Backend:
    """The configured backend, not yet checked."""
    if settings.backend == "gvisor":
        from skills.sandbox.gvisor import GVisorBackend

        return GVisorBackend(settings)
    from skills.sandbox.bwrap import BwrapBackend

    return BwrapBackend(settings)
