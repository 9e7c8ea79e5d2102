"""The `code_executor` skill: run Python or bash in the sandbox service, in a copy of the
session's workspace.

The workspace's regular files are sent with the request; the files the code created, changed
or deleted are applied back to the workspace (each path checked like `file_manager`'s), so
`file_manager` sees what the code wrote and the code sees what `file_manager` wrote. The code
never runs in the worker: the sandbox service runs it (docs/sandbox.md)."""

from __future__ import annotations

import asyncio
import base64
import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from skills.builtin.file_manager import resolve_in_workspace, workspace_root
from skills.sandbox.client import SandboxError
from skills.sandbox.protocol import MAX_FILES, ExecuteRequest, ExecuteResult, LimitsRequest
from skills.skill import SkillContext, SkillError, skill

MIB = 2**20

DESCRIPTION = (
    "Run a Python 3 or bash snippet in an isolated sandbox (no network, no secrets) whose working "
    "directory holds a copy of this session's workspace: read files written earlier with relative "
    "paths; files the code writes there are saved back to the workspace. Returns exit_code, stdout, "
    "stderr (each cut at a limit, with a marker), timed_out, killed_by and files_changed. "
    "Only the standard library (and packages the operator installed) is available."
)


@skill(name="code_executor", description=DESCRIPTION, sensitive=True)
async def code_executor(
    ctx: SkillContext,
    language: Annotated[Literal["python", "bash"], Field(description="The language of `code`.")],
    code: Annotated[str, Field(description="The program to run.")],
    stdin: Annotated[str | None, Field(description="Text given to the program on standard input.")] = None,
    timeout_s: Annotated[float | None, Field(description="Wall-clock limit in seconds (default: the platform's).",
                                             gt=0)] = None,
) -> dict[str, Any]:
    if ctx.sandbox is None:
        raise SkillError("Code execution is not available on this platform: no sandbox service is configured "
                         "(AGENTOS_SANDBOX__URL and AGENTOS_SANDBOX__TOKEN).")
    max_bytes = ctx.sandbox.settings.defaults.disk_mb * MIB
    service_side = ctx.sandbox.settings.workspace_mode == "service"
    marker = _sync_marker(ctx.workspace)
    # In `service` mode the session's files live in the sandbox service between calls: only the
    # files changed here since the last call (by file_manager) are sent.
    newer_than = _mtime(marker) if service_side else None
    files = await asyncio.to_thread(_pack, ctx.workspace, max_bytes, newer_than)
    request = ExecuteRequest(language=language, code=code, stdin=stdin, files=files,
                             limits=LimitsRequest(wall_s=timeout_s),
                             workspace=f"{ctx.org_id}/{ctx.session_id}" if service_side else None)
    try:
        result = await ctx.sandbox.execute(ctx.org_id, request)
    except SandboxError as exc:
        raise SkillError(str(exc)) from None
    if ctx.meter is not None:
        await ctx.meter.sandbox(ctx.tool_call_id, ctx.agent_id, result.cpu_ms)
    applied = await asyncio.to_thread(_apply, ctx.workspace, result)
    if service_side and not result.timed_out:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    return {
        "exit_code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr,
        "truncated": result.truncated, "timed_out": result.timed_out, "killed_by": result.killed_by,
        "duration_ms": result.duration_ms, "files_changed": applied,
    }


def _sync_marker(workspace: Path) -> Path:
    """Beside the session's workspace (never in it): when code last synced with the service."""
    return workspace.parent / f".{workspace.name}.sandbox-synced"


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return None


def _pack(workspace: Path, max_bytes: int, newer_than: float | None = None) -> dict[str, str]:
    """The workspace's regular files (symlinks are skipped), base64, relative paths; only those
    modified after `newer_than` when given."""
    root = workspace_root(workspace)
    files: dict[str, str] = {}
    total = 0
    for directory, dirnames, filenames in os.walk(root):  # os.walk does not follow symlinked dirs
        dirnames.sort()
        for name in sorted(filenames):
            path = Path(directory) / name
            if path.is_symlink() or not path.is_file():
                continue
            if newer_than is not None and path.stat().st_mtime <= newer_than:
                continue
            data = path.read_bytes()
            total += len(data)
            if total > max_bytes or len(files) >= MAX_FILES:
                raise SkillError(f"The session workspace is larger than code_executor can copy ({max_bytes // MIB} "
                                 f"MiB, {MAX_FILES} files); remove files you no longer need.")
            files[path.relative_to(root).as_posix()] = base64.b64encode(data).decode()
    return files


def _apply(workspace: Path, result: ExecuteResult) -> list[dict[str, Any]]:
    """Write the changed files back into the workspace; what was applied, as the model sees it."""
    applied: list[dict[str, Any]] = []
    root = workspace_root(workspace)
    # Deletions first: the code may have replaced a file `a` by a directory `a/` holding new
    # files, or a directory by a file (whose old directory is then empty, and removed).
    for change in sorted(result.files_changed, key=lambda c: c.change != "deleted"):
        try:
            target, shown = resolve_in_workspace(workspace, change.path)
        except SkillError:
            continue  # a path the workspace cannot hold (it would lead outside): never written
        if target == root or target.is_symlink():
            continue
        if change.change == "deleted":
            if target.is_dir():
                continue
            target.unlink(missing_ok=True)
        else:
            if target.is_dir():
                try:
                    target.rmdir()
                except OSError:
                    continue  # still holds files the code did not delete
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(base64.b64decode(change.content or ""))
        applied.append({"path": shown, "change": change.change, "size": change.size})
    return applied
