"""`Supervisor`: keeps `agentos dev`'s workers (and its watchdog) running.

A thread polls the processes; one that exits or is killed has what is left of its process group
killed (a Celery worker's prefork children would otherwise outlive it) and is started again
after a backoff: `backoff_s`, doubling while it keeps dying within `stable_s` of its start, up
to `max_backoff_s`. Each death and restart is reported (`agentos dev` prints it). `stop()` ends
the thread, then stops every process at once (each with its own stop signal, to its group).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from agentos.stack.process import ServerProcess


@dataclass
class Slot:
    label: str
    make: Callable[[], ServerProcess]
    ready_marker: str
    process: ServerProcess
    started_at: float = 0.0
    log_offset: int = 0
    failures: int = 0
    restart_at: float | None = None
    restarts: int = 0


def _log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _how_it_ended(code: int | None) -> str:
    if code is None:
        return "stopped"
    if code < 0:
        try:
            return f"was killed ({signal.Signals(-code).name})"
        except ValueError:
            return f"was killed (signal {-code})"
    return f"exited with code {code}"


class Supervisor:
    def __init__(self, report: Callable[[str], None], *, poll_s: float = 0.2, backoff_s: float = 1.0,
                 max_backoff_s: float = 30.0, stable_s: float = 60.0) -> None:
        self.report = report
        self.poll_s = poll_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stable_s = stable_s
        self.slots: list[Slot] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, label: str, make: Callable[[], ServerProcess], *, ready_marker: str) -> None:
        """A process to keep running: `make()` builds a fresh (unstarted) one each time; its log
        shows `ready_marker` once it is ready."""
        self.slots.append(Slot(label, make, ready_marker, make()))

    def start(self) -> None:
        """Start every process (not yet supervised: see `wait_ready` and `supervise`)."""
        for slot in self.slots:
            self._launch(slot)

    def wait_ready(self, timeout_s: float) -> None:
        """Until every process logged its ready marker (since it was started); raises if one exits."""
        deadline = time.monotonic() + timeout_s
        for slot in self.slots:
            slot.process.wait_until(self._ready_check(slot), timeout_s=max(deadline - time.monotonic(), 0.1))

    def supervise(self) -> None:
        """From now on, restart any process that dies."""
        self._thread = threading.Thread(target=self._run, name="agentos-supervisor", daemon=True)
        self._thread.start()

    def pids(self, label_prefix: str = "") -> list[int]:
        with self._lock:
            return [s.process.pid for s in self.slots if s.label.startswith(label_prefix) and s.process.pid]

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self._lock:
            stoppers = [threading.Thread(target=slot.process.stop, daemon=True) for slot in self.slots]
            for t in stoppers:
                t.start()
            for t in stoppers:
                t.join(timeout=30)
            for slot in self.slots:
                if slot.process.pid is not None:
                    _kill_group(slot.process.pid)

    def _launch(self, slot: Slot) -> None:
        slot.log_offset = _log_size(slot.process.log_path)
        slot.process.start()
        slot.started_at = time.monotonic()

    def _ready_check(self, slot: Slot) -> Callable[[], bool]:
        return lambda: slot.ready_marker in self._log_since_start(slot)

    def _log_since_start(self, slot: Slot) -> str:
        try:
            with open(slot.process.log_path, "rb") as f:
                f.seek(slot.log_offset)
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def _run(self) -> None:
        # This thread must outlive every process it restarts: they were started with a
        # parent-death signal, which Linux sends when the *thread* that started them ends.
        while not self._stopping.wait(self.poll_s):
            with self._lock:
                if self._stopping.is_set():
                    return
                for slot in self.slots:
                    try:
                        self._check(slot)
                    except Exception as exc:  # keep supervising the others
                        slot.restart_at = time.monotonic() + self.max_backoff_s
                        with suppress(Exception):
                            self.report(f"{slot.label}: supervision failed ({exc}); retrying in "
                                        f"{self.max_backoff_s:.0f} s")

    def _check(self, slot: Slot) -> None:
        now = time.monotonic()
        proc = slot.process
        if proc.alive():
            if slot.failures and now - slot.started_at >= self.stable_s:
                slot.failures = 0
            return
        if slot.restart_at is None:  # just found dead
            code = proc.proc.returncode if proc.proc is not None else None
            if proc.pid is not None:
                _kill_group(proc.pid)
            quick = now - slot.started_at < self.stable_s
            slot.failures = slot.failures + 1 if quick else 1
            delay = min(self.backoff_s * 2 ** (slot.failures - 1), self.max_backoff_s)
            slot.restart_at = now + delay
            self.report(f"{slot.label} (pid {proc.pid}) {_how_it_ended(code)}; restarting in {delay:.0f} s")
            return
        if now < slot.restart_at:
            return
        fresh = slot.make()
        offset = _log_size(fresh.log_path)
        try:
            fresh.start()
        except OSError as exc:
            slot.failures += 1
            delay = min(self.backoff_s * 2 ** (slot.failures - 1), self.max_backoff_s)
            slot.restart_at = now + delay
            self.report(f"{slot.label} could not be restarted ({exc}); trying again in {delay:.0f} s")
            return
        slot.process, slot.log_offset, slot.started_at, slot.restart_at = fresh, offset, now, None
        slot.restarts += 1
        self.report(f"{slot.label} restarted: pid {slot.process.pid} (log {slot.process.log_path})")


def _kill_group(pgid: int) -> None:
    """SIGKILL whatever is left in a dead process's group (it was started in its own session, so
    its group id is its pid; the id cannot be reused while any member lives)."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
