"""A run's workspace on the runner: its own git worktree (branch `agentos/<run id>`) in the
configured repository, so parallel runs never touch each other's files; or, without a
repository, a plain directory per run. Git here runs as the runner's user, never in the sandbox.

When the run ends, what is left is committed on its branch and the run is marked ended
(`<run id>.ended`, holding when and the report sent to the platform). After a grace the worktree
directory is removed (`remove`): the branch and its commits stay in the repository, which is what
one reviews. A plain directory (no repository) is the run's only copy of its files: never removed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
import time
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

    def ready(self, run_id: str) -> Path | None:
        """The run's workspace if it exists already: a stat, cheap enough for the event loop
        (each call would otherwise pay a hop to a thread)."""
        path = self.root / run_id
        return path if RUN_ID.match(run_id) and path.is_dir() else None

    def for_run(self, run_id: str) -> Path:
        """The run's workspace directory, created on its first call."""
        if not RUN_ID.match(run_id):
            raise WorkspaceError(f"{run_id!r} is not a run id")
        path = self.root / run_id
        with self._lock:
            if path.is_dir():
                return path
            if self._ended(run_id).exists():
                raise WorkspaceError(f"The run {run_id} has ended; its workspace was removed (its branch stays).")
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
        path, marker = self.root / run_id, self._ended(run_id)
        if marker.exists():  # finished before (the platform asks until it has the report)
            return dict(json.loads(marker.read_text())["report"])
        if self.repo is None or not path.is_dir():
            return {"branch": None, "commit": None, "diff_stat": ""}
        done = self.commit(run_id, f"AgentOS run {run_id} ({status})")
        base_file = self.root / f"{run_id}.base"
        base = base_file.read_text().strip() if base_file.exists() else "HEAD~1"
        stat = _git(path, "diff", "--stat", base, "HEAD").strip().splitlines()[-MAX_DIFF_LINES:]
        report = {"branch": branch(run_id), "commit": done["commit"], "diff_stat": "\n".join(stat)}
        marker.write_text(json.dumps({"ended_at": time.time(), "report": report}))
        return report

    def ended_worktrees(self) -> dict[str, float]:
        """Run id -> when it ended, for every ended run whose worktree is still there."""
        found: dict[str, float] = {}
        for marker in self.root.glob("*.ended") if self.root.is_dir() else ():
            run_id = marker.name.removesuffix(".ended")
            if RUN_ID.match(run_id) and (self.root / run_id).is_dir():
                try:
                    found[run_id] = float(json.loads(marker.read_text())["ended_at"])
                except (OSError, ValueError, KeyError, TypeError):
                    continue  # unreadable: left alone
        return found

    def remove(self, run_id: str) -> bool:
        """Remove an ended run's worktree directory (its branch and commits stay in the repository);
        False when there is nothing to remove (or the run has not ended)."""
        if self.repo is None or not RUN_ID.match(run_id) or not self._ended(run_id).exists():
            return False
        path = self.root / run_id
        with self._lock:
            if not path.is_dir():
                return False
            # --force: everything was committed when the run ended; what is left is ignored files.
            _git(self.repo, "worktree", "remove", "--force", str(path), check=False)
            if path.is_dir():  # not (or no longer) a worktree git knows: by hand, then git forgets it
                shutil.rmtree(path, ignore_errors=True)
                _git(self.repo, "worktree", "prune", check=False)
            (self.root / f"{run_id}.base").unlink(missing_ok=True)
        return True

    def _ended(self, run_id: str) -> Path:
        return self.root / f"{run_id}.ended"

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
