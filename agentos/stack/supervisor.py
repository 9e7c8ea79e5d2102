"""`Supervisor`: keeps `agentos dev`'s workers (and its watchdog) running, and its Postgres
and Redis.

A thread polls the processes; one that exits or is killed has what is left of its process group
killed (a Celery worker's prefork children would otherwise outlive it) and is started again
after a backoff: `backoff_s`, doubling while it keeps dying within `stable_s` of its start, up
to `max_backoff_s`. A process with a `health` check (a worker: `runtime/liveness.py`) that says
it is alive but not working is killed and restarted the same way. Each death and restart is
reported (`agentos dev` prints it). `stop()` ends the thread, then stops every process at once
(each with its own stop signal, to its group).

Services (the embedded Postgres and Redis) are watched too: one that dies is started again at
once, on its own port and data. When that fails `max_service_failures` times in a row (or it
keeps dying within `stable_s`), the supervisor gives up: it reports why and calls `on_fatal`,
which `agentos dev` answers by stopping everything — never a half-alive stack.
"""

from __future__ import annotations

import os
import signal
import subprocess
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
    # Called with the process's pid once it is ready: None when healthy, else why it is not.
    health: Callable[[int], str | None] | None = None
    ready_at: float | None = None
    next_health_at: float = 0.0
    unhealthy: str | None = None  # why we killed it


@dataclass
class Service:
    """A server the stack cannot do without: `current()` is its process now, `restart()` starts
    a fresh one and returns once it is ready (raising if it cannot)."""

    label: str
    current: Callable[[], ServerProcess | None]
    restart: Callable[[], None]
    started_at: float = 0.0
    failures: int = 0
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
                 max_backoff_s: float = 30.0, stable_s: float = 60.0, health_grace_s: float = 20.0,
                 health_every_s: float = 1.0, max_service_failures: int = 3,
                 on_fatal: Callable[[str], None] | None = None) -> None:
        self.report = report
        self.poll_s = poll_s
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.stable_s = stable_s
        self.health_grace_s = health_grace_s
        self.health_every_s = health_every_s
        self.max_service_failures = max_service_failures
        self.on_fatal = on_fatal
        self.failed: str | None = None  # why the supervisor gave up, if it did
        self.slots: list[Slot] = []
        self.services: list[Service] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, label: str, make: Callable[[], ServerProcess], *, ready_marker: str,
            health: Callable[[int], str | None] | None = None) -> None:
        """A process to keep running: `make()` builds a fresh (unstarted) one each time; its log
        shows `ready_marker` once it is ready; `health(pid)`, asked every `health_every_s` from
        `health_grace_s` after that, returns why a live process should be restarted (or None)."""
        self.slots.append(Slot(label, make, ready_marker, make(), health=health))

    def watch(self, label: str, current: Callable[[], ServerProcess | None], restart: Callable[[], None]) -> None:
        """A running service to restart if it dies (see the module doc)."""
        self.services.append(Service(label, current, restart, started_at=time.monotonic()))

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
        slot.ready_at = None

    def _keep_service(self, service: Service) -> bool:
        """Restart `service` if it died; False once it cannot be brought back."""
        proc = service.current()
        now = time.monotonic()
        if proc is not None and proc.alive():
            if service.failures and now - service.started_at >= self.stable_s:
                service.failures = 0
            return True
        code = proc.proc.returncode if proc is not None and proc.proc is not None else None
        pid = proc.pid if proc is not None else None
        service.failures = service.failures + 1 if now - service.started_at < self.stable_s else 1
        self.report(f"{service.label} (pid {pid}) {_how_it_ended(code)}; restarting it")
        while service.failures <= self.max_service_failures:
            try:
                service.restart()
            except Exception as exc:
                service.failures += 1
                delay = min(self.backoff_s * 2 ** (service.failures - 1), self.max_backoff_s)
                self.report(f"{service.label} could not be restarted ({_first_line(exc)})")
                if self._stopping.wait(delay):
                    return True
                continue
            service.started_at = time.monotonic()
            service.restarts += 1
            current = service.current()
            self.report(f"{service.label} restarted: pid {current.pid if current else '?'}")
            return True
        return False

    def _give_up(self, reason: str) -> None:
        self.failed = reason
        with suppress(Exception):
            self.report(f"{reason}; stopping everything")
        if self.on_fatal is not None:
            self.on_fatal(reason)

    def _judge(self, slot: Slot, now: float) -> str | None:
        """Why a live process should be restarted, per its health check (None: leave it)."""
        if slot.health is None or slot.process.pid is None:
            return None
        if slot.ready_at is None:
            if slot.ready_marker not in self._log_since_start(slot):
                return None
            slot.ready_at = now
        if now - slot.ready_at < self.health_grace_s or now < slot.next_health_at:
            return None
        slot.next_health_at = now + self.health_every_s
        return slot.health(slot.process.pid)

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
                for service in self.services:
                    if not self._keep_service(service):
                        self._give_up(f"{service.label} died and could not be restarted")
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
            reason = self._judge(slot, now)
            if reason is None:
                if slot.failures and now - slot.started_at >= self.stable_s:
                    slot.failures = 0
                return
            # Alive but not working (a worker that stopped consuming): not to be trusted.
            slot.unhealthy = reason
            if proc.pid is not None:
                _kill_group(proc.pid)
            if proc.proc is not None:
                with suppress(subprocess.TimeoutExpired):
                    proc.proc.wait(5)
        if slot.restart_at is None:  # just found dead
            code = proc.proc.returncode if proc.proc is not None else None
            if proc.pid is not None:
                _kill_group(proc.pid)
            quick = now - slot.started_at < self.stable_s
            slot.failures = slot.failures + 1 if quick else 1
            delay = min(self.backoff_s * 2 ** (slot.failures - 1), self.max_backoff_s)
            slot.restart_at = now + delay
            how = f"is alive but {slot.unhealthy}: killed it" if slot.unhealthy else _how_it_ended(code)
            slot.unhealthy = None
            self.report(f"{slot.label} (pid {proc.pid}) {how}; restarting in {delay:.0f} s")
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
        slot.ready_at = None
        slot.restarts += 1
        self.report(f"{slot.label} restarted: pid {slot.process.pid} (log {slot.process.log_path})")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _kill_group(pgid: int) -> None:
    """SIGKILL whatever is left in a dead process's group (it was started in its own session, so
    its group id is its pid; the id cannot be reused while any member lives)."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
