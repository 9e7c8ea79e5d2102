"""What a runner executes: `shell`, `code_executor`, `file_manager` and `git`, each in the run's
own workspace, under the operator's allowlist and read-only switch.

Commands run in a sandbox: bubblewrap when it is available (the whole filesystem read-only
except the run's workspace and a private /tmp, own PID and IPC namespaces, killed with the
runner), or a plain subprocess in the workspace when the operator allows it
(`--allow-unsandboxed`, with a warning at start). `file_manager` is the platform's own skill
pointed at the workspace, so its path confinement is the same as on the platform.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentos.runner.workspace import WorkspaceError, Workspaces
from skills.builtin.file_manager import file_manager
from skills.skill import SkillContext, SkillError

log = logging.getLogger("agentos.runner")

RUNNER_SKILLS = ("shell", "code_executor", "file_manager", "git")
MAX_OUTPUT = 64 * 1024
DEFAULT_TIMEOUT_S = 120.0


def changes_files(name: str, args: dict[str, Any]) -> bool:
    """Whether a call could change anything: what read-only mode refuses, and what the journal
    forces to disk before running (agentos.runner.journal). `file_manager` list/read and `git`
    status/diff only read (diff stages changes in the index, which running it again redoes)."""
    if name in ("shell", "code_executor"):
        return True
    if name == "file_manager":
        return args.get("action") not in ("list", "read")
    if name == "git":
        return args.get("action") == "commit"
    return True  # anything else is refused before it runs; counted as writing to be safe


class Refused(Exception):
    """A call this runner will not execute (allowlist, read-only, unknown); str(e) is readable."""


@dataclass(frozen=True)
class Sandbox:
    """How commands run: bwrap when `bwrap` is set, else a plain subprocess."""

    bwrap: str | None

    @classmethod
    def choose(cls, mode: str, allow_unsandboxed: bool) -> Sandbox:
        found = shutil.which("bwrap")
        if mode == "bwrap" or (mode == "auto" and found):
            if not found:
                raise SystemExit("bwrap (bubblewrap) is not installed; install it or use --sandbox none "
                                 "--allow-unsandboxed")
            return cls(found)
        if not allow_unsandboxed:
            raise SystemExit("No sandbox: bwrap is not available here. Install bubblewrap, or pass "
                             "--allow-unsandboxed to run commands as plain subprocesses of this user.")
        log.warning("WARNING: commands run UNSANDBOXED, as this user, with this user's access to the machine "
                    "(only their working directory is the run's workspace)")
        return cls(None)

    def argv(self, workspace: Path, command: list[str]) -> list[str]:
        if self.bwrap is None:
            return command
        ws = str(workspace)
        return [self.bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--unshare-ipc",
                "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp",
                "--bind", ws, ws, "--chdir", ws, *command]

    def run(self, workspace: Path, command: list[str], timeout_s: float, stdin: str | None = None) -> dict[str, Any]:
        started = time.monotonic()
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workspace), "LANG": "C.UTF-8"}
        proc = subprocess.Popen(self.argv(workspace, command), cwd=workspace, env=env, text=True,
                                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        timed_out = False
        try:
            out, err = proc.communicate(stdin, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: nothing it started outlives it
            out, err = proc.communicate()
        return {"exit_code": proc.returncode, "stdout": _cut(out), "stderr": _cut(err), "timed_out": timed_out,
                "duration_ms": int((time.monotonic() - started) * 1000)}


def _cut(text: str) -> str:
    return text if len(text) <= MAX_OUTPUT else text[:MAX_OUTPUT] + f"\n…[truncated at {MAX_OUTPUT} characters]\n"


@dataclass
class Executor:
    workspaces: Workspaces
    sandbox: Sandbox
    allowed: frozenset[str] = frozenset(RUNNER_SKILLS)
    read_only: bool = False

    def check(self, name: str, args: dict[str, Any]) -> None:
        if name not in RUNNER_SKILLS:
            raise Refused(f"This runner does not execute {name!r}.")
        if name not in self.allowed:
            raise Refused(f"This runner's operator does not allow {name!r} here (allowed: "
                          f"{', '.join(sorted(self.allowed)) or 'none'}).")
        if self.read_only and changes_files(name, args):
            raise Refused(f"This runner is read-only: its operator allows no {name} call that could change files.")

    async def execute(self, run_id: str, name: str, args: dict[str, Any]) -> dict[str, Any]:
        """`{"output": ...}` or `{"error": "..."}`: a failure the model reads, never an exception."""
        try:
            self.check(name, args)
            workspace = self.workspaces.ready(run_id)
            if workspace is None:  # the run's first call: git makes its worktree, off the event loop
                workspace = await asyncio.to_thread(self.workspaces.for_run, run_id)
            return {"output": await self._execute(run_id, workspace, name, args)}
        except (Refused, SkillError, WorkspaceError) as exc:
            return {"error": str(exc)}
        except Exception as exc:  # a bug here must not kill the runner: report it as the call's failure
            log.exception("call %s (%s) failed", name, run_id)
            return {"error": f"The runner failed to execute {name} ({type(exc).__name__}: {exc})."}

    async def _execute(self, run_id: str, workspace: Path, name: str, args: dict[str, Any]) -> Any:
        timeout = float(args.get("timeout_s") or DEFAULT_TIMEOUT_S)
        if name == "shell":
            return await asyncio.to_thread(self.sandbox.run, workspace, ["bash", "-c", str(args["command"])],
                                           timeout)
        if name == "code_executor":
            language = args.get("language")
            command = ["python3", "-c", str(args["code"])] if language == "python" else ["bash", "-c",
                                                                                       str(args["code"])]
            return await asyncio.to_thread(self.sandbox.run, workspace, command, timeout, args.get("stdin"))
        if name == "file_manager":
            ctx = SkillContext(org_id="", session_id="", run_id=run_id, agent_id="", tool_call_id="",
                               workspace=workspace)
            return await file_manager.invoke(ctx, args)
        if name == "git":
            return await asyncio.to_thread(self.workspaces.git, run_id, str(args.get("action")), args.get("message"))
        raise Refused(f"This runner does not execute {name!r}.")
