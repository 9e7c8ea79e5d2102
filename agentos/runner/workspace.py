"""A run's workspace on the runner: its own git worktree (branch `agentos/<run id>`) in the
configured repository, so parallel runs never touch each other's files; or, without a
repository, a plain directory per run. Git here runs as the runner's user, never in the sandbox."""

from __future__ import annotations

import re
import subprocess
import threading
from pathlib import Path
from typing import Any

RUN_ID = re.compile(r"^run_[0-9a-f]{28}$")
MAX_DIFF_LINES = 200


class WorkspaceError(Exception):
    """A workspace cannot be made or used; str(e) is readable."""


def _git(cwd: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    if check and done.returncode != 0:
        raise WorkspaceError(f"git {' '.join(args[:2])} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


class Workspaces:
    def __init__(self, root: Path, repo: Path | None) -> None:
        self.root = root
        self.repo = repo.resolve() if repo is not None else None
        self._lock = threading.Lock()  # git's worktree bookkeeping is not safe to change concurrently
        if self.repo is not None:
            _git(self.repo, "rev-parse", "--git-dir")  # refuse a path that is not a repository

    def for_run(self, run_id: str) -> Path:
        """The run's workspace directory, created on its first call."""
        if not RUN_ID.match(run_id):
            raise WorkspaceError(f"{run_id!r} is not a run id")
        path = self.root / run_id
        with self._lock:
            if path.is_dir():
                return path
            path.parent.mkdir(parents=True, exist_ok=True)
            if self.repo is None:
                path.mkdir(mode=0o700)
            else:
                base = _git(self.repo, "rev-parse", "HEAD").strip()
                _git(self.repo, "worktree", "add", "-q", "-b", branch(run_id), str(path), base)
                (self.root / f"{run_id}.base").write_text(base)
        return path

    def finish(self, run_id: str, status: str) -> dict[str, Any]:
        """At the run's end: commit what is left (the run id in the message) and summarise the
        branch's diff against where the worktree began. Idempotent: a second call commits nothing."""
        if not RUN_ID.match(run_id):
            raise WorkspaceError(f"{run_id!r} is not a run id")
        path = self.root / run_id
        if self.repo is None or not path.is_dir():
            return {"branch": None, "commit": None, "diff_stat": ""}
        done = self.commit(run_id, f"AgentOS run {run_id} ({status})")
        base_file = self.root / f"{run_id}.base"
        base = base_file.read_text().strip() if base_file.exists() else "HEAD~1"
        stat = _git(path, "diff", "--stat", base, "HEAD").strip().splitlines()[-MAX_DIFF_LINES:]
        return {"branch": branch(run_id), "commit": done["commit"], "diff_stat": "\n".join(stat)}

    def git(self, run_id: str, action: str, message: str | None) -> dict[str, Any]:
        if self.repo is None:
            raise WorkspaceError("This runner has no repository (start it with --repo), so there is no git here.")
        path = self.for_run(run_id)
        if action == "status":
            return {"branch": branch(run_id), "changes": _git(path, "status", "--porcelain").splitlines()}
        if action == "diff":
            _git(path, "add", "-A")
            return {"branch": branch(run_id), "diff_stat": _git(path, "diff", "--cached", "--stat").strip()}
        if action == "commit":
            return self.commit(run_id, message or "agent changes")
        raise WorkspaceError(f"unknown git action {action!r}")

    def commit(self, run_id: str, message: str) -> dict[str, Any]:
        """Commit every change in the run's worktree; the run id is always in the message."""
        path = self.for_run(run_id)
        _git(path, "add", "-A")
        if not _git(path, "status", "--porcelain").strip():
            return {"branch": branch(run_id), "commit": None, "diff_stat": "", "note": "nothing to commit"}
        text = message if run_id in message else f"{message}\n\nAgentOS run: {run_id}"
        _git(path, "-c", "user.name=AgentOS runner", "-c", "user.email=runner@agentos.invalid",
             "commit", "-q", "-m", text)
        stat = _git(path, "show", "--stat", "--format=", "HEAD").strip().splitlines()[:MAX_DIFF_LINES]
        return {"branch": branch(run_id), "commit": _git(path, "rev-parse", "HEAD").strip(),
                "diff_stat": "\n".join(stat)}


def branch(run_id: str) -> str:
    return f"agentos/{run_id}"
