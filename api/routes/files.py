"""Files: uploaded once (multipart), read back, attached to sessions so that they appear in the
session's workspace as `files/<name>` for `file_manager`, `code_executor` and `data_query`. The
server names and types each file itself (`core.uploads`); bytes go to the file storage
(`core.file_storage`), metadata and the org's quota to Postgres."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import quote

import psycopg
from pydantic import BaseModel, ConfigDict
from starlette.datastructures import UploadFile
from starlette.responses import Response

from api.endpoint import Call, endpoint, resource, validation_failed
from api.schemas.base import page_of
from api.schemas.files import File, SessionFile
from api.state import state_of
from core import ids
from core.errors import ApiError
from core.file_storage import StoredFileMissing, key_for
from core.pagination import page
from core.settings import FileSettings
from core.store import audit, sessions
from core.store import files as store
from core.store.files import NameTaken
from core.tenancy import tenant_tx
from core.uploads import safe_name, sniff

UPLOAD_PATH = "/v1/files"
# Room for the multipart envelope (boundaries, part headers) around the file itself.
MULTIPART_SLACK = 64 * 1024
WORKSPACE_DIR = "files"


def upload_limit(settings: FileSettings) -> int:
    """The body limit of `POST /v1/files`: the file limit plus the multipart envelope."""
    return settings.max_bytes + MULTIPART_SLACK


def _public(row: store.FileRow) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k != "storage_key"}


def _attachment(row: store.AttachmentRow) -> dict[str, Any]:
    return {"session_id": row["session_id"], "file_id": row["file_id"], "name": row["name"],
            "path": f"{WORKSPACE_DIR}/{row['name']}", "content_type": row["content_type"],
            "size_bytes": row["size_bytes"], "attached_by": row["attached_by"], "attached_at": row["attached_at"]}


def _not_found(file_id: str) -> ApiError:
    return ApiError("NOT_FOUND", f"No file with id {file_id!r} in this organisation.")


def _too_large(limit: int) -> ApiError:
    return ApiError("PAYLOAD_TOO_LARGE", f"The file is larger than {limit} bytes (AGENTOS_FILES__MAX_BYTES); "
                    "nothing was stored.", details={"max_bytes": limit})


@endpoint("Upload a file (multipart/form-data, field `file`); the server sanitises its name and sniffs its type.",
          role="member", status=201, response=File, parse=False, raw_types=("multipart/form-data",),
          errors=("PAYLOAD_TOO_LARGE", "QUOTA_EXCEEDED"))
async def upload_file(call: Call[Any]) -> Response:
    limit = call.settings.files.max_bytes
    content_type = call.request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if content_type != "multipart/form-data":
        raise ApiError("UNSUPPORTED_MEDIA_TYPE", "Send the file as multipart/form-data, in a field named 'file'.")
    form = await call.request.form(max_files=1, max_fields=4)
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise validation_failed([{"field": "file", "message": "is required: a file part named 'file'"}])
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise _too_large(limit)
        name = safe_name(upload.filename)
    finally:
        await form.close()
    principal = call.principal
    file_id = ids.new_id("file")
    key = key_for(principal.org_id, file_id)
    storage = state_of(call.request).storage
    async with tenant_tx(call.pool, principal.org_id) as conn:
        row = await store.create(conn, file_id, name, sniff(data, name), len(data), hashlib.sha256(data).hexdigest(),
                                 key, principal.user_id, call.settings.files.org_quota_bytes)
        await audit.record(conn, principal.actor, "file.create", "file", file_id,
                           {"name": name, "size_bytes": len(data)})
        # Inside the transaction: if storing the bytes fails, no row says they exist.
        await storage.put(key, data)
    return call.reply(_public(row), status=201)


@endpoint("List the org's files, newest first.", paginated=True, response=page_of(File))
async def list_files(call: Call[Any]) -> Response:
    cursor, limit = call.page_params()
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        rows = await store.list_files(conn, cursor, limit)
    data, next_cursor = page(rows, limit)
    return call.page([_public(r) for r in data], next_cursor)


async def _file(call: Call[Any]) -> store.FileRow:
    file_id = call.path_id("file_id", "file")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await store.get(conn, file_id)
    if row is None:
        raise _not_found(file_id)
    return row


@endpoint("Read a file's metadata.", response=File, errors=("NOT_FOUND",))
async def get_file(call: Call[Any]) -> Response:
    return call.reply(_public(await _file(call)))


@endpoint("Download a file's content (as an attachment, with its sniffed type).", download=True, errors=("NOT_FOUND",))
async def get_content(call: Call[Any]) -> Response:
    row = await _file(call)
    try:
        data = await state_of(call.request).storage.get(row["storage_key"])
    except StoredFileMissing:
        raise ApiError("NOT_FOUND", f"The content of file {row['id']} is no longer in the storage.") from None
    # Never rendered by a browser on the API's origin: a download, and no type guessing.
    return Response(data, media_type=row["content_type"], headers={
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(row['name'], safe='')}",
        "X-Content-Type-Options": "nosniff", "Cache-Control": "private, no-store"})


@endpoint("Delete a file; it leaves every session it was attached to (their workspaces lose it at the next run).",
          role="member", status=204)
async def delete_file(call: Call[Any]) -> Response:
    file_id = call.path_id("file_id", "file")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await store.delete(conn, file_id)
        if row is None:
            raise _not_found(file_id)
        await audit.record(conn, call.principal.actor, "file.delete", "file", file_id, {"name": row["name"]})
    await state_of(call.request).storage.delete(row["storage_key"])
    return Response(status_code=204)


class Attach(BaseModel):
    model_config = ConfigDict(extra="forbid")
    file_id: str


async def _session(call: Call[Any], conn: psycopg.AsyncConnection[Any]) -> str:
    session_id = call.path_id("session_id", "session")
    if await sessions.get(conn, session_id) is None:
        raise ApiError("NOT_FOUND", f"No session with id {session_id!r} in this organisation.")
    return session_id


@endpoint("Attach a file to a session: it appears in the session's workspace as files/<name> from its next run.",
          role="member", body=Attach, status=201, response=SessionFile, errors=("CONFLICT",))
async def attach_file(call: Call[Attach]) -> Response:
    file_id = call.body.file_id
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        session_id = await _session(call, conn)
        file = await store.get(conn, file_id) if ids.looks_like("file", file_id) else None
        if file is None:
            raise ApiError("NOT_FOUND", f"No file with id {file_id!r} in this organisation.",
                           details={"field": "file_id"})
        try:
            async with conn.transaction():
                row = await store.attach(conn, session_id, file, call.principal.user_id)
        except psycopg.errors.UniqueViolation:  # attached under the same name at the same moment
            raise NameTaken(file["name"]) from None
    return call.reply(_attachment(row), status=201)


@endpoint("List the files attached to a session.", response=page_of(SessionFile), errors=("NOT_FOUND",))
async def list_attached(call: Call[Any]) -> Response:
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        session_id = await _session(call, conn)
        rows = await store.attachments(conn, session_id)
    return call.page([_attachment(r) for r in rows], None)


@endpoint("Detach a file from a session (the file itself stays).", role="member", status=204)
async def detach_file(call: Call[Any]) -> Response:
    file_id = call.path_id("file_id", "file")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        session_id = await _session(call, conn)
        if not await store.detach(conn, session_id, file_id):
            raise ApiError("NOT_FOUND", f"File {file_id!r} is not attached to this session.")
    return Response(status_code=204)


routes = [
    resource(UPLOAD_PATH, GET=list_files, POST=upload_file),
    resource("/v1/files/{file_id}", GET=get_file, DELETE=delete_file),
    resource("/v1/files/{file_id}/content", GET=get_content),
    resource("/v1/sessions/{session_id}/files", GET=list_attached, POST=attach_file),
    resource("/v1/sessions/{session_id}/files/{file_id}", DELETE=detach_file),
]
