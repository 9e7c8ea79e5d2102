"""The `file_manager` skill: list, read and write text files inside the session's workspace.

Every path is resolved (symlinks included) and must stay inside the resolved workspace; anything
else is refused with a SkillError, as are oversized reads and writes and binary files."""

from __future__ import annotations

import asyncio
import os
import posixpath
import tempfile
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

from pydantic import Field

from skills.skill import SkillContext, SkillError, skill

MAX_READ_BYTES = 256 * 1024
MAX_WRITE_BYTES = 1024 * 1024

DESCRIPTION = (
    "Work with files in this session's private workspace. "
    "action='list' lists a directory (each entry's name, type 'file' or 'dir', and size in bytes for files); "
    "action='read' returns the content of a UTF-8 text file (at most 256 KiB); "
    "action='write' creates or replaces a text file with `content` (at most 1 MiB), creating parent directories. "
    "`path` is relative to the session workspace ('.' is its root, the default). "
    "Absolute paths and paths leading outside the workspace are refused."
)


@skill(name="file_manager", description=DESCRIPTION, sensitive=lambda args: args.get("action") == "write")
async def file_manager(
    ctx: SkillContext,
    action: Annotated[Literal["list", "read", "write"], Field(description="What to do with `path`.")],
    path: Annotated[str, Field(description="A path relative to the session workspace.")] = ".",
    content: Annotated[str | None, Field(description="The text to write; required for action='write'.")] = None,
) -> dict[str, Any]:
    if action == "list":
        return await asyncio.to_thread(_list, ctx.workspace, path)
    if action == "read":
        return await asyncio.to_thread(_read, ctx.workspace, path)
    if content is None:
        raise SkillError("action 'write' needs `content`, the text to write.")
    return await asyncio.to_thread(_write, ctx.workspace, path, content)


def workspace_root(workspace: Path) -> Path:
    """The resolved workspace directory, created private (0o700) if it does not exist yet."""
    if not workspace.is_dir():
        workspace.mkdir(mode=0o700, parents=True, exist_ok=True)
        workspace.chmod(0o700)
    return workspace.resolve(strict=True)


def _resolve(workspace: Path, path: str) -> tuple[Path, Path, str]:
    """(workspace root, resolved target, normalised relative path); SkillError if it leaves the workspace."""
    if not path.strip() or "\0" in path:
        raise SkillError(f"{path!r} is not a usable path; give a path relative to the workspace, e.g. 'notes.txt'.")
    if Path(path).is_absolute():
        raise SkillError(f"{path!r} is absolute; paths are relative to the session workspace.")
    root = workspace_root(workspace)
    shown = posixpath.normpath(path)
    target = root
    # One component at a time, so neither a '..' nor a symlink may pass outside even on the way.
    for part in PurePosixPath(path).parts:
        try:
            target = (target / part).resolve()
        except (OSError, RuntimeError):  # a symlink loop
            raise SkillError(f"{shown!r} cannot be resolved (a symlink loop?).") from None
        if not target.is_relative_to(root):
            raise SkillError(f"{shown!r} leads outside the session workspace; only paths inside it are allowed.")
    return root, target, shown


def resolve_in_workspace(workspace: Path, path: str) -> tuple[Path, str]:
    """(resolved target, normalised relative path) of `path` in the workspace; SkillError if it
    leads outside. Other skills that read the session's files use this same confinement."""
    _, target, shown = _resolve(workspace, path)
    return target, shown


def _list(workspace: Path, path: str) -> dict[str, Any]:
    root, target, shown = _resolve(workspace, path)
    if not target.exists():
        raise SkillError(f"{shown!r} does not exist.")
    if not target.is_dir():
        raise SkillError(f"{shown!r} is not a directory; use action 'read' for a file.")
    try:
        with os.scandir(target) as found:
            listed = sorted(found, key=lambda entry: entry.name)
    except OSError as error:
        raise SkillError(f"could not list {shown!r}: {error.strerror}.") from None
    entries: list[dict[str, Any]] = []
    for entry in listed:
        try:
            real = Path(entry.path).resolve()
        except (OSError, RuntimeError):
            continue
        if not real.is_relative_to(root):
            continue  # a symlink out of the workspace: neither followed nor shown
        if real.is_dir():
            entries.append({"name": entry.name, "type": "dir", "size": None})
        elif real.is_file():
            entries.append({"name": entry.name, "type": "file", "size": real.stat().st_size})
    return {"path": shown, "entries": entries}


def _read(workspace: Path, path: str) -> dict[str, Any]:
    _, target, shown = _resolve(workspace, path)
    if not target.exists():
        raise SkillError(f"{shown!r} does not exist.")
    if not target.is_file():
        raise SkillError(f"{shown!r} is not a file; use action 'list' for a directory.")
    try:
        with target.open("rb") as handle:
            data = handle.read(MAX_READ_BYTES + 1)
            size = os.fstat(handle.fileno()).st_size
    except OSError as error:
        raise SkillError(f"could not read {shown!r}: {error.strerror}.") from None
    if len(data) > MAX_READ_BYTES:
        raise SkillError(f"{shown!r} is {max(size, len(data))} bytes; reads are limited to {MAX_READ_BYTES} bytes.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise SkillError(f"{shown!r} is not UTF-8 text (a binary file?); only text files can be read.") from None
    if "\0" in text:
        raise SkillError(f"{shown!r} looks binary (it contains NUL bytes); only text files can be read.")
    return {"path": shown, "content": text}


def _write(workspace: Path, path: str, content: str) -> dict[str, Any]:
    try:
        data = content.encode("utf-8")
    except UnicodeEncodeError:
        raise SkillError("`content` is not valid Unicode text.") from None
    if len(data) > MAX_WRITE_BYTES:
        raise SkillError(f"`content` is {len(data)} bytes; writes are limited to {MAX_WRITE_BYTES} bytes.")
    root, target, shown = _resolve(workspace, path)
    if target == root or target.is_dir():
        raise SkillError(f"{shown!r} is a directory; give a file path to write.")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temp, target)
        except BaseException:
            Path(temp).unlink(missing_ok=True)
            raise
    except OSError as error:
        raise SkillError(f"could not write {shown!r}: {error.strerror or error}.") from None
    return {"path": shown, "bytes": len(data)}
