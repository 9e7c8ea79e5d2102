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


class KnowledgeChunk(Out):
    """One chunk found by a knowledge search."""

    id: str = Field(description="The chunk's memory id.")
    document_id: str
    title: str = Field(description="The document's title.")
    heading: str | None = Field(description="The chunk's heading path in the document (`Guide > Install`).")
    chunk: int | None = Field(description="The chunk's position in the document (0 first).")
    content: str
    score: float = Field(description="Cosine similarity to the query (1 is identical); in `hybrid` mode the "
                               "order is the fused rank, not this score.")
    metadata: dict[str, Any] = Field(description="The document's metadata and the chunk's own keys.")


class KnowledgeSearchResult(Out):
    """The best chunks first."""

    data: list[KnowledgeChunk]
    embedding_model: str = Field(description="The model the query was embedded with.")
    mode: Literal["vector", "hybrid"] = Field(description="How the chunks were found (the request's `mode`).")
    note: str | None = Field(default=None, description="Why a search may have found nothing.")
