"""`make_backend`: the sandbox backend the settings name (not yet checked)."""

from __future__ import annotations

from core.settings import SandboxSettings
from skills.sandbox.backend import Backend


def make_backend(settings: SandboxSettings) -> Backend:
    """The configured backend, not yet checked: `gvisor` (runsc), else `bwrap`."""
    if settings.backend == "gvisor":
        from skills.sandbox.gvisor import GVisorBackend

        return GVisorBackend(settings)
    from skills.sandbox.bwrap import BwrapBackend

    return BwrapBackend(settings)
