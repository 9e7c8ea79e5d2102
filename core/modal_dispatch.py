"""`AGENTOS_DISPATCH=modal`: each job is one call of a function of the Modal app deployed from
infra/modal/app.py, spawned (not awaited) by whoever enqueues it: the API, a worker starting a
session's next run, the watchdog re-sending a stalled run.

The function runs the same `runtime.executor.execute_run` a Celery worker runs; the run's lease,
checkpoints and events make a duplicate or repeated call harmless, exactly as a redelivered
Celery message is. Modal is an optional dependency (`pip install 'agentos[modal]'`), imported
only here and only in this mode.
"""

from __future__ import annotations

from typing import Any, Protocol

from core.settings import ModalDispatchSettings

# Job name (core.jobs) -> the function's name in infra/modal/app.py.
FUNCTIONS = {"agentos.execute_run": "execute_run", "agentos.ingest_document": "ingest_document"}


class ModalUnavailable(RuntimeError):
    """AGENTOS_DISPATCH=modal without the modal package."""


class Spawnable(Protocol):
    def spawn(self, **kwargs: Any) -> Any: ...


def lookup_function(settings: ModalDispatchSettings, name: str) -> Spawnable:
    """The deployed function `name` (resolved lazily by Modal, on the first spawn)."""
    try:
        import modal
    except ImportError:
        raise ModalUnavailable("AGENTOS_DISPATCH=modal needs the modal package: pip install 'agentos[modal]' "
                               "(and a Modal token: MODAL_TOKEN_ID / MODAL_TOKEN_SECRET)") from None
    function: Spawnable = modal.Function.from_name(settings.app_name, name, environment_name=settings.environment)
    return function


class ModalSender:
    """Spawns Modal function calls for jobs; one lookup per function, made at start-up so a
    missing package is a start-up error, not a failed run."""

    def __init__(self, settings: ModalDispatchSettings) -> None:
        self._functions = {job: lookup_function(settings, name) for job, name in FUNCTIONS.items()}

    def send(self, job_name: str, payload: dict[str, Any]) -> None:
        self._functions[job_name].spawn(**payload)
