"""A session's attached files in its workspace: `files/<name>`, brought in line with what is
attached at the start of each run (`sync_attachments`), so `file_manager`, `code_executor` and
`data_query` read them like any workspace file.

The `files/` directory belongs to the attachments: a file there that is no longer attached (the
file was deleted or detached) is removed, one whose content differs from the stored file is
fetched again. Names come from the server's sanitised file names, and every path is still
confined to the workspace like file_manager's.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from core.file_storage import FileStorage, StoredFileMissing
from core.store.files import AttachmentRow
from skills.builtin.file_manager import workspace_root

DIRECTORY = "files"


def _digest(path: Path) -> str | None:
    if path.is_symlink() or not path.is_file():
        return None
    sha = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sha.update(chunk)
    return sha.hexdigest()


def _prepare(workspace: Path, wanted: dict[str, AttachmentRow]) -> tuple[Path, list[AttachmentRow]]:
    """Make `files/` a real directory holding only attached names; (it, the attachments whose
    content must be fetched)."""
    root = workspace_root(workspace)
    directory = root / DIRECTORY
    if directory.is_symlink() or (directory.exists() and not directory.is_dir()):
        directory.unlink()
    directory.mkdir(mode=0o700, exist_ok=True)
    for entry in directory.iterdir():
        if entry.name not in wanted:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
    stale = [row for name, row in wanted.items() if _digest(directory / name) != row["sha256"]]
    return directory, stale


def _write(directory: Path, name: str, data: bytes) -> None:
    target = directory / name
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".attach-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(tmp, target)  # replaces a symlink itself, never what it points at
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def sync_attachments(storage: FileStorage, rows: list[AttachmentRow], workspace: Path) -> list[str]:
    """Bring `files/` in the session's workspace in line with its attachments `rows` (read by the
    caller, `core.store.files.run_attachments`, in the run's claiming batch); the names fetched.
    A file whose bytes are missing from the storage is left out."""
    if not rows and not (workspace / DIRECTORY).exists():
        return []  # nothing attached, ever: the workspace is not even created
    directory, stale = await asyncio.to_thread(_prepare, workspace, {r["name"]: r for r in rows})
    fetched = []
    for row in stale:
        try:
            data = await storage.get(row["storage_key"])
        except StoredFileMissing:
            continue
        await asyncio.to_thread(_write, directory, row["name"], data)
        fetched.append(row["name"])
    return fetched
