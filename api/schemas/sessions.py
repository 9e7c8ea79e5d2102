"""A session (a conversation with one agent) and its messages."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from api.schemas.base import Out


class Session(Out):
    id: str = Field(examples=["ses_01a2b3c4d5e6f708192a3b4c5d6e"])
    agent_id: str
    user_id: str | None = Field(description="The integrating app's end user this conversation is with.")
    title: str | None
    metadata: dict[str, Any]
    created_at: datetime
    updated_at: datetime


class Message(Out):
    id: str
    session_id: str
    run_id: str | None
    role: Literal["user", "assistant"]
    content: str
    metadata: dict[str, Any]
    created_at: datetime
