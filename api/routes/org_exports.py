"""Org exports (owner): `POST /v1/orgs/{id}/exports` queues a worker that builds a zip of every
record, file and knowledge document of the org (secrets by name only; core.org_export);
`GET /v1/orgs/{id}/exports/{export_id}` shows its progress and, once built, a signed download
link that works without a credential until it expires. With the broker away, the export is
stored queued all the same (`AgentOS-Deferred: broker-unavailable`) and the watchdog sends it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from starlette.responses import Response

from api.deferred import HEADER as DEFERRED
from api.deferred import send_or_defer
from api.endpoint import Call, Param, endpoint, resource
from api.schemas.lifecycle import OrgExport
from api.state import state_of
from core import org_export
from core.errors import ApiError
from core.file_storage import StoredFileMissing
from core.tenancy import tenant_tx


def _own_org_id(call: Call[Any]) -> str:
    org_id = call.path_id("org_id", "org")
    if call.caller is not None and org_id != call.principal.org_id:
        raise ApiError("NOT_FOUND", f"No organisation with id {org_id!r}.")
    return org_id


def _public(call: Call[Any], org_id: str, row: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in row.items() if k != "storage_key"} | {"download_url": None, "download_expires_at": None}
    if row["status"] == "succeeded":
        url, expires = org_export.download_link(call.settings.secrets, org_id, row["id"],
                                                call.settings.lifecycle.export_link_ttl_s)
        body |= {"download_url": url, "download_expires_at": datetime.fromtimestamp(expires, UTC)}
    return body


@endpoint("Export the caller's organisation (owner): a worker builds a zip of every record (JSON Lines per table), "
          "file and knowledge document, secrets by name only; poll the export for its progress and download link.",
          role="owner", status=202, response=OrgExport, headers=("Location", DEFERRED))
async def create_export(call: Call[Any]) -> Response:
    org_id = _own_org_id(call)
    async with tenant_tx(call.pool, org_id) as conn:
        row = await org_export.create(conn, call.principal.actor)
    deferral = await send_or_defer(call.infra.jobs.enqueue_export(row["id"], org_id), f"export {row['id']}")
    return call.reply(_public(call, org_id, row), status=202,
                      headers={"Location": f"/v1/orgs/{org_id}/exports/{row['id']}", **deferral})


async def _export(call: Call[Any], org_id: str) -> dict[str, Any]:
    export_id = call.path_id("export_id", "org_export")
    async with tenant_tx(call.pool, org_id) as conn:
        row = await org_export.get(conn, export_id)
    if row is None:
        raise ApiError("NOT_FOUND", f"No export with id {export_id!r} in this organisation.")
    return row


@endpoint("Read an export: its status and progress, and once built a download link valid for "
          "`AGENTOS_LIFECYCLE__EXPORT_LINK_TTL_S` (owner).", role="owner", response=OrgExport)
async def get_export(call: Call[Any]) -> Response:
    org_id = _own_org_id(call)
    return call.reply(_public(call, org_id, await _export(call, org_id)))


@endpoint("Download a built export (a zip) through the signed link its GET gave; no credential. An altered or "
          "expired link is 403 FORBIDDEN.", role=None, download=True, errors=("FORBIDDEN", "NOT_FOUND"),
          params=(Param("expires", {"type": "string"}, "From the link.", required=True),
                  Param("sig", {"type": "string"}, "From the link.", required=True)))
async def download_export(call: Call[Any]) -> Response:
    org_id = _own_org_id(call)
    export_id = call.path_id("export_id", "org_export")
    q = call.request.query_params
    if not org_export.link_valid(call.settings.secrets, org_id, export_id, q.get("expires", ""), q.get("sig", "")):
        raise ApiError("FORBIDDEN", "This download link is altered or expired; GET the export for a fresh one.")
    row = await _export(call, org_id)
    if row["status"] != "succeeded" or not row["storage_key"]:
        raise ApiError("NOT_FOUND", f"Export {export_id} has no archive.")
    try:
        data = await state_of(call.request).storage.get(row["storage_key"])
    except StoredFileMissing:
        raise ApiError("NOT_FOUND", f"The archive of export {export_id} is no longer in the storage.") from None
    return Response(data, media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="agentos-{org_id}-{export_id}.zip"',
        "X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-store"})


routes = [
    resource("/v1/orgs/{org_id}/exports", POST=create_export),
    resource("/v1/orgs/{org_id}/exports/{export_id}", GET=get_export),
    resource("/v1/orgs/{org_id}/exports/{export_id}/download", GET=download_export),
]
