"""Uploaded files and their attachment to sessions (`/v1/files`)."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from api.schemas.base import Out


class File(Out):
    id: str
    name: str = Field(description="The server's sanitised name (the client's last path component).")
    content_type: str = Field(description="Sniffed from the bytes; the client's declared type is ignored.")
    size_bytes: int
    sha256: str
    created_by: str | None
    created_at: datetime


class SessionFile(Out):
    session_id: str
    file_id: str
    name: str
    path: str = Field(description="Where the session's runs find it in the workspace (`files/<name>`).")
    content_type: str
    size_bytes: int
    attached_by: str | None
    attached_at: datetime
