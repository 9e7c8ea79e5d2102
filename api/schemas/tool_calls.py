"""A tool call a run made or proposed, and what a human decided about it."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from api.schemas.base import Out
from core.store.tool_calls import ToolCallStatus


class ToolCall(Out):
    id: str
    run_id: str
    session_id: str
    agent_id: str
    kind: Literal["tool", "plan"]
    name: str
    args: dict[str, Any]
    proposed_args: dict[str, Any] | None
    sensitive: bool
    status: ToolCallStatus
    output: Any = None
    error: dict[str, Any] | None
    decided_by: str | None
    decided_at: datetime | None
    decision_reason: str | None
    call_key: str | None = Field(description="The run's own key for the call (stable across a resumed step).")
    created_at: datetime
    finished_at: datetime | None
