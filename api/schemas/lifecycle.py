"""Data lifecycle answers: an end user's erasure (org deletion's is api.schemas.orgs.OrgDeletion)."""

from __future__ import annotations

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
