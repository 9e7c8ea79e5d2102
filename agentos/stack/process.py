"""Starting and stopping a server binary as a child process that cannot outlive us."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class StackError(RuntimeError):
    """A server of the local stack could not start; the message is one line naming its log."""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent(sig: int) -> Callable[[], None]:
    """preexec_fn: ask Linux to send `sig` to the child when its parent dies (even by SIGKILL).

    libc is loaded here, in the parent: the forked child then only makes the one `prctl` call.
    Loading it in the child (dlopen takes locks) could deadlock when the parent has threads,
    as `agentos dev`'s worker supervisor does.
    """
    try:
        prctl = ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except OSError:
        return lambda: None

    def apply() -> None:
        prctl(_PR_SET_PDEATHSIG, sig)

    return apply


class ServerProcess:
    """One server binary run in its own process group, logged to a file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, *, stop_signal: int,
                 user: str | None = None, env: dict[str, str] | None = None, group: bool = False) -> None:
        self.name = name
        self.argv = argv
        self.log_path = log_path
        self.stop_signal = stop_signal
        self.user = user
        self.env = env
        # Signal the whole process group on stop (for servers that fork workers of their own).
        self.group = group
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal reaches us, not the servers
                preexec_fn=_die_with_parent(self.stop_signal),
                env=self.env,
                user=self.user,
                group=self.user,
                extra_groups=[] if self.user else None,
            )
        finally:
            log.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_until(self, ready: Callable[[], bool], timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise StackError(f"{self.name} exited while starting; see {self.log_path}")
            if ready():
                return
            time.sleep(0.05)
        self.stop()
        raise StackError(f"{self.name} did not become ready in {timeout_s:.0f}s; see {self.log_path}")

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            if self.group:
                os.killpg(self.proc.pid, self.stop_signal)
            else:
                os.kill(self.proc.pid, self.stop_signal)
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            if self.group:
                os.killpg(self.proc.pid, signal.SIGKILL)
            else:
                self.proc.kill()
            self.proc.wait(5)
        except ProcessLookupError:
            pass


def default_stop_signal(kind: str) -> int:
    # Postgres: SIGINT is "fast shutdown" (roll back clients, checkpoint, exit).
    return signal.SIGINT if kind == "postgres" else signal.SIGTERM
