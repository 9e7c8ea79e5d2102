"""`make_backend`: the sandbox backend the settings name (not yet checked)."""

from __future__ import annotations

from core.settings import SandboxSettings
from skills.sandbox.backend import Backend


def make_backend(settings: SandboxSettings) -> Backend:
    """The configured backend, not yet checked: `gvisor` (runsc), `e2b` or `modal` (hosted), else `bwrap`."""
    if settings.backend == "gvisor":
        from skills.sandbox.gvisor import GVisorBackend

        return GVisorBackend(settings)
    if settings.backend == "e2b":
        from skills.sandbox.e2b import E2BProvider
        from skills.sandbox.hosted import HostedBackend

        return HostedBackend(E2BProvider(settings.e2b))
    if settings.backend == "modal":
        from skills.sandbox.hosted import HostedBackend
        from skills.sandbox.modal import ModalProvider

        return HostedBackend(ModalProvider(settings.modal))
    from skills.sandbox.bwrap import BwrapBackend

    return BwrapBackend(settings)
