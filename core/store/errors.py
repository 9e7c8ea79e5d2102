"""What the stores refuse, as domain exceptions. They say what is wrong with the data, not how
a caller hears about it: the API maps each to an error code in one table (`api/errors.py`)."""

from __future__ import annotations


class StoreError(Exception):
    """A request the stored data does not allow."""


class SessionBusy(StoreError):
    """A run is already active in the session and the request said not to queue behind it."""

    def __init__(self, active_run_id: str) -> None:
        super().__init__(f"session busy with run {active_run_id}")
        self.active_run_id = active_run_id


class IdempotencyMismatch(StoreError):
    """An idempotency key already used for another request body."""

    def __init__(self, key: str, run_id: str) -> None:
        super().__init__(f"idempotency key {key!r} already used for run {run_id}")
        self.key = key
        self.run_id = run_id
