"""A knowledge-base document (its chunks are memories of kind `document`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import Field

from api.schemas.base import Open, Out


class DocumentError(Open):
    code: str
    message: str


class KnowledgeDocument(Out):
    id: str
    title: str
    content_type: Literal["text/plain", "text/markdown"]
    size_bytes: int
    status: Literal["pending", "ready", "failed"]
    error: DocumentError | None
    chunks: int
    embedding_model: str | None
    attempts: int
    metadata: dict[str, Any]
    file_id: str | None = Field(default=None, description="The uploaded file it was made from; deleting the file "
                                                          "deletes the document.")
    created_at: datetime
    updated_at: datetime
    content_preview: str | None = Field(default=None, description="The first 500 characters (reading one only).")
