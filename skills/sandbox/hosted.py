"""What the hosted backends (e2b, Modal) share: each execution gets a fresh remote sandbox,
the request is sent as one tar and a bash launcher, and the result comes back as a tar.

A provider (`skills.sandbox.e2b`, `skills.sandbox.modal`) only opens a remote box and moves
bytes and processes (`RemoteBox`); everything else is here, so both map a request to a result
the same way as the local backends (`execution.result_of`). Inside the box the launcher
unpacks the files into `ws/`, drops to uid 65534 if it runs as root, applies the limits it can
with `ulimit` and coreutils' `timeout`, runs the code with an empty environment, and writes
the exit status and a tar of `ws/` to `result`. That result is untrusted, as locally.

A limit a provider cannot enforce is in its `unenforced`; the service refuses a request that
asks for one (422) instead of pretending. CPU time charged to quotas is the wall time: the
box's own report would come from the code's side.
"""

from __future__ import annotations

import io
import logging
import shlex
import tarfile
import time
from typing import Protocol

from core.settings import SandboxLimits
from skills.sandbox.backend import BackendUnavailable
from skills.sandbox.execution import SANDBOX_ENV, Outcome, Stream, decode_inputs, result_of
from skills.sandbox.protocol import ExecuteRequest, ExecuteResult

log = logging.getLogger("agentos.sandbox.hosted")
MIB = 2**20
# What a box may take beyond the wall limit to unpack, pack and answer before it is given up.
OVERHEAD_S = 30.0
TIMED_OUT = b"timeout"

# $1 the staging directory, $2 the wall limit in microseconds; the rest: the limits, the command.
LAUNCHER = r"""
set -u
cd "$1" || exit 125
wall_us=$2 cpu=$3 mem_kb=$4 pids=$5 fsize_kb=$6 wall=$7; shift 7
mkdir -p ws && tar -xf in.tar -C ws 2>/dev/null || echo "agentos-sandbox: the files could not be unpacked" >&2
drop=()
if [ "$(id -u)" = 0 ]; then
  chown -R 65534:65534 ws
  drop=(setpriv --reuid=65534 --regid=65534 --clear-groups --)
fi
start=${EPOCHREALTIME/./}
(
  cd ws || exit 125
  # SIGXCPU at the CPU limit, SIGKILL a second later (as the local backends' prlimit --cpu=N:N+1).
  ulimit -t $((cpu + 1)) -v "$mem_kb" -u "$pids" -f "$fsize_kb" -c 0 && ulimit -S -t "$cpu"
  exec timeout -s KILL "$wall" "${drop[@]}" env -i %(env)s "$@" <../stdin
)
rc=$?
elapsed=$(( ${EPOCHREALTIME/./} - start ))
if [ "$rc" = 137 ] && [ "$elapsed" -ge "$wall_us" ]; then
  printf 'timeout\n' >result
else
  printf '%%s\n' "$rc" >result
  tar -C ws -cf - . 2>/dev/null >>result
fi
"""


class HostedError(Exception):
    """The hosted API failed or refused; str(e) says what, for the caller (the service answers 502)."""


class RemoteBox(Protocol):
    """One fresh remote sandbox; paths are relative to `base` or absolute inside it."""

    base: str

    def put(self, path: str, data: bytes) -> None:
        """Write a file inside the box."""

    def run(self, argv: list[str], timeout_s: float, stdout: Stream, stderr: Stream) -> int | None:
        """Run `argv` to completion, feeding its output to the streams; its exit status, or None
        when it was still running at `timeout_s` (then stopped)."""

    def get(self, path: str) -> bytes | None:
        """A file's content; None if it does not exist."""

    def close(self) -> None:
        """Destroy the box (never raises: a box left behind expires by its own timeout)."""


class Provider(Protocol):
    name: str
    # Limits this provider cannot enforce: a request that sets one is refused (422).
    unenforced: frozenset[str]

    def ready(self) -> None:
        """Raise BackendUnavailable when the provider cannot be used (missing extra, no credentials)."""

    def open(self, limits: SandboxLimits) -> RemoteBox:
        """A fresh box that lives at most the wall limit plus OVERHEAD_S."""


class HostedBackend:
    """The `Backend` over a `Provider`."""

    def __init__(self, provider: Provider) -> None:
        self.provider = provider
        self.name = provider.name
        self.unenforced = provider.unenforced

    def check(self) -> None:
        self.provider.ready()
        try:
            smoke = self.execute(ExecuteRequest(language="bash", code="echo ok"), SandboxLimits())
        except HostedError as exc:
            raise BackendUnavailable(f"a test execution failed: {exc}") from None
        if smoke.stdout != "ok\n":
            raise BackendUnavailable(f"a test execution failed (exit {smoke.exit_code}): {smoke.stderr.strip()}")

    def close(self) -> None:
        pass

    def execute(self, request: ExecuteRequest, limits: SandboxLimits) -> ExecuteResult:
        inputs = decode_inputs(request)
        started = time.monotonic()
        out = Stream(limits.output_bytes, bytearray())
        err = Stream(limits.output_bytes, bytearray())
        box = self.provider.open(limits)
        try:
            for name, data in _bundle(request, inputs).items():
                box.put(f"{box.base}/{name}", data)
            status = box.run(_argv(box.base, request, limits), limits.wall_s + OVERHEAD_S, out, err)
            raw = box.get(f"{box.base}/result") if status is not None else None
        finally:
            box.close()
        duration_ms = int((time.monotonic() - started) * 1000)
        head, _, _ = (raw or b"").partition(b"\n")
        timed_out = status is None or head == TIMED_OUT
        result = Stream(limits.disk_mb * MIB * 2 + MIB, bytearray())
        if raw is not None and not timed_out:
            result.feed(raw)
        # The launcher's own exit status, as a wait status (read only when its result is missing).
        wait_status = status << 8 if status is not None and 0 <= status < 256 else 0
        outcome = Outcome(out, err, result, timed_out, wait_status, cpu_ms=duration_ms, duration_ms=duration_ms)
        return result_of(outcome, inputs, limits)


def _bundle(request: ExecuteRequest, inputs: dict[str, bytes]) -> dict[str, bytes]:
    """The files the box needs: the launcher, the code, stdin and a tar of the request's files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for rel, data in sorted(inputs.items()):
            info = tarfile.TarInfo(rel)
            info.size, info.mode = len(data), 0o644
            archive.addfile(info, io.BytesIO(data))
    env = " ".join(shlex.quote(f"{k}={v}") for k, v in {**SANDBOX_ENV, "HOME": "/tmp"}.items())
    return {"run.sh": (LAUNCHER % {"env": env}).encode(), "code": request.code.encode(),
            "stdin": (request.stdin or "").encode(), "in.tar": buffer.getvalue()}


def _argv(base: str, request: ExecuteRequest, limits: SandboxLimits) -> list[str]:
    interpreter = "python3" if request.language == "python" else "bash"
    wall = f"{limits.wall_s:g}"
    return ["bash", f"{base}/run.sh", base, str(int(limits.wall_s * 1_000_000)), str(limits.cpu_s),
            str(limits.memory_mb * 1024), str(limits.pids), str(limits.disk_mb * 1024), wall,
            interpreter, "../code"]

