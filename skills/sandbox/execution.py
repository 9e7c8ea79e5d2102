"""What every backend does on the host around the sandbox: stage the request's files, run the
launcher, collect its output within the limits, kill it at the wall clock, and report which
files changed.

Inside the sandbox a small bash launcher copies the staged files (read-only at /in) into the
size-limited workdir, runs the code with the result pipe closed, then writes the code's exit
status and a tar of the workdir to the result pipe. Everything the sandbox sends back is
untrusted data: the tar is parsed in memory (regular files only, paths checked), never
extracted on the host.
"""

from __future__ import annotations

import base64
import ctypes
import io
import json
import os
import select
import selectors
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from core.settings import SandboxLimits
from skills.sandbox.protocol import TRUNCATED_MARKER, ExecuteRequest, ExecuteResult, FileChange, check_relative_path

# $1: the result pipe's fd number; the rest: the command. The code never sees the result pipe.
# The launcher, the sandbox's pid 1: `launcher <result fd> <guard fd> <command...>`. The guard is
# the read end of a pipe whose write end only the service holds: it reads end-of-file when the
# service is gone, even if the service died while bwrap was starting, before bwrap's
# `--die-with-parent` took hold in each of its processes (a window of a few milliseconds in which
# a SIGKILLed service left the sandbox running). The watcher then tells this pid 1 to exit (a
# namespace's pid 1 takes only the signals it traps; the trap runs once the command at hand ends)
# and kills every other process of the sandbox, which ends that command: pid 1 exits, and the
# kernel ends the namespace.
LAUNCHER = r"""
exec 3>&"$1"; eval "exec $1>&-"
if [ "$2" != 9 ]; then exec 9<&"$2"; eval "exec $2<&-"; fi
shift 2
trap 'exit 137' USR1
{ trap - USR1; while read -r -u 9 _; do :; done; kill -USR1 1; kill -KILL -1; } 3>&- 2>/dev/null &
exec 9<&-
if [ -d /in ] && ! cp -R /in/. /workspace/ 2>/dev/null; then
  echo "agentos-sandbox: the files do not fit in the workdir (limits.disk_mb)" >&2
fi
cd /workspace || exit 125
"$@" 3>&-
rc=$?
printf '%s\n' "$rc" >&3
tar -C /workspace -cf - . 2>/dev/null >&3
exit "$rc"
"""
LAUNCHER_PATH = "/usr/bin/bash"
_PR_SET_CHILD_SUBREAPER = 36
CODE_DIR = "/code"
# /etc inside the sandbox: just enough for tools that look up their own user.
PASSWD = "root:x:0:0:root:/root:/usr/sbin/nologin\nsandbox:x:{uid}:{gid}:sandbox:/workspace:/usr/bin/bash\n"
GROUP = "root:x:0:\nsandbox:x:{gid}:\n"
SANDBOX_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": "/workspace",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}


@dataclass
class Staging:
    """A per-execution directory on the host, owned by the sandbox uid, mode 0700."""

    root: Path

    @property
    def files(self) -> Path:
        return self.root / "in"

    @property
    def code(self) -> Path:
        return self.root / "code"

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def stdin(self) -> Path:
        return self.root / "stdin"

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def stage(parent: Path, request: ExecuteRequest, inputs: dict[str, bytes], uid: int, gid: int) -> Staging:
    """Write the code, the input files, /etc and stdin into a fresh staging directory."""
    staging = Staging(Path(tempfile.mkdtemp(prefix="x-", dir=parent)))
    for directory in (staging.files, staging.code, staging.etc):
        directory.mkdir()
    script = "main.py" if request.language == "python" else "main.sh"
    (staging.code / script).write_text(request.code, encoding="utf-8")
    (staging.etc / "passwd").write_text(PASSWD.format(uid=uid, gid=gid))
    (staging.etc / "group").write_text(GROUP.format(gid=gid))
    staging.stdin.write_text(request.stdin or "", encoding="utf-8")
    for rel, data in inputs.items():
        target = staging.files / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    for path in (staging.root, *staging.root.rglob("*")):
        os.lchown(path, uid, gid)
    staging.root.chmod(0o700)
    return staging


def decode_inputs(request: ExecuteRequest) -> dict[str, bytes]:
    """The request's files as bytes; ValueError names a file that is not base64."""
    inputs = {}
    for rel, content in request.files.items():
        try:
            inputs[rel] = base64.b64decode(content, validate=True)
        except ValueError:
            raise ValueError(f"files[{rel!r}] is not base64") from None
    return inputs


@dataclass
class Stream:
    limit: int
    data: bytearray
    seen: int = 0

    def feed(self, chunk: bytes) -> None:
        self.seen += len(chunk)
        room = self.limit - len(self.data)
        if room > 0:
            self.data += chunk[:room]


@dataclass
class Outcome:
    stdout: Stream
    stderr: Stream
    result: Stream
    timed_out: bool
    wait_status: int
    cpu_ms: int
    duration_ms: int


def run_launcher(argv: Sequence[str], stdin_path: Path, limits: SandboxLimits, result: tuple[int, int] | None = None,
                 info: tuple[int, int] | None = None, pass_fds: Sequence[int] = (),
                 on_timeout: Callable[[], None] | None = None) -> Outcome:
    """Start `argv` in its own session with an empty environment, collect its streams up to the
    limits (draining the rest so it never blocks), SIGKILL it at the wall limit, and reap it with
    its resource usage (the CPU of every process it reaped, i.e. the sandbox).

    `result` and `info` are pipes (read end, write end): the launcher's result, and bwrap's
    `--info-fd` JSON naming the sandbox's pid 1 on the host, which is killed and waited for too,
    so nothing of the sandbox is alive when this returns. `on_timeout` is called at the wall
    limit before the kill (a backend's own way of stopping its sandbox)."""
    started = time.monotonic()
    deadline = started + limits.wall_s
    write_ends = [pipe[1] for pipe in (result, info) if pipe is not None]
    with open(stdin_path, "rb") as stdin:
        proc = subprocess.Popen(list(argv), stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={},
                                start_new_session=True, pass_fds=(*write_ends, *pass_fds), close_fds=True)
    for fd in write_ends:
        os.close(fd)
    assert proc.stdout is not None and proc.stderr is not None
    out = Stream(limits.output_bytes, bytearray())
    err = Stream(limits.output_bytes, bytearray())
    # The exit status line plus a tar of a full workdir (headers add about 512 bytes a file).
    res = Stream(limits.disk_mb * 2**20 * 2 + 2**20, bytearray())
    sandbox_info = Stream(4096, bytearray())
    streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err}
    if result is not None:
        streams[result[0]] = res
    if info is not None:
        streams[info[0]] = sandbox_info
    timed_out = False
    sandbox_pidfd: int | None = None  # the sandbox's pid 1, once bwrap named it
    with selectors.DefaultSelector() as selector:
        for fd in streams:
            os.set_blocking(fd, False)
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in selector.select(remaining):
                fd = int(key.fd)
                try:
                    chunk = os.read(fd, 1 << 16)
                except BlockingIOError:
                    continue
                if chunk:
                    streams[fd].feed(chunk)
                    if streams[fd] is sandbox_info and sandbox_pidfd is None:
                        # Opened while bwrap still runs (so pid 1 cannot have been reaped yet); from
                        # then on it names that process even if its pid is reused.
                        sandbox_pidfd = _open_pidfd(_sandbox_pid(bytes(sandbox_info.data)))
                else:
                    selector.unregister(fd)
    if timed_out:
        if on_timeout is not None:
            on_timeout()
        _kill_group(proc.pid)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here: keep Popen from waiting again
    # Not the group again: once reaped, its id may already lead another execution's group. The
    # group held only the exec chain env -> setpriv -> prlimit -> bwrap; the sandbox has its own session.
    if sandbox_pidfd is not None:
        _kill_and_wait(sandbox_pidfd)
    proc.stdout.close()
    proc.stderr.close()
    for pipe in (result, info):
        if pipe is not None:
            os.close(pipe[0])
    duration_ms = int((time.monotonic() - started) * 1000)
    cpu_ms = int((usage.ru_utime + usage.ru_stime) * 1000)
    if timed_out:  # the sandbox's own processes were never reaped into this usage: charge the wall time
        cpu_ms = max(cpu_ms, duration_ms)
    return Outcome(out, err, res, timed_out, status, cpu_ms, duration_ms)


def _sandbox_pid(info: bytes) -> int | None:
    try:
        pid = json.loads(info.decode() or "{}").get("child-pid")
    except (ValueError, AttributeError):
        return None
    return pid if isinstance(pid, int) and pid > 1 else None


def become_subreaper() -> None:
    """Adopt orphaned descendants: a sandbox's pid 1 whose bwrap was killed is then reparented
    here and reaped by `_kill_and_wait`, instead of lingering as a zombie of the host's init."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER) failed")


def _open_pidfd(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        return os.pidfd_open(pid)
    except ProcessLookupError:
        return None


def _kill_and_wait(pidfd: int) -> None:
    """SIGKILL the sandbox's pid 1 (the kernel then kills its whole pid namespace) and wait until
    it is gone: reaped here when it was reparented to this (subreaper) process, else watched
    through its pidfd until it exited. Only the pidfd names it: its pid may already belong to
    another process (even another execution's child of this service)."""
    try:
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        select.select([pidfd], [], [], 10.0)
        os.waitid(os.P_PIDFD, pidfd, os.WEXITED)
    except ChildProcessError:
        pass  # not ours to reap (the service is not a subreaper): it has exited, its parent reaps it
    finally:
        os.close(pidfd)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _text(stream: Stream, limit: int) -> tuple[str, bool]:
    text = stream.data.decode("utf-8", errors="replace")
    if stream.seen > len(stream.data):
        return text + TRUNCATED_MARKER.format(limit=limit), True
    return text, False


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _workdir_files(blob: bytes) -> dict[str, bytes] | None:
    """The regular files of the workdir tar; None if the tar is missing or unreadable."""
    if not blob:
        return None
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(blob), mode="r:") as archive:
            for member in archive:
                if not member.isreg():
                    continue  # directories, symlinks, devices: nothing the caller should copy back
                try:
                    rel = check_relative_path(member.name)
                except ValueError:
                    continue
                handle = archive.extractfile(member)
                if handle is not None:
                    files[rel] = handle.read()
    except (tarfile.TarError, EOFError):
        return None
    return files


def result_of(outcome: Outcome, inputs: dict[str, bytes], limits: SandboxLimits) -> ExecuteResult:
    """The API result: streams truncated with a marker, the code's exit status, changed files."""
    stdout, cut_out = _text(outcome.stdout, limits.output_bytes)
    stderr, cut_err = _text(outcome.stderr, limits.output_bytes)
    exit_code: int | None = None
    killed_by: str | None = None
    head, _, tar_blob = bytes(outcome.result.data).partition(b"\n")
    after: dict[str, bytes] | None = None
    if outcome.timed_out:
        killed_by = "SIGKILL"
    elif head.strip().isdigit():
        code = int(head)
        # bash reports a death by signal N as 128+N.
        if 128 < code < 128 + 65:
            killed_by = _signal_name(code - 128)
        else:
            exit_code = code
        after = _workdir_files(tar_blob) if outcome.result.seen <= outcome.result.limit else None
    else:  # the launcher itself died (killed, or the sandbox failed to start)
        code = os.waitstatus_to_exitcode(outcome.wait_status)
        if code < 0:
            killed_by = _signal_name(-code)
        elif code > 128:
            killed_by = _signal_name(code - 128)
        else:
            exit_code = code
    return ExecuteResult(
        exit_code=exit_code, stdout=stdout, stderr=stderr, truncated=cut_out or cut_err,
        timed_out=outcome.timed_out, killed_by=killed_by, duration_ms=outcome.duration_ms,
        cpu_ms=outcome.cpu_ms, files_changed=_changes(inputs, after),
    )


def _changes(before: dict[str, bytes], after: dict[str, bytes] | None) -> list[FileChange]:
    if after is None:  # no trustworthy picture of the workdir (killed): report nothing changed
        return []
    changes = []
    for rel in sorted(after):
        data = after[rel]
        if rel not in before or before[rel] != data:
            changes.append(FileChange(path=rel, change="created" if rel not in before else "modified",
                                      size=len(data), content=base64.b64encode(data).decode()))
    changes.extend(FileChange(path=rel, change="deleted") for rel in sorted(set(before) - set(after)))
    return changes
