"""Remote runners, part one: the resource (create, list, revoke), the token (shown once, hashed,
good for nothing but being a runner) and the runner's connection to the platform."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import httpx
import psycopg
import pytest
from starlette.testclient import TestClient

from core.settings import Settings
from tests.helpers import Org, create_runner, error_of, runner_process, serving, until


def test_create_list_get_revoke(org: Org, settings: Settings) -> None:
    created = create_runner(org, "laptop", os="linux")
    token = str(created["token"])
    assert token.startswith(f"aosr_{created['prefix']}_") and created["online"] is False
    listed = org.client.get("/v1/runners", headers=org.headers).json()["data"]
    assert [r["id"] for r in listed] == [created["id"]] and "token" not in listed[0]
    assert listed[0]["labels"] == {"os": "linux"}
    # Only the hash of the secret is stored.
    with psycopg.connect(settings.database.url) as conn:
        stored = conn.execute("SELECT secret_hash FROM runners WHERE id = %s", (created["id"],)).fetchone()
    assert stored is not None and token.split("_")[2] not in stored[0]
    assert stored[0] == hashlib.sha256(token.split("_")[2].encode()).hexdigest()
    # A live name is taken; once revoked, it is free again.
    error_of(org.client.post("/v1/runners", json={"name": "laptop"}, headers=org.headers), 409, "CONFLICT")
    revoked = org.client.delete(f"/v1/runners/{created['id']}", headers=org.headers)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    assert org.client.get(f"/v1/runners/{created['id']}", headers=org.headers).json()["revoked_at"] is not None
    create_runner(org, "laptop")


def test_admin_only_and_other_orgs_invisible(org: Org, other_org: Org) -> None:
    created = create_runner(org)
    member = {"Authorization": f"Bearer {org.key_with_role('member')}"}
    error_of(org.client.post("/v1/runners", json={"name": "x"}, headers=member), 403, "FORBIDDEN")
    error_of(org.client.get(f"/v1/runners/{created['id']}", headers=other_org.headers), 404, "NOT_FOUND")
    error_of(org.client.delete(f"/v1/runners/{created['id']}", headers=other_org.headers), 404, "NOT_FOUND")
    assert other_org.client.get("/v1/runners", headers=other_org.headers).json()["data"] == []


def test_runner_token_is_only_a_runner(client: TestClient, org: Org) -> None:
    token = create_runner(org)["token"]
    as_runner = {"Authorization": f"Bearer {token}"}
    for path in ("/v1/me", "/v1/agents", "/v1/runners", "/v1/sessions"):
        error_of(client.get(path, headers=as_runner), 401, "UNAUTHENTICATED")
    # And an org credential is not a runner's.
    error_of(client.post("/v1/runner/calls/tc_0123456789abcdef0123456789ab/result", json={},
                         headers=org.headers), 401, "UNAUTHENTICATED")


def test_results_of_unknown_or_foreign_calls_are_refused(client: TestClient, org: Org) -> None:
    as_runner = {"Authorization": f"Bearer {create_runner(org)['token']}"}
    error_of(client.post("/v1/runner/calls/tc_0123456789abcdef0123456789ab/result", json={"output": 1},
                         headers=as_runner), 404, "NOT_FOUND")
    error_of(client.post("/v1/runner/calls/nonsense/result", json={}, headers=as_runner), 404, "NOT_FOUND")


@pytest.fixture
def served_api(settings: Settings):  # type: ignore[no-untyped-def]
    from api.app import create_app

    fast = settings.model_copy(update={"runners": settings.runners.model_copy(update={"heartbeat_s": 0.5})})
    with serving(create_app(fast)) as served:
        yield served


def test_runner_connects_and_shows_online_then_revoked_is_refused(served_api, org: Org,  # type: ignore[no-untyped-def]
                                                                  tmp_path: Path) -> None:
    created = create_runner(org)
    proc = runner_process(served_api.url, str(created["token"]), tmp_path / "state", "--allow-unsandboxed")
    proc.start()
    try:
        def online() -> bool:
            return bool(org.client.get(f"/v1/runners/{created['id']}", headers=org.headers).json()["online"])

        until(online, 30)
        assert online(), proc.log_tail(50)
        seen = org.client.get(f"/v1/runners/{created['id']}", headers=org.headers).json()["last_seen_at"]
        assert seen is not None
        org.client.delete(f"/v1/runners/{created['id']}", headers=org.headers)
        # The open stream ends within a heartbeat; reconnecting is refused, and the runner exits.
        until(lambda: not proc.alive(), 30)
        assert not proc.alive(), proc.log_tail(50)
        assert "refused" in proc.log_tail(50)
        assert not online()
    finally:
        proc.stop()
    r = httpx.get(f"{served_api.url}/v1/runner/calls", headers={"Authorization": f"Bearer {created['token']}"})
    assert r.status_code == 401 and json.loads(r.text)["error"]["code"] == "UNAUTHENTICATED"


def test_runner_only_skills_need_a_route(org: Org) -> None:
    body = {"name": "coder", "skills": ["shell", "file_manager"]}
    error = error_of(org.client.post("/v1/agents", json=body, headers=org.headers), 422, "VALIDATION_FAILED")
    assert "exists only on runners" in error["message"]
    routed = body | {"runner": {"labels": {"os": "linux"}, "skills": ["shell"]}}
    created = org.client.post("/v1/agents", json=routed, headers=org.headers)
    assert created.status_code == 201, created.text
    assert created.json()["runner"] == {"name": None, "labels": {"os": "linux"}, "skills": ["shell"]}
    both = body | {"name": "x", "runner": {"name": "a", "labels": {"os": "linux"}}}
    error_of(org.client.post("/v1/agents", json=both, headers=org.headers), 422, "VALIDATION_FAILED")
    web = body | {"name": "y", "runner": {"name": "a", "skills": ["web_fetch"]}}
    error_of(org.client.post("/v1/agents", json=web, headers=org.headers), 422, "VALIDATION_FAILED")


def test_the_operator_allowlist_read_only_mode_and_path_confinement(tmp_path: Path) -> None:
    import asyncio

    from agentos.runner.tools import Executor, Sandbox
    from agentos.runner.workspace import Workspaces

    run_id = "run_" + "0" * 28
    plain = Executor(Workspaces(tmp_path / "ws", None), Sandbox(None), frozenset({"file_manager", "shell"}))
    read_only = Executor(Workspaces(tmp_path / "ro", None), Sandbox(None), read_only=True)

    def run(executor: Executor, name: str, args: dict[str, object]) -> dict[str, object]:
        return asyncio.run(executor.execute(run_id, name, args))

    assert "does not allow 'git'" in str(run(plain, "git", {"action": "status"})["error"])
    assert "does not execute 'web_fetch'" in str(run(plain, "web_fetch", {})["error"])
    assert "outside" in str(run(plain, "file_manager", {"action": "write", "path": "../x", "content": "x"})["error"])
    assert not (tmp_path / "ws" / "x").exists()
    written = run(plain, "file_manager", {"action": "write", "path": "a.txt", "content": "hi"})
    assert "error" not in written and (tmp_path / "ws" / run_id / "a.txt").read_text() == "hi"
    shell = run(plain, "shell", {"command": "cat a.txt; pwd"})["output"]
    assert isinstance(shell, dict) and shell["stdout"] == f"hi{tmp_path / 'ws' / run_id}\n"
    for name, args in [("shell", {"command": "true"}), ("code_executor", {"language": "bash", "code": "true"}),
                       ("file_manager", {"action": "write", "path": "b", "content": ""}),
                       ("git", {"action": "commit"})]:
        assert "read-only" in str(run(read_only, name, args)["error"]), name
    assert run(read_only, "file_manager", {"action": "list"})["output"] == {"path": ".", "entries": []}


def test_the_journal_runs_a_call_once_and_fails_one_cut_off(tmp_path: Path) -> None:
    from agentos.runner.journal import INTERRUPTED, Journal

    journal = Journal(tmp_path / "j.sqlite3")
    assert journal.start("tc_1", "run_1", "shell", durable=True) is True
    assert journal.start("tc_1", "run_1", "shell", durable=True) is False  # never a second execution
    journal.finish("tc_1", {"output": 1})
    assert journal.start("tc_2", "run_1", "shell", durable=True) is True  # then the process dies
    journal.close()
    again = Journal(tmp_path / "j.sqlite3")
    assert again.recover() == 1
    entry = again.get("tc_2")
    assert entry is not None and entry.result == {"error": INTERRUPTED}
    assert [e.id for e in again.unposted()] == ["tc_1", "tc_2"]
    again.posted("tc_1")
    assert [e.id for e in again.unposted()] == ["tc_2"]
    again.close()


def test_journal_marks_not_forced_to_disk_survive_a_sigkill(tmp_path: Path) -> None:
    """A read-only call's start mark and every result are committed without an fsync: a runner
    killed at once after writing them (SIGKILL, no chance to flush anything) still has them."""
    import subprocess
    import sys

    from agentos.runner.journal import Journal

    code = (
        "import os, signal, sys\n"
        "from pathlib import Path\n"
        "from agentos.runner.journal import Journal\n"
        "j = Journal(Path(sys.argv[1]))\n"
        "j.start('tc_read', 'run_1', 'file_manager', durable=False)\n"
        "j.start('tc_done', 'run_1', 'file_manager', durable=False)\n"
        "j.finish('tc_done', {'output': 'kept'})\n"
        "j.posted('tc_done')\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "j.sqlite3")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == -9, done.stderr
    journal = Journal(tmp_path / "j.sqlite3")
    read, finished = journal.get("tc_read"), journal.get("tc_done")
    assert read is not None and read.state == "started"  # answered as interrupted, never run again
    assert finished is not None and finished.result == {"output": "kept"} and finished.posted
    journal.close()


def test_only_calls_that_can_change_something_are_forced_to_disk_before_they_run() -> None:
    from agentos.runner.tools import changes_files

    writing = [("shell", {"command": "ls"}), ("code_executor", {"language": "python", "code": "1"}),
               ("file_manager", {"action": "write", "path": "a", "content": ""}), ("git", {"action": "commit"}),
               ("file_manager", {"action": "delete", "path": "a"})]
    reading = [("file_manager", {"action": "list"}), ("file_manager", {"action": "read", "path": "a"}),
               ("git", {"action": "status"}), ("git", {"action": "diff"})]
    assert all(changes_files(name, args) for name, args in writing)
    assert not any(changes_files(name, args) for name, args in reading)


def test_backoff_is_exponential_with_full_jitter() -> None:
    import random

    from agentos.runner.link import backoff_delay

    random.seed(1)
    delays = [[backoff_delay(attempt, 0.5, 30.0) for _ in range(200)] for attempt in range(10)]
    assert all(0 <= d <= min(30.0, 0.5 * 2**a) for a, row in enumerate(delays) for d in row)
    assert max(delays[0]) <= 0.5 < max(delays[3]) and max(delays[9]) > 15  # grows, capped at 30
    assert len({round(d, 6) for d in delays[5]}) > 150  # spread: runners do not reconnect in step
