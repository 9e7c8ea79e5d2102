"""The one interface every sandbox backend implements (`skills.sandbox.choose` picks one by setting)."""

from __future__ import annotations

from typing import Protocol

from core.settings import SandboxLimits
from skills.sandbox.protocol import ExecuteRequest, ExecuteResult


class BackendUnavailable(Exception):
    """The backend cannot run here (a binary is missing, wrong privileges); str(e) says what to do."""


class Backend(Protocol):
    name: str
    # Limits this backend cannot enforce: the service refuses (422) a request that sets one.
    unenforced: frozenset[str]

    def check(self) -> None:
        """Raise BackendUnavailable unless executions can run; called once when the service starts."""

    def execute(self, request: ExecuteRequest, limits: SandboxLimits) -> ExecuteResult:
        """Run one request to completion within `limits` (blocking: the service calls it in a thread).
        Nothing the code started may outlive the call."""

    def close(self) -> None:
        """Remove what the backend keeps on the host (its staging directory)."""

