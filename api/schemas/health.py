"""Health checks and the org's outbound allowlist."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from api.schemas.base import Out


class Health(Out):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] | None = Field(default=None, description="Readiness: each dependency, `ok` or why not.")


class OutboundAllowlist(Out):
    allow: list[str] = Field(description="Normalised private networks (CIDRs).")
