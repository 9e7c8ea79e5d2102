"""End-user erasure (`DELETE /v1/users-data?user=`): every session of that end user goes with
its runs, messages, events, tool calls, checkpoints and Redis keys, with their memories and the
files only they used; another user of the same org and another org keep theirs, and the audit
log records the erasure without naming the user in clear."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import psycopg
from starlette.testclient import TestClient

from core import tenancy
from core.erasure import subject_digest
from core.infra import Infra
from core.settings import Settings
from tests.helpers import Org, error_of, populate_org

SESSION_DATA_SQL = """
SELECT (SELECT count(*) FROM sessions WHERE id = ANY(%(ids)s)) AS sessions,
       (SELECT count(*) FROM runs WHERE session_id = ANY(%(ids)s)) AS runs,
       (SELECT count(*) FROM messages WHERE session_id = ANY(%(ids)s)) AS messages,
       (SELECT count(*) FROM run_events WHERE session_id = ANY(%(ids)s)) AS run_events,
       (SELECT count(*) FROM session_files WHERE session_id = ANY(%(ids)s)) AS session_files,
       (SELECT count(*) FROM checkpoints WHERE thread_id = ANY(%(threads)s)) AS checkpoints,
       (SELECT count(*) FROM checkpoint_blobs WHERE thread_id = ANY(%(threads)s)) AS checkpoint_blobs,
       (SELECT count(*) FROM checkpoint_writes WHERE thread_id = ANY(%(threads)s)) AS checkpoint_writes,
       (SELECT count(*) FROM memories WHERE org_id = %(org)s AND user_id = %(user)s) AS memories,
       (SELECT count(*) FROM files WHERE id = ANY(%(files)s)) AS files
"""


def _data_of(database_url: str, org_id: str, user_id: str, made: dict[str, Any]) -> dict[str, int]:
    sid = made["session_id"]
    with psycopg.connect(database_url) as conn:
        row = conn.execute(SESSION_DATA_SQL, {"ids": [sid], "threads": [f"{org_id}:{sid}"], "org": org_id,
                                              "user": user_id, "files": [made["file_id"]]}).fetchone()
    assert row is not None
    names = ("sessions", "runs", "messages", "run_events", "session_files", "checkpoints", "checkpoint_blobs",
             "checkpoint_writes", "memories", "files")
    return dict(zip(names, (int(v) for v in row), strict=True))


def _stream_exists(settings: Settings, org_id: str, session_id: str) -> bool:
    async def check() -> bool:
        infra = await Infra.open(settings, name="test-erasure", pool_min=0, pool_max=1)
        try:
            return bool(await infra.redis.exists(tenancy.session_stream_key(org_id, session_id)))
        finally:
            await infra.close()

    return asyncio.run(check())


def test_erasing_an_end_user_removes_their_data_and_only_theirs(client: TestClient, settings: Settings, stack: Any,
                                                               org: Org, other_org: Org) -> None:
    alice = populate_org(org, settings, stack, user_id="alice", tag="alice")
    bob = populate_org(org, settings, stack, user_id="bob", tag="bob")
    elsewhere = populate_org(other_org, settings, stack, user_id="alice", tag="other org")
    before = {"alice": _data_of(stack.database_url, org.id, "alice", alice),
              "bob": _data_of(stack.database_url, org.id, "bob", bob),
              "elsewhere": _data_of(stack.database_url, other_org.id, "alice", elsewhere)}
    assert all(n > 0 for n in before["alice"].values()), before["alice"]
    assert _stream_exists(settings, org.id, alice["session_id"])
    storage = Path(settings.files.data_dir).resolve()
    alice_file = storage / org.id / alice["file_id"]
    assert alice_file.exists()

    member = org.key_with_role("member")
    error_of(client.delete("/v1/users-data?user=alice", headers={"Authorization": f"Bearer {member}"}), 403,
             "FORBIDDEN")
    error_of(client.delete("/v1/users-data", headers=org.headers), 422, "VALIDATION_FAILED")
    r = client.delete("/v1/users-data?user=alice", headers=org.headers)
    assert r.status_code == 200, r.text
    report = r.json()
    assert report["sessions"] == 1 and report["runs"] == 1 and report["messages"] >= 1 and report["run_events"] >= 1
    assert report["memories"] >= 1 and report["files"] == 1 and report["checkpoints"] == 3
    assert report["redis_keys"] >= 1

    assert _data_of(stack.database_url, org.id, "alice", alice) == dict.fromkeys(before["alice"], 0)
    assert not alice_file.exists()
    assert not _stream_exists(settings, org.id, alice["session_id"])
    assert _data_of(stack.database_url, org.id, "bob", bob) == before["bob"]
    assert _data_of(stack.database_url, other_org.id, "alice", elsewhere) == before["elsewhere"]
    assert (storage / org.id / bob["file_id"]).exists()
    error_of(client.get(f"/v1/sessions/{alice['session_id']}", headers=org.headers), 404, "NOT_FOUND")

    entries = client.get("/v1/audit-logs?action=user_data.erase", headers=org.headers).json()["data"]
    assert len(entries) == 1 and entries[0]["resource_id"] == subject_digest("alice")
    assert "alice" not in str(entries[0])  # the fact, not whose data it was in clear
    # Again: nothing left to erase, and it says so.
    again = client.delete("/v1/users-data?user=alice", headers=org.headers).json()
    assert again["sessions"] == 0 and again["memories"] == 0 and again["files"] == 0
