"""A run: one turn of a session, from queued to a terminal status."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from api.schemas.base import Open, Out
from core.store.runs import RunStatus


class RunError(Open):
    code: str
    message: str


class Run(Out):
    id: str = Field(examples=["run_01a2b3c4d5e6f708192a3b4c5d6e"])
    session_id: str
    agent_id: str
    agent_version: int
    status: RunStatus
    input: dict[str, Any] | None = Field(description="`{text, message_id}` of the user's message.")
    output: dict[str, Any] | None = Field(description="`{text, message_id}` once it succeeded.")
    error: RunError | None
    usage: dict[str, Any] = Field(description="Token counts and model calls so far; `models`: the models that "
                                              "answered (a fallback model when the agent's own failed).")
    metadata: dict[str, Any]
    skill_versions: dict[str, int] | None = Field(description="The org's skills at the versions this run uses.")
    attempt: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    trace_id: str | None
    stream_url: str = Field(description="Where to stream its events (SSE).")
