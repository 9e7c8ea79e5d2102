"""The wire format of `POST /execute`: what a caller asks for and what it gets back.

Shared by the service, its backends and the client, so the three cannot drift apart."""

from __future__ import annotations

import posixpath
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.settings import SandboxLimits

Language = Literal["python", "bash"]
# Where the workdir is inside the sandbox; code starts there and `files` paths are relative to it.
WORKDIR = "/workspace"
TRUNCATED_MARKER = "\n…[truncated: output exceeded {limit} bytes]\n"
MAX_FILES = 1000
# A service-side workspace: "<tenant>/<name>", e.g. "<org id>/<session id>" (skills.sandbox.workspaces).
WORKSPACE_PATTERN = r"^[A-Za-z0-9_-]{1,64}/[A-Za-z0-9_-]{1,64}$"


class LimitsRequest(BaseModel):
    """Limits a request asks for; each missing one takes the service's default. A value above
    the service's ceiling is refused (422), never silently lowered."""

    model_config = ConfigDict(extra="forbid")

    wall_s: float | None = Field(default=None, gt=0)
    cpu_s: int | None = Field(default=None, ge=1)
    memory_mb: int | None = Field(default=None, ge=16)
    pids: int | None = Field(default=None, ge=4)
    output_bytes: int | None = Field(default=None, ge=256)
    disk_mb: int | None = Field(default=None, ge=1)

    def resolve(self, defaults: SandboxLimits, ceilings: SandboxLimits) -> tuple[SandboxLimits, list[str]]:
        """(the effective limits, one message per value above its ceiling)."""
        chosen = defaults.model_dump()
        problems = []
        for name, value in self.model_dump(exclude_none=True).items():
            ceiling = getattr(ceilings, name)
            if value > ceiling:
                problems.append(f"limits.{name}: {value} is above the ceiling {ceiling}")
            chosen[name] = value
        for name, value in chosen.items():  # a default above its ceiling is clamped: operators set both
            chosen[name] = min(value, getattr(ceilings, name))
        return SandboxLimits(**chosen), problems


def check_relative_path(path: str) -> str:
    """A normalised relative POSIX path inside the workdir, or ValueError."""
    if not path or "\0" in path or path.startswith("/"):
        raise ValueError(f"{path!r} must be a non-empty relative path")
    norm = posixpath.normpath(path)
    if norm == "." or norm == ".." or norm.startswith("../"):
        raise ValueError(f"{path!r} leads outside the workdir")
    return norm


class ExecuteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    language: Language
    code: Annotated[str, Field(max_length=1_000_000)]
    files: dict[str, str] = Field(default_factory=dict, description="relative path -> base64 content")
    stdin: str | None = Field(default=None, max_length=1_000_000)
    limits: LimitsRequest = Field(default_factory=LimitsRequest)
    # Files persist in this service-side directory between executions (`files` are laid over it).
    workspace: str | None = Field(default=None, pattern=WORKSPACE_PATTERN)

    @field_validator("files")
    @classmethod
    def _safe_paths(cls, files: dict[str, str]) -> dict[str, str]:
        if len(files) > MAX_FILES:
            raise ValueError(f"at most {MAX_FILES} files")
        return {check_relative_path(path): content for path, content in files.items()}


class FileChange(BaseModel):
    path: str
    change: Literal["created", "modified", "deleted"]
    size: int | None = None  # bytes; None when deleted
    content: str | None = None  # base64; None when deleted


class ExecuteResult(BaseModel):
    exit_code: int | None  # None when killed by a signal (see killed_by)
    stdout: str
    stderr: str
    truncated: bool  # stdout or stderr was cut at limits.output_bytes (a marker says where)
    timed_out: bool  # killed at the wall-clock limit
    killed_by: str | None = None  # e.g. "SIGKILL", "SIGXCPU" (the CPU limit)
    duration_ms: int
    cpu_ms: int = 0  # CPU time used (user + system), what the per-org daily quota counts
    files_changed: list[FileChange] = Field(default_factory=list)
