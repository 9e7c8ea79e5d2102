"""Data lifecycle answers: an end user's erasure, an org export (org deletion's is
api.schemas.orgs.OrgDeletion)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from api.schemas.base import Out


class UserDataErased(Out):
    sessions: int = Field(description="Sessions removed, with everything below.")
    runs: int
    messages: int
    run_events: int
    tool_calls: int
    memories: int = Field(description="Long-term memories of the user or of its sessions, and short-term notes.")
    files: int = Field(description="Files only the user's sessions used, or the user uploaded.")
    checkpoints: int = Field(description="Checkpoint rows of the sessions' threads.")
    redis_keys: int = Field(description="Live event streams and memory windows of the sessions.")


class ExportProgress(Out):
    tables_done: int = 0
    tables_total: int | None = None
    records: int = 0
    files: int | None = None
    documents: int | None = None


class OrgExport(Out):
    id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    progress: ExportProgress
    size_bytes: int | None = Field(description="The archive's size, once built.")
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    download_url: str | None = Field(default=None, description="Once succeeded: a path that downloads the archive "
                                     "(a zip) without a credential until `download_expires_at`; GET the export again "
                                     "for a fresh one.")
    download_expires_at: datetime | None = None
