"""Service-side workspaces: a request naming `workspace` ("<tenant>/<name>") gets the files kept
in that directory of the service, and its changes are kept there for the next execution, so a
caller need not send its files each time.

Names are checked by pattern (no separators but the one, no dots), so a workspace is always
`<root>/<tenant>/<name>` and nothing else. The service only ever writes regular files there,
never follows a symlink, and never keeps more than fits in the execution's workdir (the files
are copied into its `disk_mb` tmpfs, and what comes back is what it held). An unused workspace
is removed after `workspace_ttl_s`; `DELETE /workspaces/{tenant}/{name}` removes one at once, and
`DELETE /workspaces/{tenant}` all of a tenant's (its org is being deleted).
Who may name which workspace is the caller's business: the worker's client only sends names
under the run's own org (skills.sandbox.client), and the model never chooses one.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

from skills.sandbox.protocol import MAX_FILES, WORKSPACE_PATTERN, FileChange, check_relative_path

NAME = re.compile(WORKSPACE_PATTERN)
TENANT = re.compile(WORKSPACE_PATTERN.split("/")[0] + "$")


class WorkspaceError(ValueError):
    """A workspace that cannot be used as asked; str(e) says why (the service answers 422)."""


class Workspaces:
    def __init__(self, root: str | None, ttl_s: float) -> None:
        self._configured = Path(root).resolve() if root else None
        self._root: Path | None = None  # made at first use: most services never use a workspace
        self.ttl_s = ttl_s

    @property
    def root(self) -> Path:
        if self._root is None:
            if self._configured is None:
                self._root = Path(tempfile.mkdtemp(prefix="agentos-workspaces-"))
            else:
                self._configured.mkdir(parents=True, exist_ok=True)
                self._root = self._configured
            self._root.chmod(0o700)
        return self._root

    def path(self, name: str) -> Path:
        if not NAME.fullmatch(name):
            raise WorkspaceError(f"workspace {name!r} must be '<tenant>/<name>' of letters, digits, '_' and '-'")
        return self.root / name

    def load(self, name: str, max_bytes: int) -> dict[str, str]:
        """The workspace's regular files, base64 by relative path ({} for a new one)."""
        directory = self.path(name)
        files: dict[str, str] = {}
        total = 0
        for parent, dirnames, filenames in os.walk(directory):  # never descends through a symlink
            dirnames.sort()
            for filename in sorted(filenames):
                path = Path(parent) / filename
                if path.is_symlink() or not path.is_file():
                    continue
                data = path.read_bytes()
                total += len(data)
                if total > max_bytes or len(files) >= MAX_FILES:
                    raise WorkspaceError(
                        f"workspace {name!r} holds more than limits.disk_mb ({max_bytes // 2**20} MiB) or {MAX_FILES} "
                        "files: ask for a larger disk_mb, or remove the workspace (DELETE /workspaces/{name})")
                files[path.relative_to(directory).as_posix()] = base64.b64encode(data).decode()
        return files

    def save(self, name: str, changes: list[FileChange]) -> None:
        """Apply an execution's changes (deletions first, as the code may have replaced a file by a
        directory or the reverse); touches the workspace, which restarts its time to live."""
        directory = self.path(name)
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        for change in sorted(changes, key=lambda c: c.change != "deleted"):
            target = directory / check_relative_path(change.path)
            if _through_symlink(directory, target):
                continue
            if change.change == "deleted":
                if target.is_file():
                    target.unlink()
                continue
            if target.is_dir():
                shutil.rmtree(target)
            for parent in reversed(target.relative_to(directory).parents[:-1]):
                step = directory / parent
                if step.is_file():
                    step.unlink()  # a file the code replaced by a directory
                step.mkdir(exist_ok=True, mode=0o700)
            target.write_bytes(base64.b64decode(change.content or ""))
        _prune_empty_dirs(directory)
        os.utime(directory)

    def delete(self, name: str) -> bool:
        directory = self.path(name)
        if not directory.is_dir():
            return False
        shutil.rmtree(directory)
        return True

    def delete_tenant(self, tenant: str) -> int:
        """Remove every workspace of one tenant (its org is being deleted); how many there were."""
        if not TENANT.fullmatch(tenant):
            raise WorkspaceError(f"tenant {tenant!r} must be letters, digits, '_' and '-'")
        directory = self.root / tenant
        if not directory.is_dir():
            return 0
        count = sum(1 for d in directory.iterdir() if d.is_dir())
        shutil.rmtree(directory)
        return count

    def sweep(self) -> list[str]:
        """Remove the workspaces unused for longer than the time to live; their names."""
        cutoff = time.time() - self.ttl_s
        removed = []
        for tenant in self.root.iterdir():
            for directory in tenant.iterdir() if tenant.is_dir() else ():
                if directory.stat().st_mtime < cutoff:
                    shutil.rmtree(directory, ignore_errors=True)
                    removed.append(f"{tenant.name}/{directory.name}")
            if tenant.is_dir() and not any(tenant.iterdir()):
                tenant.rmdir()
        return removed

    def close(self) -> None:
        """Remove a temporary root (a configured one is kept, with its workspaces)."""
        if self._root is not None and self._configured is None:
            shutil.rmtree(self._root, ignore_errors=True)
            self._root = None


def _through_symlink(directory: Path, target: Path) -> bool:
    """Whether any step from `directory` to `target` is a symlink (none should exist: only this writes here)."""
    step = directory
    for part in target.relative_to(directory).parts:
        step = step / part
        if step.is_symlink():
            return True
    return False


def _prune_empty_dirs(directory: Path) -> None:
    for parent, dirnames, _ in os.walk(directory, topdown=False):
        for dirname in dirnames:
            path = Path(parent) / dirname
            if not path.is_symlink() and not any(path.iterdir()):
                path.rmdir()
