"""Service-side workspaces (`workspace` in `POST /execute`): files persist between executions in
the service, confined to their `<tenant>/<name>` directory, size-limited, removable and swept.
The service here runs over the fake Modal backend (tests/fake_modal.py), which runs the code on
this machine: workspaces live in the service, whatever the backend."""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from core.settings import SandboxLimits, SandboxSettings
from skills.sandbox.client import SandboxClient, SandboxError
from skills.sandbox.hosted import HostedBackend
from skills.sandbox.modal import ModalProvider
from skills.sandbox.protocol import ExecuteRequest, FileChange
from skills.sandbox.service import create_sandbox_app
from skills.sandbox.workspaces import Workspaces
from tests.fake_modal import Calls, fake_sdk

TOKEN = "workspace-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def settings_for(root: Path, **values: Any) -> SandboxSettings:
    return SandboxSettings(backend="modal", token=TOKEN, workspaces_dir=str(root), **values)  # type: ignore[arg-type]


@pytest.fixture
def service(tmp_path: Path) -> Iterator[tuple[TestClient, Path, Calls]]:
    calls = Calls()
    settings = settings_for(tmp_path / "workspaces", defaults=SandboxLimits(disk_mb=1))
    app = create_sandbox_app(settings, HostedBackend(ModalProvider(settings.modal, sdk=fake_sdk(calls))))
    with TestClient(app) as client:
        yield client, tmp_path / "workspaces", calls


def run(client: TestClient, code: str, workspace: str | None, **body: Any) -> dict[str, Any]:
    response = client.post("/execute", json={"language": "bash", "code": code, "workspace": workspace, **body},
                           headers=AUTH)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def test_files_persist_between_executions_in_the_same_workspace_only(
        service: tuple[TestClient, Path, Calls]) -> None:
    client, root, _ = service
    first = run(client, "echo kept > a.txt; mkdir d; echo x > d/b.txt", "org_a/ses_1")
    assert {c["path"] for c in first["files_changed"]} == {"a.txt", "d/b.txt"}
    second = run(client, "cat a.txt; rm -r d; ls", "org_a/ses_1")
    assert second["stdout"] == "kept\na.txt\n"
    assert second["files_changed"] == [{"path": "d/b.txt", "change": "deleted", "size": None, "content": None}]
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["org_a", "org_a/ses_1",
                                                                                "org_a/ses_1/a.txt"]
    # Another session of the org, another org's session of the same name, no workspace: none see it.
    for other in ("org_a/ses_2", "org_b/ses_1", None):
        assert run(client, "ls; cat a.txt", other)["stdout"] == ""
    # Request files are laid over the workspace's.
    over = run(client, "cat a.txt", "org_a/ses_1", files={"a.txt": base64.b64encode(b"sent\n").decode()})
    assert over["stdout"] == "sent\n" and (root / "org_a/ses_1/a.txt").read_text() == "sent\n"


@pytest.mark.parametrize("name", ["../etc", "org_a", "org_a/ses_1/x", "org_a/..", "org_a/.", "/org_a/s", "",
                                  "org a/s", "org_a/" + "s" * 65])
def test_a_workspace_name_outside_the_pattern_is_422(service: tuple[TestClient, Path, Calls], name: str) -> None:
    client, root, calls = service
    response = client.post("/execute", json={"language": "bash", "code": "echo", "workspace": name}, headers=AUTH)
    assert response.status_code == 422 and response.json()["error"]["details"]["fields"]["workspace"]
    assert calls.created == [] and not root.exists()  # not even made: no workspace was used


def test_a_workspace_larger_than_the_workdir_is_refused_not_truncated(
        service: tuple[TestClient, Path, Calls]) -> None:
    client, root, _ = service
    # The fake backend has no size-limited tmpfs, so the code can leave more than disk_mb (1 MiB) behind.
    run(client, "head -c 700000 /dev/zero > big; head -c 700000 /dev/zero > big2", "org_a/ses_1")
    response = client.post("/execute", json={"language": "bash", "code": "ls", "workspace": "org_a/ses_1"},
                           headers=AUTH)
    assert response.status_code == 422
    assert "holds more than limits.disk_mb" in response.json()["error"]["message"]
    assert (root / "org_a/ses_1/big2").stat().st_size == 700_000  # refused, never cut


def test_an_execution_killed_at_the_wall_limit_changes_nothing(service: tuple[TestClient, Path, Calls]) -> None:
    client, root, _ = service
    run(client, "echo 1 > n", "org_a/ses_1")
    killed = run(client, "echo 2 > n; rm -f other; sleep 30", "org_a/ses_1", limits={"wall_s": 1})
    assert killed["timed_out"] is True
    assert (root / "org_a/ses_1/n").read_text() == "1\n"


def test_a_workspace_is_deleted_on_request_and_only_with_the_token(service: tuple[TestClient, Path, Calls]) -> None:
    client, root, _ = service
    run(client, "echo x > f", "org_a/ses_1")
    assert client.delete("/workspaces/org_a/ses_1").status_code == 401
    assert client.delete("/workspaces/org_a/ses_1", headers=AUTH).status_code == 204
    assert not (root / "org_a/ses_1").exists()
    assert run(client, "ls", "org_a/ses_1")["stdout"] == ""
    assert client.delete("/workspaces/org_b/ses_9", headers=AUTH).status_code == 404
    assert client.delete("/workspaces/org_a/..", headers=AUTH).status_code in (404, 422)


def test_all_of_a_tenants_workspaces_go_at_once_and_only_theirs(service: tuple[TestClient, Path, Calls]) -> None:
    """What org deletion (core.org_purge.delete_workspaces) asks of the service."""
    client, root, _ = service
    for name in ("org_a/ses_1", "org_a/ses_2", "org_b/ses_1"):
        run(client, "echo x > f", name)
    assert client.delete("/workspaces/org_a").status_code == 401
    r = client.delete("/workspaces/org_a", headers=AUTH)
    assert r.status_code == 200 and r.json() == {"deleted": 2}
    assert not (root / "org_a").exists() and (root / "org_b/ses_1/f").exists()
    assert client.delete("/workspaces/org_a", headers=AUTH).json() == {"deleted": 0}
    assert client.delete("/workspaces/..", headers=AUTH).status_code in (404, 422)


def test_the_workers_client_never_sends_another_orgs_workspace(tmp_path: Path) -> None:
    calls = Calls()
    settings = settings_for(tmp_path)
    app = create_sandbox_app(settings, HostedBackend(ModalProvider(settings.modal, sdk=fake_sdk(calls))))

    async def go() -> tuple[str, str]:
        client = SandboxClient(SandboxSettings(url="http://sandbox", token=TOKEN),  # type: ignore[arg-type]
                               None, transport=httpx.ASGITransport(app))
        try:
            with pytest.raises(SandboxError) as refused:
                await client.execute("org_a", ExecuteRequest(language="bash", code="ls", workspace="org_b/ses_1"))
            own = await client.execute("org_a", ExecuteRequest(language="bash", code="echo ok",
                                                               workspace="org_a/ses_1"))
            return str(refused.value), own.stdout
        finally:
            await client.aclose()

    refused, own = asyncio.run(go())
    assert refused == "The workspace 'org_b/ses_1' is not this organisation's; the code did not run."
    assert own == "ok\n" and len(calls.created) == 1  # the refused one never reached the service


def test_unused_workspaces_are_swept_and_symlinks_are_never_followed(tmp_path: Path) -> None:
    spaces = Workspaces(str(tmp_path / "w"), ttl_s=60)
    spaces.save("org_a/old", [FileChange(path="f", change="created", size=1, content="eA==")])
    spaces.save("org_a/new", [FileChange(path="f", change="created", size=1, content="eA==")])
    past = time.time() - 120
    os.utime(tmp_path / "w/org_a/old", (past, past))
    assert spaces.sweep() == ["org_a/old"]
    assert (tmp_path / "w/org_a/new/f").exists() and not (tmp_path / "w/org_a/old").exists()

    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "w/org_a/new/link").symlink_to(outside)
    (tmp_path / "w/org_a/new/etc").symlink_to("/etc/hostname")
    spaces.save("org_a/new", [FileChange(path="link/x", change="created", size=1, content="eA==")])
    assert list(outside.iterdir()) == []
    assert set(spaces.load("org_a/new", 2**20)) == {"f"}  # neither symlink is read

    temporary = Workspaces(None, ttl_s=60)
    made = temporary.root
    assert made.is_dir() and made.stat().st_mode & 0o777 == 0o700
    temporary.close()
    assert not made.exists()
