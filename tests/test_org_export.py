"""Org export (core.org_export): the archive of an org with runs, memories, knowledge and files
holds every record of every org table, the files' bytes and the documents, and no secret value;
only the owner asks for one, and its download link works without a credential until it expires
and not once altered."""

from __future__ import annotations

import asyncio
import io
import json
import zipfile
from typing import Any, cast

import psycopg
import pytest
from psycopg import sql
from starlette.testclient import TestClient

from api.app import create_app
from core import org_export
from core.file_storage import FileStorage, open_storage
from core.infra import Infra
from core.settings import Settings
from core.tenancy import tenant_tx
from runtime.watchdog import sweep_once
from tests.helpers import Org, error_of, make_settings, populate_org, until

TABLES_WITH_ORG_SQL = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'org_id' AND NOT a.attisdropped
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
"""


def _build(settings: Settings, org_id: str) -> str:
    """An export recorded and built in this process, against the API's own file storage (the
    suite's worker keeps its files elsewhere)."""
    async def go() -> str:
        infra = await Infra.open(settings, name="test-export", pool_min=0, pool_max=2)
        try:
            async with tenant_tx(infra.pool, org_id) as conn:
                row = await org_export.create(conn, "test")
            assert await org_export.build(infra.pool, open_storage(settings.files), org_id, row["id"]) == "succeeded"
            return str(row["id"])
        finally:
            await infra.close()

    return asyncio.run(go())


def _rows(database_url: str, org_id: str) -> dict[str, int]:
    with psycopg.connect(database_url) as conn:
        tables = [r[0] for r in conn.execute(TABLES_WITH_ORG_SQL).fetchall()]
        counts = {}
        for table in tables:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE org_id = %s").format(sql.Identifier(table)),
                               (org_id,)).fetchone()
            counts[table] = int(row[0]) if row else -1
    return counts


def test_an_export_round_trips_every_record_and_no_secret(client: TestClient, settings: Settings, stack: Any,
                                                         org: Org, other_org: Org) -> None:
    made = populate_org(org, settings, stack, tag="exported")
    populate_org(other_org, settings, stack, tag="not ours")
    export_id = _build(settings, org.id)
    expected = _rows(stack.database_url, org.id)
    assert expected["org_exports"] == 1

    r = client.get(f"/v1/orgs/{org.id}/exports/{export_id}", headers=org.headers)
    assert r.status_code == 200, r.text
    export = r.json()
    assert export["status"] == "succeeded" and export["progress"]["tables_done"] == export["progress"]["tables_total"]
    assert export["progress"]["files"] == 1 and export["progress"]["documents"] == 1
    download = client.get(export["download_url"])  # no credential: the link is the permission
    assert download.status_code == 200 and download.headers["content-type"] == "application/zip"
    assert len(download.content) == export["size_bytes"]

    archive = zipfile.ZipFile(io.BytesIO(download.content))
    manifest = json.loads(archive.read("manifest.json"))
    for table, count in expected.items():
        lines = archive.read(f"tables/{table}.jsonl").decode().splitlines()
        records = [json.loads(line) for line in lines]
        # Every record (the export's own row too, read while it ran), and only this org's.
        assert len(records) == count, table
        assert all(rec["org_id"] == org.id for rec in records), table
        assert manifest["tables"][table] == len(records)
    runs = [json.loads(x) for x in archive.read("tables/runs.jsonl").decode().splitlines()]
    assert [run["id"] for run in runs] == [made["run_id"]]
    events = [json.loads(x) for x in archive.read("tables/run_events.jsonl").decode().splitlines()]
    assert {e["type"] for e in events} >= {"run.queued"}
    memories = [json.loads(x) for x in archive.read("tables/memories.jsonl").decode().splitlines()]
    assert made["memory_id"] in {m["id"] for m in memories} and all("embedding" not in m for m in memories)
    assert archive.read(f"files/{made['file_id']}/notes.txt") == b"notes exported"
    assert archive.read(f"knowledge/{made['document_id']}.txt") == b"The handbook exported."
    assert json.loads(archive.read("org.json"))["id"] == org.id
    secrets = [json.loads(x) for x in archive.read("tables/org_secrets.jsonl").decode().splitlines()]
    assert "api_token" in {s["name"] for s in secrets}  # by name only
    everything = b"".join(archive.read(name) for name in archive.namelist())
    assert f"SECRET-{org.id}".encode() not in everything
    with psycopg.connect(stack.database_url) as conn:
        hashes = [r[0] for r in conn.execute("SELECT secret_hash FROM api_keys WHERE org_id = %s", (org.id,))]
        envelopes = [bytes(r[0]) for r in conn.execute("SELECT ciphertext FROM org_secrets WHERE org_id = %s",
                                                       (org.id,))]
    assert hashes and not any(h.encode() in everything for h in hashes)
    assert envelopes and not any(e in everything for e in envelopes)
    for name in archive.namelist():
        if name.startswith("tables/"):
            for line in archive.read(name).decode().splitlines():
                assert not {"secret_hash", "ciphertext", "wrapped_key", "embedding"} & set(json.loads(line)), name
    assert b"not ours" not in everything and other_org.id.encode() not in everything

    altered = export["download_url"].replace("sig=", "sig=0")
    error_of(client.get(altered), 403, "FORBIDDEN")
    expired = export["download_url"].split("?")[0] + "?expires=1&sig=" + export["download_url"].split("sig=")[1]
    error_of(client.get(expired), 403, "FORBIDDEN")


def test_only_the_owner_exports_its_own_org(client: TestClient, org: Org, other_org: Org) -> None:
    admin = {"Authorization": f"Bearer {org.key_with_role('admin')}"}
    error_of(client.post(f"/v1/orgs/{org.id}/exports", headers=admin), 403, "FORBIDDEN")
    error_of(client.post(f"/v1/orgs/{other_org.id}/exports", headers=org.headers), 404, "NOT_FOUND")
    r = client.post(f"/v1/orgs/{org.id}/exports", headers=org.headers)
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/v1/orgs/{org.id}/exports/{r.json()['id']}"
    assert r.json()["status"] == "queued" and r.json()["download_url"] is None
    seen = client.get(r.headers["location"], headers=org.headers)
    assert seen.status_code == 200 and seen.json()["id"] == r.json()["id"]
    error_of(client.get(r.headers["location"], headers=other_org.headers), 404, "NOT_FOUND")
    actions = [e["action"] for e in client.get("/v1/audit-logs", headers=org.headers).json()["data"]]
    assert "org.export" in actions


def _export_status(org: Org, export_id: str) -> str:
    r = org.client.get(f"/v1/orgs/{org.id}/exports/{export_id}", headers=org.headers)
    assert r.status_code == 200, r.text
    return str(r.json()["status"])


@pytest.mark.timeout(120)
def test_an_export_asked_for_without_a_broker_is_kept_and_the_watchdog_sends_it(
        client: TestClient, org: Org, settings: Settings, stack: Any, rsa_keys: Any, worker: object) -> None:
    """The broker away: the export is stored queued all the same (202, `AgentOS-Deferred`), and the
    watchdog sends it once it has waited `requeue_after_s`; one just asked for is left alone."""
    away = make_settings(stack, rsa_keys, redis={"url": "redis://127.0.0.1:9/0", "socket_timeout_s": 0.5})
    with TestClient(create_app(away)) as no_broker:
        r = no_broker.post(f"/v1/orgs/{org.id}/exports", headers=org.headers)
    assert r.status_code == 202, r.text
    assert r.headers["AgentOS-Deferred"] == "broker-unavailable"
    lost = r.json()["id"]
    assert _export_status(org, lost) == "queued"
    with psycopg.connect(stack.database_url) as conn:  # waited longer than requeue_after_s
        conn.execute("UPDATE org_exports SET created_at = now() - interval '1 hour' WHERE id = %s", (lost,))
    recent = org_export_row(settings, org.id)  # stored a moment ago, never sent either

    report = asyncio.run(sweep_once(settings))
    assert lost in report.exports_resent and recent not in report.exports_resent
    until(lambda: _export_status(org, lost) in ("succeeded", "failed"), 60)
    assert _export_status(org, lost) == "succeeded"
    assert _export_status(org, recent) == "queued"


@pytest.mark.timeout(120)
def test_an_export_whose_worker_stopped_is_sent_again_and_finishes(
        org: Org, settings: Settings, stack: Any, worker: object) -> None:
    """A worker that dies building an export leaves it `running`, its beat stopped: the watchdog
    sends it again once the beat is `requeue_after_s` old, and a worker builds it to the end. A
    running export whose beat is fresh (its worker alive) is left alone."""
    stopped, alive = org_export_row(settings, org.id), org_export_row(settings, org.id)
    with psycopg.connect(stack.database_url) as conn:  # as a worker's first step leaves them
        conn.execute("UPDATE org_exports SET status = 'running', heartbeat_at = now() - interval '1 hour' "
                     "WHERE id = %s", (stopped,))
        conn.execute("UPDATE org_exports SET status = 'running', heartbeat_at = now() WHERE id = %s", (alive,))

    report = asyncio.run(sweep_once(settings))
    assert stopped in report.exports_resent and alive not in report.exports_resent
    until(lambda: _export_status(org, stopped) in ("succeeded", "failed"), 60)
    assert _export_status(org, stopped) == "succeeded"
    assert _export_status(org, alive) == "running"


def test_a_worker_building_an_export_beats(org: Org, settings: Settings, stack: Any) -> None:
    """While an export is built its `heartbeat_at` is renewed every `beat_s`: here 0.05 s, read
    five times while a slow file storage takes 0.5 s to store the archive (nothing else touches
    the row then)."""
    export_id = org_export_row(settings, org.id)

    def beat() -> Any:
        with psycopg.connect(stack.database_url) as conn:
            row = conn.execute("SELECT heartbeat_at FROM org_exports WHERE id = %s", (export_id,)).fetchone()
        return row[0] if row else None

    beats: list[Any] = []

    class SlowStorage:
        def __init__(self) -> None:
            self.inner = open_storage(settings.files)

        async def get(self, key: str) -> bytes:
            return await self.inner.get(key)

        async def put(self, key: str, data: bytes) -> None:
            for _ in range(5):
                await asyncio.sleep(0.1)
                beats.append(await asyncio.to_thread(beat))
            await self.inner.put(key, data)

    async def go() -> str:
        infra = await Infra.open(settings, name="test-export", pool_min=0, pool_max=2)
        try:
            return await org_export.build(infra.pool, cast(FileStorage, SlowStorage()), org.id, export_id, beat_s=0.05)
        finally:
            await infra.close()

    assert asyncio.run(go()) == "succeeded"
    assert None not in beats and len(set(beats)) >= 3, beats  # (a beat may land late on a busy machine)


def org_export_row(settings: Settings, org_id: str) -> str:
    """An export recorded as the route does, but not sent to the workers."""
    async def go() -> str:
        infra = await Infra.open(settings, name="test-export", pool_min=0, pool_max=1)
        try:
            async with tenant_tx(infra.pool, org_id) as conn:
                return str((await org_export.create(conn, "test"))["id"])
        finally:
            await infra.close()

    return asyncio.run(go())
