"""An org secret as the API shows it: its name and times, never its value."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from api.schemas.base import Out


class Secret(Out):
    name: str
    key_version: int
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    created: bool | None = Field(default=None, description="On `PUT`: false when an existing value was replaced.")
