"""Org export: an archive of everything the org owns, built by a worker (`EXPORT_ORG`), kept in
the file storage under the org's prefix, downloaded through a signed, time-limited link.

The archive is a zip file:
- `manifest.json`: the org, when, how many records per table, what was left out and why;
- `org.json`: the org itself (name, settings, limits, retention);
- `tables/<table>.jsonl`: one JSON object per row, for every table with an `org_id` column
  (found in the catalog, like core.tenant_data, so a table added later is exported too);
- `files/<file id>/<name>`: the bytes of every uploaded file;
- `knowledge/<document id>.txt|.md`: every knowledge-base document.

Left out: secret material — every `bytea` column (org secrets' ciphertext and wrapped keys),
`secret_hash` (API keys) — so secrets appear by name only; `embedding` vectors (derived from the
content, and large); LangGraph checkpoints (internal state of the runs, whose messages, events
and tool calls are exported).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import logging
import time
import zipfile
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from psycopg import AsyncConnection, sql
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from core.file_storage import FileStorage, StoredFileMissing, key_for
from core.ids import new_id
from core.settings import SecretsSettings
from core.store import audit
from core.tenancy import AsyncPool, tenant_tx
from core.tenant_data import tenant_tables

log = logging.getLogger("agentos.export")

FORMAT = 1
# Columns never exported, whatever the table (bytea columns are left out by type).
SECRET_COLUMNS = frozenset({"secret_hash", "embedding"})
EXTENSIONS = {"text/markdown": "md"}

COLUMNS_SQL = """
SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type
FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = current_schema() AND c.relname = %s AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
INSERT_SQL = """
INSERT INTO org_exports (id, org_id, requested_by) VALUES (%s, agentos_current_org(), %s)
RETURNING id, status, progress, size_bytes, error, created_at, finished_at
"""
GET_SQL = "SELECT id, status, progress, storage_key, size_bytes, error, created_at, finished_at FROM org_exports " \
          "WHERE id = %s"
START_SQL = "UPDATE org_exports SET status = 'running', progress = %s, heartbeat_at = now() WHERE id = %s " \
            "AND status IN ('queued', 'running') RETURNING id"
PROGRESS_SQL = "UPDATE org_exports SET progress = %s, heartbeat_at = now() WHERE id = %s"
BEAT_SQL = "UPDATE org_exports SET heartbeat_at = now() WHERE id = %s AND status = 'running'"
DONE_SQL = "UPDATE org_exports SET status = 'succeeded', progress = %s, storage_key = %s, size_bytes = %s, " \
           "finished_at = now() WHERE id = %s"
FAILED_SQL = "UPDATE org_exports SET status = 'failed', error = %s, finished_at = now() WHERE id = %s"
ORG_SQL = "SELECT id, name, settings, limits, retention, created_at FROM orgs WHERE id = agentos_current_org()"
# Exports of any org that need sending again, oldest first (a `watchdog_scan_tx` reads across
# orgs): queued for longer than %(after)s (a worker's first step moves an export to `running`, so
# these were never started: their message was lost), or running without a beat for that long
# (their worker stopped; a live one beats every third of it). `attempts` is the watchdog's memo
# key: the last beat, so an export whose next worker stops too is sent again.
STALE_SQL = """
(SELECT id, org_id, 0 AS attempts, created_at FROM org_exports
 WHERE status = 'queued' AND created_at < now() - %(after)s ORDER BY created_at LIMIT %(limit)s)
UNION ALL
(SELECT id, org_id, floor(extract(epoch FROM coalesce(heartbeat_at, created_at)))::bigint, created_at FROM org_exports
 WHERE status = 'running' AND coalesce(heartbeat_at, created_at) < now() - %(after)s
 ORDER BY coalesce(heartbeat_at, created_at) LIMIT %(limit)s)
ORDER BY created_at LIMIT %(limit)s
"""
# How often a worker building an export beats, at most (`build`'s `beat_s`).
BEAT_S = 10.0


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (bytes, memoryview)):
        return base64.b64encode(bytes(value)).decode()
    if isinstance(value, (datetime, date)):
        return value.isoformat()
    return str(value)


def _json(value: Any) -> bytes:
    return orjson.dumps(value, default=_default, option=orjson.OPT_NON_STR_KEYS)


async def create(conn: AsyncConnection[DictRow], requested_by: str) -> dict[str, Any]:
    """Record a queued export (the caller enqueues `EXPORT_ORG` after commit)."""
    row = await (await conn.execute(INSERT_SQL, (new_id("org_export"), requested_by))).fetchone()
    assert row is not None
    await audit.record(conn, requested_by, "org.export", "org_export", row["id"], {})
    return dict(row)


async def stale(conn: AsyncConnection[DictRow], after: timedelta, limit: int) -> list[dict[str, Any]]:
    """Exports of any org to send again: still queued after `after` (their message was lost), or
    running without a beat for `after` (their worker stopped): `{id, org_id, attempts}`. Needs a
    `core.tenancy.watchdog_scan_tx` connection."""
    return list(await (await conn.execute(STALE_SQL, {"after": after, "limit": limit})).fetchall())


async def get(conn: AsyncConnection[DictRow], export_id: str) -> dict[str, Any] | None:
    row = await (await conn.execute(GET_SQL, (export_id,))).fetchone()
    return dict(row) if row else None


async def exported_columns(conn: AsyncConnection[DictRow], table: str) -> list[str]:
    """The table's columns that go into the archive (no secret material, no vectors)."""
    rows = await (await conn.execute(COLUMNS_SQL, (table,))).fetchall()
    return [r["name"] for r in rows if r["type"] != "bytea" and r["name"] not in SECRET_COLUMNS]


async def build(pool: AsyncPool, storage: FileStorage, org_id: str, export_id: str, *,
                beat_s: float = BEAT_S) -> str:
    """Build the archive of one export and store it; its final status. Safe to repeat (a
    redelivered task, or one the watchdog sent again, builds it again). While it builds, the
    export's `heartbeat_at` is renewed every `beat_s`: the watchdog sends again a running export
    whose beat stopped (its worker died)."""
    async with tenant_tx(pool, org_id) as conn:
        if await (await conn.execute(START_SQL, (Jsonb({"tables_done": 0}), export_id))).fetchone() is None:
            return "not pending"
        tables = [t.name for t in await tenant_tables(conn)]
        org = await (await conn.execute(ORG_SQL)).fetchone()
    beating = asyncio.create_task(_beat(pool, org_id, export_id, beat_s), name=f"export {export_id} beat")
    try:
        data, manifest = await _archive(pool, storage, org_id, export_id, tables, dict(org or {}))
        key = key_for(org_id, export_id)
        await storage.put(key, data)
    except Exception as exc:
        log.exception("export %s of org %s failed", export_id, org_id)
        async with tenant_tx(pool, org_id) as conn:
            await conn.execute(FAILED_SQL, (f"{type(exc).__name__}: {exc}"[:500], export_id))
        return "failed"
    finally:
        beating.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await beating
    async with tenant_tx(pool, org_id) as conn:
        await conn.execute(DONE_SQL, (Jsonb(manifest["progress"]), key, len(data), export_id))
    return "succeeded"


async def _beat(pool: AsyncPool, org_id: str, export_id: str, every_s: float) -> None:
    """Renew the export's `heartbeat_at` every `every_s` until cancelled; a failed beat is logged
    and the next one tried (Postgres away for longer than the watchdog waits: the export is built
    again, which is safe)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            async with tenant_tx(pool, org_id) as conn:
                await conn.execute(BEAT_SQL, (export_id,))
        except Exception as exc:
            log.warning("export %s: its beat was not stored: %s", export_id, exc)


async def _archive(pool: AsyncPool, storage: FileStorage, org_id: str, export_id: str, tables: list[str],
                   org: dict[str, Any]) -> tuple[bytes, dict[str, Any]]:
    buffer = io.BytesIO()
    counts: dict[str, int] = {}
    files = documents = 0
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("org.json", _json(org))
        for done, table in enumerate(tables, start=1):
            counts[table] = await _table(pool, org_id, table, archive)
            async with tenant_tx(pool, org_id) as conn:
                await conn.execute(PROGRESS_SQL, (Jsonb({"tables_done": done, "tables_total": len(tables),
                                                         "records": sum(counts.values())}), export_id))
        async with tenant_tx(pool, org_id) as conn:
            stored = await (await conn.execute("SELECT id, name, storage_key FROM files ORDER BY id")).fetchall()
            docs = await (await conn.execute(
                "SELECT id, content_type, content FROM knowledge_documents ORDER BY id")).fetchall()
        for f in stored:
            try:
                archive.writestr(f"files/{f['id']}/{f['name']}", await storage.get(f["storage_key"]))
                files += 1
            except StoredFileMissing:
                log.warning("export %s: the bytes of file %s are missing from the storage", export_id, f["id"])
        for d in docs:
            archive.writestr(f"knowledge/{d['id']}.{EXTENSIONS.get(d['content_type'], 'txt')}", d["content"])
            documents += 1
        progress = {"tables_done": len(tables), "tables_total": len(tables), "records": sum(counts.values()),
                    "files": files, "documents": documents}
        manifest = {"format": FORMAT, "org_id": org_id, "export_id": export_id,
                    "created_at": datetime.now().astimezone().isoformat(), "tables": counts,
                    "progress": progress,
                    "left_out": {"columns": sorted(SECRET_COLUMNS) + ["every bytea column (secret material)"],
                                 "tables": ["checkpoints", "checkpoint_blobs", "checkpoint_writes"]}}
        archive.writestr("manifest.json", _json(manifest))
    return buffer.getvalue(), manifest


async def _table(pool: AsyncPool, org_id: str, table: str, archive: zipfile.ZipFile) -> int:
    """Write the org's rows of `table` as JSON Lines, read with a server-side cursor."""
    count = 0
    async with tenant_tx(pool, org_id) as conn:
        columns = await exported_columns(conn, table)
        query = sql.SQL("SELECT {} FROM {} WHERE org_id = agentos_current_org()").format(
            sql.SQL(", ").join(sql.Identifier(c) for c in columns), sql.Identifier(table))
        with archive.open(f"tables/{table}.jsonl", "w") as out:
            async with conn.cursor(name=f"export_{table}") as cur:
                await cur.execute(query)
                while rows := await cur.fetchmany(500):
                    for row in rows:
                        out.write(_json(row) + b"\n")
                        count += 1
    return count


# The download link: `?expires=<unix s>&sig=<hex>`, an HMAC of the org, the export and the expiry
# under a key derived from the secrets' key-encryption key (its own label, like stream tokens').
_KDF_INFO = b"agentos org export download link v1"


def _link_key(keys: SecretsSettings) -> bytes:
    kek = base64.b64decode(keys.keys[keys.active_key_version].get_secret_value())
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KDF_INFO).derive(kek)


def _signature(keys: SecretsSettings, org_id: str, export_id: str, expires: int) -> str:
    return hmac.new(_link_key(keys), f"{org_id}:{export_id}:{expires}".encode(), hashlib.sha256).hexdigest()


def download_link(keys: SecretsSettings, org_id: str, export_id: str, ttl_s: int) -> tuple[str, int]:
    """A path that downloads the export without a credential until it expires; and when."""
    expires = int(time.time()) + ttl_s
    sig = _signature(keys, org_id, export_id, expires)
    return f"/v1/orgs/{org_id}/exports/{export_id}/download?expires={expires}&sig={sig}", expires


def link_valid(keys: SecretsSettings, org_id: str, export_id: str, expires: str, sig: str) -> bool:
    """Whether a link's signature is ours and it has not expired."""
    if not expires.isdigit() or int(expires) < time.time():
        return False
    return hmac.compare_digest(_signature(keys, org_id, export_id, int(expires)), sig)
