"""A data source of the org (its URL stays a secret's name)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from api.schemas.base import Out
from api.schemas.skills import SecretRefOut


class DataSource(Out):
    name: str
    kind: Literal["postgres"]
    url: SecretRefOut
    statement_timeout_ms: int
    max_rows: int
    created_by: str | None
    created_at: datetime
