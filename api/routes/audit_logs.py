"""`GET /v1/audit-logs`: who changed what, from where (admin), newest first, with filters."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.responses import Response

from api.endpoint import Call, Param, endpoint, resource, validation_failed
from api.schemas.audit_logs import AuditLog
from api.schemas.base import page_of
from core.pagination import page
from core.store import audit
from core.tenancy import tenant_tx

MAX_FILTER_CHARS = 200


def _text(call: Call[Any], name: str) -> str | None:
    value = call.request.query_params.get(name)
    if value is not None and not 1 <= len(value) <= MAX_FILTER_CHARS:
        raise validation_failed([{"field": name, "message": f"must be 1 to {MAX_FILTER_CHARS} characters"}])
    return value


def _moment(call: Call[Any], name: str) -> datetime | None:
    raw = call.request.query_params.get(name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise validation_failed([{"field": name, "message": "must be an ISO 8601 time, e.g. 2026-12-01T09:00:00Z "
                                                            "(UTC when no offset is given)"}]) from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@endpoint("The organisation's audit log, newest first: filter by `actor`, `action` (`agent.*` for a prefix), "
          "`resource_type`, `resource_id`, and time (`from` inclusive, `to` exclusive) (admin).", role="admin",
          paginated=True, response=page_of(AuditLog), params=(
              Param("actor", {"type": "string"}), Param("action", {"type": "string"}, "`agent.*` for a prefix."),
              Param("resource_type", {"type": "string"}), Param("resource_id", {"type": "string"}),
              Param("from", {"type": "string", "format": "date-time"}, "Inclusive."),
              Param("to", {"type": "string", "format": "date-time"}, "Exclusive."),
          ))
async def list_audit_logs(call: Call[Any]) -> Response:
    cursor, limit = call.page_params()
    filters = audit.Filters(actor=_text(call, "actor"), action=_text(call, "action"),
                            target_type=_text(call, "resource_type"), target_id=_text(call, "resource_id"),
                            since=_moment(call, "from"), until=_moment(call, "to"))
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        rows = await audit.list_logs(conn, filters, cursor, limit)
    data, next_cursor = page(rows, limit)
    return call.page([audit.to_public(r) for r in data], next_cursor)


routes = [resource("/v1/audit-logs", GET=list_audit_logs)]
