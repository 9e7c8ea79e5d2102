"""Org deletion (core.org_purge): the owner asks, naming the org; runs stop at once; the org can
be restored during the grace period; then the purge job leaves no row, checkpoint, Redis key or
stored file of it anywhere, and every other org's data is untouched."""

from __future__ import annotations

import asyncio
import inspect
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from starlette.testclient import TestClient

from core import tenancy
from core.infra import Infra
from core.settings import Settings
from core.tenant_data import CHECKPOINT_TABLES, TenantTable, _children_first, untracked_tables
from runtime.maintenance import JOBS, run_job
from tests.helpers import Org, error_of, new_org, populate_org, stored_run

TABLES_WITH_ORG_SQL = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'org_id' AND NOT a.attisdropped
WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
"""


def _rows_of(database_url: str, org_id: str) -> dict[str, int]:
    """The org's rows in every table with an org_id column (from the catalog), its org row and
    its checkpoint rows: what must all be zero after a purge."""
    counts: dict[str, int] = {}
    with psycopg.connect(database_url) as conn:
        tables = [r[0] for r in conn.execute(TABLES_WITH_ORG_SQL).fetchall()]
        assert len(tables) >= 20, tables  # the catalog query finds the tenant tables
        for table in tables:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE org_id = %s").format(sql.Identifier(table)),
                               (org_id,)).fetchone()
            counts[table] = int(row[0]) if row else -1
        for table in CHECKPOINT_TABLES:
            row = conn.execute(sql.SQL("SELECT count(*) FROM {} WHERE starts_with(thread_id, %s)").format(
                sql.Identifier(table)), (f"{org_id}:",)).fetchone()
            counts[table] = int(row[0]) if row else -1
        row = conn.execute("SELECT count(*) FROM orgs WHERE id = %s", (org_id,)).fetchone()
        counts["orgs"] = int(row[0]) if row else -1
    return counts


def _redis_keys(settings: Settings, org_id: str) -> list[bytes]:
    async def scan() -> list[bytes]:
        infra = await Infra.open(settings, name="test-org-deletion", pool_min=0, pool_max=1)
        try:
            return [k async for k in infra.redis.scan_iter(match=tenancy.org_key_pattern(org_id))]
        finally:
            await infra.close()

    return asyncio.run(scan())


def _purge_now(settings: Settings, database_url: str, org_id: str) -> str | None:
    """The grace period is over (the clock moves on), and the maintenance job runs once."""
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE orgs SET purge_after = now() - interval '1 second' WHERE id = %s", (org_id,))
    job = next(j for j in JOBS if j.name == "org_purge")

    async def go() -> str | None:
        infra = await Infra.open(settings, name="test-org-deletion", pool_min=0, pool_max=3)
        try:
            return await run_job(infra, job)
        finally:
            await infra.close()

    return asyncio.run(go())


def _delete(org: Org, confirm: str, org_id: str | None = None, headers: dict[str, str] | None = None) -> Any:
    return org.client.request("DELETE", f"/v1/orgs/{org_id or org.id}", json={"confirm": confirm},
                              headers=headers or org.headers)


def _name(client: TestClient, org: Org) -> str:
    from tests.helpers import ADMIN_TOKEN

    r = client.get(f"/v1/orgs/{org.id}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200, r.text
    return str(r.json()["name"])


def test_every_table_is_an_org_table_or_named_as_keyed_otherwise(settings: Settings) -> None:
    """A new table without an org_id column must be named in core.tenant_data (checkpoint-like or
    global), or org deletion, erasure and export would silently miss it."""
    async def go() -> list[str]:
        infra = await Infra.open(settings, name="test-org-deletion", pool_min=0, pool_max=1)
        try:
            async with infra.pool.connection() as conn:
                return await untracked_tables(conn)
        finally:
            await infra.close()

    assert asyncio.run(go()) == []


def test_every_redis_key_of_an_org_matches_its_deletion_pattern() -> None:
    """Each key builder in core.tenancy that holds an org's data puts the org first, so the purge's
    SCAN finds it; the event hub's wake-up stream holds none (and is the one exception)."""
    builders = [(name, fn) for name, fn in inspect.getmembers(tenancy, inspect.isfunction)
                if name.endswith("_key") and fn.__module__ == tenancy.__name__]
    assert len(builders) >= 10
    for name, fn in builders:
        if name == "event_hub_wake_key":
            continue
        params = list(inspect.signature(fn).parameters)
        assert params[0] == "org_id", name
        key = fn("org_abc", *["x"] * (len(params) - 1))
        assert fnmatchcase(key, tenancy.org_key_pattern("org_abc")), (name, key)
        assert not fnmatchcase(key, tenancy.org_key_pattern("org_abd")), (name, key)


def test_tables_are_emptied_children_first() -> None:
    tables = [TenantTable(n, True) for n in ("agents", "runs", "run_events", "sessions", "a", "b")]
    edges = [("runs", "sessions"), ("run_events", "runs"), ("run_events", "sessions"), ("sessions", "agents"),
             ("runs", "agents"), ("a", "b"), ("b", "a")]  # a cycle does not stop it
    order = [t.name for t in _children_first(tables, edges)]
    assert order.index("run_events") < order.index("runs") < order.index("sessions") < order.index("agents")
    assert sorted(order) == sorted(t.name for t in tables)


def test_only_the_owner_deletes_naming_the_org_and_can_restore_it(client: TestClient, settings: Settings, org: Org,
                                                                   other_org: Org) -> None:
    agent = org.create_agent()
    session = org.create_session(str(agent["id"]))
    name = _name(client, org)
    admin = org.key_with_role("admin")
    error_of(_delete(org, name, headers={"Authorization": f"Bearer {admin}"}), 403, "FORBIDDEN")
    error_of(_delete(org, name + "x"), 422, "VALIDATION_FAILED")
    error_of(_delete(org, name, org_id=other_org.id), 404, "NOT_FOUND")  # never another org
    # Queued and never sent to a worker (the suite's worker would otherwise run it meanwhile).
    queued = {"id": stored_run(settings, org.id, str(agent["id"]), str(session["id"]))}

    r = _delete(org, name)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "scheduled" and body["cancelled_runs"] == 1 and body["purge_after"] > body["requested_at"]
    assert org.client.get(f"/v1/runs/{queued['id']}", headers=org.headers).json()["status"] == "cancelled"
    error_of(org.client.post(f"/v1/sessions/{session['id']}/runs", json={"input": "hi"}, headers=org.headers),
             409, "ORG_DELETION_PENDING")
    error_of(_delete(org, name), 409, "CONFLICT")
    # The other org runs as before.
    other_session = other_org.create_session(str(other_org.create_agent()["id"]))
    assert other_org.client.post(f"/v1/sessions/{other_session['id']}/runs", json={"input": "hi"},
                                 headers=other_org.headers).status_code == 202

    restored = org.client.post(f"/v1/orgs/{org.id}/restore", headers=org.headers)
    assert restored.status_code == 200, restored.text
    assert restored.json()["status"] == "restored"
    assert org.client.post(f"/v1/sessions/{session['id']}/runs", json={"input": "hi"},
                           headers=org.headers).status_code == 202
    error_of(org.client.post(f"/v1/orgs/{org.id}/restore", headers=org.headers), 409, "CONFLICT")
    actions = [e["action"] for e in org.client.get("/v1/audit-logs", headers=org.headers).json()["data"]]
    assert "org.delete" in actions and "org.restore" in actions


def test_a_purged_org_leaves_nothing_anywhere_and_other_orgs_keep_everything(
        client: TestClient, settings: Settings, stack: Any) -> None:
    doomed, kept = new_org(client, "doomed"), new_org(client, "kept")
    populate_org(doomed, settings, stack, tag="doomed")
    populate_org(kept, settings, stack, tag="kept")
    doomed_before = _rows_of(stack.database_url, doomed.id)
    kept_before = _rows_of(stack.database_url, kept.id)
    for table in ("runs", "run_events", "messages", "memories", "knowledge_documents", "files", "session_files",
                  "org_secrets", "webhooks", "api_keys", "audit_logs", "checkpoints", "checkpoint_blobs"):
        assert doomed_before[table] > 0 and kept_before[table] > 0, table  # the test has something to remove
    assert _redis_keys(settings, doomed.id) and _redis_keys(settings, kept.id)
    storage_root = Path(settings.files.data_dir).resolve()
    assert any((storage_root / doomed.id).iterdir()) and any((storage_root / kept.id).iterdir())

    assert _delete(doomed, _name(client, doomed)).status_code == 202
    assert _rows_of(stack.database_url, doomed.id)["orgs"] == 1  # nothing is removed during the grace period
    report = _purge_now(settings, stack.database_url, doomed.id)

    assert report is not None and doomed.id in report
    left = {t: n for t, n in _rows_of(stack.database_url, doomed.id).items() if n}
    assert left == {}
    assert _redis_keys(settings, doomed.id) == []
    assert not (storage_root / doomed.id).exists()
    assert _rows_of(stack.database_url, kept.id) == kept_before
    assert _redis_keys(settings, kept.id)
    assert any((storage_root / kept.id).iterdir())
    assert client.get("/v1/me", headers=doomed.headers).status_code == 401  # its keys went with it
    assert client.get("/v1/me", headers=kept.headers).status_code == 200



def test_the_purge_removes_the_orgs_sandbox_workspaces_and_survives_a_missing_service(tmp_path: Path) -> None:
    from core.org_purge import delete_workspaces
    from core.settings import SandboxSettings
    from skills.sandbox.hosted import HostedBackend
    from skills.sandbox.modal import ModalProvider
    from skills.sandbox.service import create_sandbox_app
    from tests.fake_modal import Calls, fake_sdk
    from tests.helpers import serving

    root = tmp_path / "workspaces"
    for name in ("org_doomed/ses_1", "org_doomed/ses_2", "org_kept/ses_1"):
        (root / name).mkdir(parents=True)
        (root / name / "f").write_text("x")
    service = SandboxSettings(backend="modal", token="t0ken", workspaces_dir=str(root))  # type: ignore[arg-type]
    app = create_sandbox_app(service, HostedBackend(ModalProvider(service.modal, sdk=fake_sdk(Calls()))))
    with serving(app) as served:
        client_side = SandboxSettings(url=served.url, token="t0ken")  # type: ignore[arg-type]
        assert asyncio.run(delete_workspaces(client_side, "org_doomed")) == 2
    assert not (root / "org_doomed").exists() and (root / "org_kept/ses_1/f").exists()
    # The service gone: the purge goes on (the workspaces expire there), it does not fail.
    assert asyncio.run(delete_workspaces(client_side, "org_kept")) == 0
    assert asyncio.run(delete_workspaces(SandboxSettings(), "org_kept")) == 0  # no service configured
