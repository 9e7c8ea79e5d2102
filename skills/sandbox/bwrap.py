"""The bubblewrap backend: each execution is `env -i setpriv ... prlimit ... bwrap ...`.

- `env -i`: the service's environment never reaches the sandbox (bwrap's own process, pid 1
  inside, would otherwise show it in /proc/1/environ).
- `setpriv`: drop to the unprivileged uid/gid with no supplementary groups and no capabilities
  before anything else runs; RLIMIT_NPROC only binds a non-root uid.
- `prlimit`: CPU seconds (SIGXCPU, then SIGKILL a second later), address space, processes,
  file size, open files, no core dumps.
- `bwrap --unshare-all --unshare-user --disable-userns`: new user, pid, net (loopback only),
  ipc, uts and cgroup namespaces, no nested user namespaces; the launcher is the namespace's
  pid 1, so every process dies with it, and `--die-with-parent` kills it if the service dies
  (and, for a death while bwrap starts, before that holds, the launcher's guard pipe:
  `execution.LAUNCHER`); `--new-session` stops TIOCSTI.
- Filesystem: /usr read-only (with the /bin, /lib symlinks of a merged-/usr system), a fresh
  /proc and minimal /dev, size-limited tmpfs at /workspace and /tmp, the staged files
  read-only at /in, the code read-only at /code, a two-line /etc/passwd. Nothing else of the
  host exists inside.
- A seccomp filter (skills/sandbox/seccomp.py) where the architecture has one.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from core.settings import SandboxLimits, SandboxSettings
from skills.sandbox.backend import BackendUnavailable
from skills.sandbox.execution import (
    CODE_DIR,
    LAUNCHER,
    LAUNCHER_PATH,
    SANDBOX_ENV,
    Staging,
    decode_inputs,
    result_of,
    run_launcher,
    stage,
)
from skills.sandbox.protocol import WORKDIR, ExecuteRequest, ExecuteResult, Language
from skills.sandbox.seccomp import filter_program

MIB = 2**20
NOFILE = 256
INSTALL_HINT = "bubblewrap not found: apt-get install bubblewrap, or set AGENTOS_SANDBOX__BACKEND"


class BwrapBackend:
    name = "bwrap"
    unenforced: frozenset[str] = frozenset()

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self._staging_root: Path | None = None
        self._seccomp = filter_program()

    @property
    def python(self) -> str:
        return f"{self.settings.venv.rstrip('/')}/bin/python" if self.settings.venv else self.settings.python

    def check(self) -> None:
        for tool, hint in (("bwrap", INSTALL_HINT), ("setpriv", "setpriv not found: apt-get install util-linux"),
                           ("prlimit", "prlimit not found: apt-get install util-linux"),
                           ("env", "env not found: apt-get install coreutils")):
            if shutil.which(tool) is None:
                raise BackendUnavailable(hint)
        if os.geteuid() != 0:
            raise BackendUnavailable(
                "the bwrap backend must start as root: it drops every execution to "
                f"uid {self.settings.uid} with setpriv (run `agentos sandbox` as root, e.g. in its own container)")
        for path in (self.python, LAUNCHER_PATH):
            if not _world_executable(path):
                raise BackendUnavailable(
                    f"{path} is missing or not executable by uid {self.settings.uid}: set AGENTOS_SANDBOX__PYTHON "
                    "to an interpreter outside /root and home directories (e.g. /usr/bin/python3)")
        smoke = self.execute(ExecuteRequest(language="bash", code="echo ok"), self.settings.defaults)
        if smoke.stdout != "ok\n":
            raise BackendUnavailable(f"a test execution failed (exit {smoke.exit_code}): {smoke.stderr.strip()}"
                                     " — are unprivileged user namespaces enabled (sysctl user.max_user_namespaces)?")

    def close(self) -> None:
        if self._staging_root is not None:
            shutil.rmtree(self._staging_root, ignore_errors=True)
            self._staging_root = None

    def _staging_parent(self) -> Path:
        if self._staging_root is None or not self._staging_root.is_dir():
            root = Path(tempfile.mkdtemp(prefix="agentos-sandbox-"))
            root.chmod(0o711)  # the sandbox uid may pass through to its own 0700 directory, not list
            self._staging_root = root
        return self._staging_root

    def execute(self, request: ExecuteRequest, limits: SandboxLimits) -> ExecuteResult:
        inputs = decode_inputs(request)
        staging = stage(self._staging_parent(), request, inputs, self.settings.uid, self.settings.gid)
        result_r, result_w = os.pipe()
        info_r, info_w = os.pipe()
        guard_r, guard_w = self._guard_pipe()
        seccomp_fd = None
        try:
            extra: list[int] = [guard_r]
            if self._seccomp is not None:
                seccomp_fd = os.memfd_create("agentos-seccomp", 0)
                os.write(seccomp_fd, self._seccomp)
                os.lseek(seccomp_fd, 0, os.SEEK_SET)
                extra.append(seccomp_fd)
            argv = self.argv(staging, request.language, limits, result_w, info_w, seccomp_fd, guard_r)
            outcome = run_launcher(argv, staging.stdin, limits, (result_r, result_w), (info_r, info_w), extra)
        finally:
            for fd in (guard_r, guard_w, *([seccomp_fd] if seccomp_fd is not None else [])):
                os.close(fd)
            staging.remove()
        return result_of(outcome, inputs, limits)

    def _guard_pipe(self) -> tuple[int, int]:
        """The launcher's guard (`execution.LAUNCHER`): this process keeps the write end until the
        sandbox is gone; the sandbox gets the read end only (`pass_fds`)."""
        return os.pipe()

    def argv(self, staging: Staging, language: Language, limits: SandboxLimits, result_fd: int, info_fd: int,
             seccomp_fd: int | None, guard_fd: int) -> list[str]:
        s = self.settings
        cpu = limits.cpu_s
        argv = [
            "env", "-i",
            "setpriv", f"--reuid={s.uid}", f"--regid={s.gid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--",
            "prlimit", f"--cpu={cpu}:{cpu + 1}", f"--as={limits.memory_mb * MIB}", f"--nproc={limits.pids}",
            f"--fsize={limits.disk_mb * MIB}", f"--nofile={NOFILE}", "--core=0", "--",
            "bwrap", "--unshare-all", "--unshare-user", "--disable-userns", "--die-with-parent", "--new-session",
            # The launcher is pid 1 (no bwrap reaper), so this process reaps it and its usage counts
            # every process of the sandbox; when it exits the kernel kills the rest of the namespace.
            "--as-pid-1",
            "--ro-bind", "/usr", "/usr",
        ]
        for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
            link = Path("/") / name
            if link.is_symlink():
                argv += ["--symlink", os.readlink(link), f"/{name}"]
            elif link.is_dir():
                argv += ["--ro-bind", str(link), f"/{name}"]
        argv += [
            "--ro-bind", str(staging.etc), "/etc",
            "--proc", "/proc", "--dev", "/dev",
            "--size", str(limits.disk_mb * MIB), "--tmpfs", WORKDIR,
            "--size", str(limits.disk_mb * MIB), "--tmpfs", "/tmp",
            "--ro-bind", str(staging.files), "/in",
            "--ro-bind", str(staging.code), CODE_DIR,
        ]
        if s.venv:  # after the tmpfs mounts, so a venv under /tmp is not hidden by the sandbox's /tmp
            argv += ["--ro-bind", s.venv, s.venv]
        argv += [
            # bwrap's root and /dev are unbounded tmpfs: /dev/shm gets its own size-limited one,
            # then both are made read-only, leaving /workspace, /tmp and /dev/shm the only writable places.
            "--size", str(limits.disk_mb * MIB), "--tmpfs", "/dev/shm",
            "--remount-ro", "/dev", "--remount-ro", "/",
            "--chdir", WORKDIR, "--hostname", "sandbox",
        ]
        for key, value in SANDBOX_ENV.items():
            argv += ["--setenv", key, value]
        argv += ["--info-fd", str(info_fd)]
        if seccomp_fd is not None:
            argv += ["--seccomp", str(seccomp_fd)]
        if language == "python":
            command = [self.python, f"{CODE_DIR}/main.py"]
        else:
            command = [LAUNCHER_PATH, f"{CODE_DIR}/main.sh"]
        argv += ["--", LAUNCHER_PATH, "-c", LAUNCHER, "launcher", str(result_fd), str(guard_fd), *command]
        return argv


def _world_executable(path: str) -> bool:
    """Whether `path` (followed through symlinks) and every directory above it are open to others."""
    try:
        real = Path(path).resolve(strict=True)
    except OSError:
        return False
    if not os.stat(real).st_mode & stat.S_IXOTH:
        return False
    return all(os.stat(parent).st_mode & stat.S_IXOTH for parent in real.parents)


