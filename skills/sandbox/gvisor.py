"""The gVisor backend: each execution is an OCI bundle run by `runsc --network=none`.

gVisor's Sentry is a user-space kernel, so the code's system calls never reach the host kernel
directly. The container's filesystem mirrors the bwrap backend's (read-only root and /usr, a
size-limited tmpfs /workspace and /tmp, the staged files read-only at /in). Differences:

- The launcher runs as root *inside* gVisor and drops the code to the sandbox uid with
  `setpriv`; it then writes the exit status and the workdir tar to /out, which the code (not
  root) cannot write. runsc passes no extra descriptors, so this replaces bwrap's result pipe.
- Limits: RLIMIT_CPU/AS/NPROC/FSIZE/NOFILE in the OCI spec (inherited through `setpriv`); a
  memory cgroup limit; a *generous* pids cgroup limit (runsc's own threads count against it),
  processes being capped by RLIMIT_NPROC inside.
- The wall-clock kill is `runsc kill`, then the container is deleted (`runsc delete --force`).
- Start-up costs hundreds of milliseconds (bench/sandbox.py), against tens for bwrap.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from core.settings import SandboxLimits, SandboxSettings
from skills.sandbox.backend import BackendUnavailable
from skills.sandbox.execution import (
    CODE_DIR,
    LAUNCHER_PATH,
    SANDBOX_ENV,
    Staging,
    decode_inputs,
    result_of,
    run_launcher,
    stage,
)
from skills.sandbox.protocol import WORKDIR, ExecuteRequest, ExecuteResult, Language

MIB = 2**20
NOFILE = 256
PIDS_CGROUP = 1024  # runsc's own threads count here; RLIMIT_NPROC is the real cap
INSTALL_HINT = ("gVisor not found: apt-get install runsc (or see gvisor.dev), or set "
                "AGENTOS_SANDBOX__BACKEND=bwrap")

# Runs as root inside gVisor. $1: uid, $2: gid; the rest: the command.
LAUNCHER = r"""
uid=$1; gid=$2; shift 2
if [ -d /in ] && ! cp -R /in/. /workspace/ 2>/dev/null; then
  echo "agentos-sandbox: the files do not fit in the workdir (limits.disk_mb)" >&2
fi
chown -R "$uid:$gid" /workspace /tmp
cd /workspace || exit 125
setpriv --reuid="$uid" --regid="$gid" --clear-groups --inh-caps=-all --bounding-set=-all --no-new-privs -- "$@"
rc=$?
printf '%s\n' "$rc" > /out/result
tar -C /workspace -cf - . 2>/dev/null >> /out/result
exit "$rc"
"""


class GVisorBackend:
    name = "gvisor"
    unenforced: frozenset[str] = frozenset()

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self._root: Path | None = None

    @property
    def python(self) -> str:
        return f"{self.settings.venv.rstrip('/')}/bin/python" if self.settings.venv else self.settings.python

    def check(self) -> None:
        if shutil.which("runsc") is None:
            raise BackendUnavailable(INSTALL_HINT)
        if os.geteuid() != 0:
            raise BackendUnavailable("the gvisor backend must start as root (runsc creates the sandbox)")
        smoke = self.execute(ExecuteRequest(language="bash", code="echo ok"), self.settings.defaults)
        if smoke.stdout != "ok\n":
            raise BackendUnavailable(f"a test execution with runsc failed (exit {smoke.exit_code}): "
                                     f"{smoke.stderr.strip()[-500:]}")

    def close(self) -> None:
        if self._root is not None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None

    def _base(self) -> Path:
        if self._root is None or not self._root.is_dir():
            root = Path(tempfile.mkdtemp(prefix="agentos-gvisor-"))
            root.chmod(0o711)
            (root / "state").mkdir(mode=0o700)
            self._root = root
        return self._root

    def execute(self, request: ExecuteRequest, limits: SandboxLimits) -> ExecuteResult:
        inputs = decode_inputs(request)
        base = self._base()
        staging = stage(base, request, inputs, self.settings.uid, self.settings.gid)
        container = f"agentos-{os.getpid()}-{staging.root.name}"
        state = base / "state"
        bundle = staging.root / "bundle"
        out = staging.root / "out"
        try:
            for directory in (bundle / "rootfs", out):
                directory.mkdir(parents=True)
                os.chown(directory, 0, 0)
            out.chmod(0o700)
            for name in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
                link = Path("/") / name
                if link.is_symlink():
                    (bundle / "rootfs" / name).symlink_to(os.readlink(link))
            (bundle / "config.json").write_text(json.dumps(self.spec(staging, out, request.language, limits)))
            argv = ["runsc", f"--root={state}", "--network=none", "run", f"--bundle={bundle}", container]

            def stop() -> None:
                subprocess.run(["runsc", f"--root={state}", "kill", container, "KILL"], capture_output=True,
                               timeout=10, check=False)

            outcome = run_launcher(argv, staging.stdin, limits, on_timeout=stop)
            subprocess.run(["runsc", f"--root={state}", "delete", "--force", container], capture_output=True,
                           timeout=30, check=False)
            result_file = out / "result"
            if not outcome.timed_out and result_file.is_file():
                with result_file.open("rb") as handle:
                    outcome.result.feed(handle.read(outcome.result.limit + 1))
        finally:
            staging.remove()
        return result_of(outcome, inputs, limits)

    def spec(self, staging: Staging, out: Path, language: Language, limits: SandboxLimits) -> dict[str, Any]:
        s = self.settings
        if language == "python":
            command = [self.python, f"{CODE_DIR}/main.py"]
        else:
            command = [LAUNCHER_PATH, f"{CODE_DIR}/main.sh"]
        disk = limits.disk_mb * MIB

        def rlimit(kind: str, value: int) -> dict[str, Any]:
            return {"type": kind, "hard": value, "soft": value}

        mounts: list[dict[str, Any]] = [
            {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]},
            {"destination": "/etc", "type": "bind", "source": str(staging.etc), "options": ["rbind", "ro"]},
            {"destination": "/in", "type": "bind", "source": str(staging.files), "options": ["rbind", "ro"]},
            {"destination": CODE_DIR, "type": "bind", "source": str(staging.code), "options": ["rbind", "ro"]},
            {"destination": "/out", "type": "bind", "source": str(out), "options": ["rbind", "rw"]},
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": WORKDIR, "type": "tmpfs", "source": "tmpfs", "options": [f"size={disk}", "mode=0755"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": [f"size={disk}", "mode=1777"]},
        ]
        if s.venv:
            mounts.append({"destination": s.venv, "type": "bind", "source": s.venv, "options": ["rbind", "ro"]})
        return {
            "ociVersion": "1.0.2",
            "process": {
                "user": {"uid": 0, "gid": 0},
                "args": [LAUNCHER_PATH, "-c", LAUNCHER, "launcher", str(s.uid), str(s.gid), *command],
                "env": [f"{k}={v}" for k, v in SANDBOX_ENV.items()],
                "cwd": "/",
                "noNewPrivileges": True,
                "capabilities": {kind: ["CAP_SETUID", "CAP_SETGID", "CAP_CHOWN", "CAP_SETPCAP", "CAP_DAC_OVERRIDE",
                                        "CAP_FOWNER"]
                                 for kind in ("bounding", "effective", "permitted")},
                "rlimits": [
                    {"type": "RLIMIT_CPU", "soft": limits.cpu_s, "hard": limits.cpu_s + 1},
                    rlimit("RLIMIT_AS", limits.memory_mb * MIB), rlimit("RLIMIT_NPROC", limits.pids),
                    rlimit("RLIMIT_FSIZE", disk), rlimit("RLIMIT_NOFILE", NOFILE), rlimit("RLIMIT_CORE", 0),
                ],
            },
            "root": {"path": "rootfs", "readonly": True},
            "hostname": "sandbox",
            "mounts": mounts,
            "linux": {
                "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
                "resources": {"pids": {"limit": PIDS_CGROUP},
                              "memory": {"limit": limits.memory_mb * MIB + 256 * MIB}},
            },
        }
