"""Uploaded files' metadata and their attachment to sessions (the bytes are in
`core.file_storage`)."""

from __future__ import annotations

from datetime import datetime
from typing import TypedDict, cast

from psycopg import AsyncConnection
from psycopg.rows import DictRow

from core.store.errors import StoreError


class FileRow(TypedDict):
    id: str
    name: str
    content_type: str
    size_bytes: int
    sha256: str
    storage_key: str
    created_by: str | None
    created_at: datetime


class AttachmentRow(TypedDict):
    session_id: str
    file_id: str
    name: str
    content_type: str
    size_bytes: int
    sha256: str
    storage_key: str
    attached_by: str | None
    attached_at: datetime


class QuotaExceeded(StoreError):
    """The org's files would take more than its storage quota."""

    def __init__(self, quota_bytes: int, used_bytes: int, size_bytes: int) -> None:
        super().__init__(f"storing {size_bytes} bytes would exceed the org's storage quota of {quota_bytes} bytes "
                         f"({used_bytes} used)")
        self.quota_bytes, self.used_bytes, self.size_bytes = quota_bytes, used_bytes, size_bytes


class NameTaken(StoreError):
    """The session already has an attached file of that name."""

    def __init__(self, name: str) -> None:
        super().__init__(f"the session already has a file named {name!r}")
        self.name = name


COLUMNS = "id, name, content_type, size_bytes, sha256, storage_key, created_by, created_at"
# Uploads of one org take turns at the quota check (a transaction-scoped advisory lock), so two
# at once cannot both fit in the last free bytes.
LOCK_QUOTA_SQL = "SELECT pg_advisory_xact_lock(hashtextextended('agentos-files:' || agentos_current_org(), 0))"
USED_SQL = "SELECT coalesce(sum(size_bytes), 0)::bigint AS used FROM files"
INSERT_SQL = f"""
INSERT INTO files (id, org_id, name, content_type, size_bytes, sha256, storage_key, created_by)
VALUES (%s, agentos_current_org(), %s, %s, %s, %s, %s, %s) RETURNING {COLUMNS}
"""
GET_SQL = f"SELECT {COLUMNS} FROM files WHERE id = %s"
LIST_SQL = f"""
SELECT {COLUMNS} FROM files WHERE (%(cursor)s::text IS NULL OR id < %(cursor)s) ORDER BY id DESC LIMIT %(limit)s
"""
DELETE_SQL = f"DELETE FROM files WHERE id = %s RETURNING {COLUMNS}"

ATTACH_COLUMNS = ("a.session_id, a.file_id, a.name, f.content_type, f.size_bytes, f.sha256, f.storage_key, "
                  "a.attached_by, a.attached_at")
ATTACH_SQL = """
INSERT INTO session_files (org_id, session_id, file_id, name, attached_by)
VALUES (agentos_current_org(), %s, %s, %s, %s)
ON CONFLICT (session_id, file_id) DO NOTHING RETURNING file_id
"""
ATTACHMENTS_SQL = f"""
SELECT {ATTACH_COLUMNS} FROM session_files a JOIN files f ON f.id = a.file_id
WHERE a.session_id = %s ORDER BY a.name
"""
# The same, for the session of a run (in the run's claiming batch, before the session is known).
RUN_ATTACHMENTS_SQL = f"""
SELECT {ATTACH_COLUMNS} FROM session_files a JOIN files f ON f.id = a.file_id
WHERE a.session_id = (SELECT session_id FROM runs WHERE id = %s) ORDER BY a.name
"""
ATTACHMENT_SQL = f"""
SELECT {ATTACH_COLUMNS} FROM session_files a JOIN files f ON f.id = a.file_id
WHERE a.session_id = %s AND a.file_id = %s
"""
DETACH_SQL = "DELETE FROM session_files WHERE session_id = %s AND file_id = %s RETURNING file_id"
NAME_TAKEN_SQL = "SELECT 1 FROM session_files WHERE session_id = %s AND name = %s AND file_id <> %s"


async def create(conn: AsyncConnection[DictRow], file_id: str, name: str, content_type: str, size_bytes: int,
                 sha256: str, storage_key: str, created_by: str | None, quota_bytes: int) -> FileRow:
    """Record a file, within the org's quota (QuotaExceeded otherwise)."""
    await conn.execute(LOCK_QUOTA_SQL)
    row = await (await conn.execute(USED_SQL)).fetchone()
    used = int(row["used"]) if row else 0
    if used + size_bytes > quota_bytes:
        raise QuotaExceeded(quota_bytes, used, size_bytes)
    cur = await conn.execute(INSERT_SQL, (file_id, name, content_type, size_bytes, sha256, storage_key, created_by))
    created = await cur.fetchone()
    assert created is not None
    return cast(FileRow, created)


async def used_bytes(conn: AsyncConnection[DictRow]) -> int:
    row = await (await conn.execute(USED_SQL)).fetchone()
    return int(row["used"]) if row else 0


async def get(conn: AsyncConnection[DictRow], file_id: str) -> FileRow | None:
    return cast(FileRow | None, await (await conn.execute(GET_SQL, (file_id,))).fetchone())


async def list_files(conn: AsyncConnection[DictRow], cursor: str | None, limit: int) -> list[FileRow]:
    cur = await conn.execute(LIST_SQL, {"cursor": cursor, "limit": limit + 1})
    return cast(list[FileRow], await cur.fetchall())


async def delete(conn: AsyncConnection[DictRow], file_id: str) -> FileRow | None:
    """Delete a file's row and its attachments (the caller removes the bytes after commit)."""
    return cast(FileRow | None, await (await conn.execute(DELETE_SQL, (file_id,))).fetchone())


async def attach(conn: AsyncConnection[DictRow], session_id: str, file: FileRow,
                 attached_by: str | None) -> AttachmentRow:
    """Attach a file to a session under its name (NameTaken if another attached file has it);
    attaching it again is a no-op."""
    if await (await conn.execute(NAME_TAKEN_SQL, (session_id, file["name"], file["id"]))).fetchone():
        raise NameTaken(file["name"])
    await conn.execute(ATTACH_SQL, (session_id, file["id"], file["name"], attached_by))
    row = await (await conn.execute(ATTACHMENT_SQL, (session_id, file["id"]))).fetchone()
    assert row is not None
    return cast(AttachmentRow, row)


async def attachments(conn: AsyncConnection[DictRow], session_id: str) -> list[AttachmentRow]:
    return cast(list[AttachmentRow], await (await conn.execute(ATTACHMENTS_SQL, (session_id,))).fetchall())


def run_attachments(run_id: str) -> tuple[str, tuple[str]]:
    """The statement reading the attachments of a run's session (`attachments`, by run id)."""
    return RUN_ATTACHMENTS_SQL, (run_id,)


async def detach(conn: AsyncConnection[DictRow], session_id: str, file_id: str) -> bool:
    return await (await conn.execute(DETACH_SQL, (session_id, file_id))).fetchone() is not None
