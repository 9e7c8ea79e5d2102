"""An audit-log entry (`/v1/audit-logs`)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from api.schemas.base import Out


class AuditLog(Out):
    id: str
    actor: str
    action: str
    resource_type: str | None
    resource_id: str | None
    details: dict[str, Any] | None
    ip: str | None
    user_agent: str | None
    request_id: str | None
    trace_id: str | None
    created_at: datetime
