"""Long-term memory items, and the answer of a search."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from api.schemas.base import Out, Page, page_of


class Memory(Out):
    id: str
    scope: Literal["org", "agent", "user", "session"]
    agent_id: str | None
    user_id: str | None
    session_id: str | None
    kind: Literal["summary", "preference", "fact", "document"]
    content: str
    metadata: dict[str, Any]
    source: str | None
    embedding_model: str
    dims: int
    created_at: datetime
    expires_at: datetime | None
    document_id: str | None
    score: float | None = Field(default=None, description="Cosine similarity to `?query=` (search only).")


class MemorySearchPage(Page):
    """With `?query=`: the best matches first, with the model that embedded the query."""

    embedding_model: str | None = Field(default=None, description="The model the query was embedded with (search).")
    note: str | None = Field(default=None, description="Why a search may have found nothing.")


MemoryPage = page_of(Memory, "MemoryPage", MemorySearchPage)


class Deleted(Out):
    deleted: int = Field(description="How many items were deleted.")
