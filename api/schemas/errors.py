"""The error object every failure answers with (docs/api.md, "Errors")."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from api.schemas.base import Out
from core.errors import CODES


class ErrorDetail(Out):
    code: str = Field(description="A stable code from the table in docs/api.md.", examples=sorted(CODES))
    message: str = Field(description="What happened and what to do, for a human.")
    details: dict[str, Any] = Field(description="Structured details; `fields` lists what failed validation.")


class Error(Out):
    """`{"error": {code, message, details}}`."""

    error: ErrorDetail
