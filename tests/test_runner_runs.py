"""Remote runners, end to end: a real `agentos runner` process against the API (real HTTP) and
the suite's real worker. Calls routed to the runner run there, in the run's own git worktree;
a run whose runner is offline waits like an approval and resumes when it returns, or fails the
call readably past the timeout; no org reaches another's runner or calls."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from core.infra import Infra
from core.runner_waits import fail_overdue_waits
from core.settings import Settings
from tests.helpers import (
    Org,
    Served,
    create_runner,
    error_of,
    git_repo,
    runner_online,
    runner_process,
    serving,
    start_run,
    until,
    wait,
)
from tests.sse import read_events


@pytest.fixture
def api(settings: Settings) -> Iterator[Served]:
    """The API over real HTTP, with quick heartbeats (a runner's absence shows within ~1.5 s)."""
    from api.app import create_app

    fast = settings.model_copy(update={"runners": settings.runners.model_copy(update={"heartbeat_s": 0.5})})
    with serving(create_app(fast)) as served:
        yield served


def routed_agent(org: Org, runner: str) -> dict[str, Any]:
    return org.create_agent(model="offline:default", skills=["file_manager", "shell", "git"], runner=runner,
                            confirm="none", limits={"max_steps": 300, "timeout_s": 600})


def script(*calls: tuple[str, dict[str, Any]]) -> str:
    return "\n".join(f"call: {name} {json.dumps(args)}" for name, args in calls)


def run_events(org: Org, run_id: str) -> list[dict[str, Any]]:
    return read_events(org.client, f"/v1/runs/{run_id}/events", org.headers)


def run_status(org: Org, run_id: str) -> str:
    return str(org.client.get(f"/v1/runs/{run_id}", headers=org.headers).json()["status"])


def test_a_run_writes_a_file_runs_a_command_and_commits_in_its_worktree(api, org, worker, tmp_path: Path) -> None:
    repo = git_repo(tmp_path / "repo")
    runner = create_runner(org, "laptop")
    proc = runner_process(api.url, runner["token"], tmp_path / "state", "--repo", str(repo))
    proc.start()
    try:
        until(lambda: runner_online(org, runner["id"]), 30)
        assert runner_online(org, runner["id"]), proc.log_tail(50)
        session = org.create_session(str(routed_agent(org, "laptop")["id"]))
        run = start_run(org, str(session["id"]), script(
            ("file_manager", {"action": "write", "path": "notes/hello.txt", "content": "hello from the agent\n"}),
            ("shell", {"command": "cp notes/hello.txt copy.txt && wc -l < copy.txt"}),
            ("git", {"action": "commit", "message": "the agent's work"}),
            ("shell", {"command": "echo later > after.txt"}),
        ))
        done = wait(org, run["id"], 90)
        assert done["status"] == "succeeded", (done, proc.log_tail(50))
        # Once the run ended, the runner commits what is left and reports the run's workspace.
        path = f"/v1/runs/{run['id']}/workspaces"
        until(lambda: bool(org.client.get(path, headers=org.headers).json()["data"]), 30)
        workspaces = org.client.get(path, headers=org.headers).json()["data"]
        assert len(workspaces) == 1, proc.log_tail(50)
    finally:
        proc.stop()
    events = run_events(org, run["id"])
    calls = [e["data"] for e in events if e["type"] == "tool.call"]
    results = {e["data"]["tool_call_id"]: e["data"] for e in events if e["type"] == "tool.result"}
    delivered = {e["data"]["tool_call_id"] for e in events if e["type"] == "runner.delivered"}
    assert [c["name"] for c in calls] == ["file_manager", "shell", "git", "shell"]
    assert delivered == {c["tool_call_id"] for c in calls} == set(results)
    outputs = [results[c["tool_call_id"]] for c in calls]
    assert all("error" not in o or o["error"] is None for o in outputs), outputs
    assert outputs[1]["output"]["exit_code"] == 0 and outputs[1]["output"]["stdout"].strip() == "1"
    commit = outputs[2]["output"]
    assert commit["branch"] == f"agentos/{run['id']}" and "copy.txt" in commit["diff_stat"]
    # The commit is on the run's branch of the repository, with the run id in its message; the
    # repository's own checkout is untouched.
    log = subprocess.run(["git", "log", "-1", "--format=%H%n%B", commit["commit"]], cwd=repo,
                         capture_output=True, text=True, check=True).stdout
    assert log.startswith(commit["commit"]) and run["id"] in log
    files = subprocess.run(["git", "show", "--name-only", "--format=", commit["commit"]], cwd=repo,
                           capture_output=True, text=True, check=True).stdout.split()
    assert sorted(files) == ["copy.txt", "notes/hello.txt"]
    assert not (repo / "copy.txt").exists()
    # The end-of-run commit holds the rest, with the run id in its message; the diff summary of
    # the whole branch is attached to the run.
    ending = workspaces[0]
    assert ending["runner_id"] == runner["id"] and ending["branch"] == f"agentos/{run['id']}"
    head = subprocess.run(["git", "log", "-1", "--format=%H%n%B", f"agentos/{run['id']}"], cwd=repo,
                          capture_output=True, text=True, check=True).stdout
    assert head.startswith(ending["commit"]) and run["id"] in head and ending["commit"] != commit["commit"]
    for name in ("after.txt", "copy.txt", "notes/hello.txt"):
        assert name in ending["diff_stat"]
    assert "3 files changed" in ending["diff_stat"]
    # Every result is in the audit log, by the runner.
    audit = org.client.get("/v1/audit-logs?action=runner.result", headers=org.headers).json()["data"]
    assert {a["resource_id"] for a in audit} >= {c["tool_call_id"] for c in calls}
    assert all(a["actor"] == f"runner:{runner['id']}" for a in audit)


def test_an_offline_runner_makes_the_run_wait_and_it_resumes_when_the_runner_returns(
        api, org, worker, tmp_path: Path) -> None:
    runner = create_runner(org, "laptop")
    session = org.create_session(str(routed_agent(org, "laptop")["id"]))
    run = start_run(org, str(session["id"]), script(("shell", {"command": "echo back"})))
    until(lambda: run_status(org, run["id"]) == "awaiting_confirmation", 60)
    assert run_status(org, run["id"]) == "awaiting_confirmation"
    proc = runner_process(api.url, runner["token"], tmp_path / "state", "--allow-unsandboxed")
    proc.start()
    try:
        done = wait(org, run["id"], 90)
    finally:
        proc.stop()
    assert done["status"] == "succeeded", done
    events = run_events(org, run["id"])
    kinds = [e["type"] for e in events]
    assert kinds.index("runner.offline") < kinds.index("runner.online") < kinds.index("tool.result")
    offline = next(e["data"] for e in events if e["type"] == "runner.offline")
    assert offline["runner"] == "laptop" and offline["runner_id"] == runner["id"]
    result = next(e["data"] for e in events if e["type"] == "tool.result")
    assert result["output"]["stdout"] == "back\n"


def test_past_the_timeout_the_waiting_call_fails_readably(org, worker, settings: Settings) -> None:
    create_runner(org, "laptop")
    session = org.create_session(str(routed_agent(org, "laptop")["id"]))
    run = start_run(org, str(session["id"]), script(("shell", {"command": "echo never"})))
    until(lambda: run_status(org, run["id"]) == "awaiting_confirmation", 60)
    short = settings.model_copy(update={"runners": settings.runners.model_copy(update={"offline_timeout_s": 0.001})})

    async def sweep() -> str | None:
        infra = await Infra.open(short, name="test-runner-timeouts")
        try:
            return await fail_overdue_waits(infra)
        finally:
            await infra.close()

    assert "1 call(s) failed" in str(asyncio.run(sweep()))
    done = wait(org, run["id"], 60)
    assert done["status"] == "succeeded", done  # the step failed; the model read why and answered
    result = next(e["data"] for e in run_events(org, run["id"]) if e["type"] == "tool.result")
    assert "'laptop' stayed offline" in result["error"] and "did not run" in result["error"]


def test_no_org_reaches_another_orgs_runner_or_calls(org, other_org, worker) -> None:
    mine = create_runner(org, "laptop")
    theirs = create_runner(other_org, "laptop")
    session = org.create_session(str(routed_agent(org, "laptop")["id"]))
    run = start_run(org, str(session["id"]), script(("shell", {"command": "echo mine"})))
    until(lambda: run_status(org, run["id"]) == "awaiting_confirmation", 60)
    call_id = org.client.get(f"/v1/runs/{run['id']}/tool-calls", headers=org.headers).json()["data"][0]["id"]
    # Another org's runner cannot answer (or learn of) this org's call; this org's runner cannot
    # answer it before it was delivered.
    error_of(org.client.post(f"/v1/runner/calls/{call_id}/result", json={"output": "forged"},
                             headers={"Authorization": f"Bearer {theirs['token']}"}), 404, "NOT_FOUND")
    error_of(org.client.post(f"/v1/runner/calls/{call_id}/result", json={"output": "early"},
                             headers={"Authorization": f"Bearer {mine['token']}"}), 409, "CONFLICT")
    # A revoked runner's token is refused outright.
    org.client.delete(f"/v1/runners/{mine['id']}", headers=org.headers)
    error_of(org.client.post(f"/v1/runner/calls/{call_id}/result", json={"output": "late"},
                             headers={"Authorization": f"Bearer {mine['token']}"}), 401, "UNAUTHENTICATED")
    org.client.post(f"/v1/runs/{run['id']}/cancel", headers=org.headers)
    # The other org's agent naming "laptop" reaches its own runner only, never this org's.
    other_session = other_org.create_session(str(routed_agent(other_org, "laptop")["id"]))
    other_run = start_run(other_org, str(other_session["id"]), script(("shell", {"command": "echo theirs"})))
    until(lambda: run_status(other_org, other_run["id"]) == "awaiting_confirmation", 60)
    other_org.client.post(f"/v1/runs/{other_run['id']}/cancel", headers=other_org.headers)
    offline = next(e["data"] for e in run_events(other_org, other_run["id"]) if e["type"] == "runner.offline")
    assert offline["runner_id"] == theirs["id"]


def test_an_ended_runs_worktree_is_removed_after_its_grace_and_its_branch_stays(
        api, org, worker, tmp_path: Path) -> None:
    """Kept while the grace lasts; removed (the branch and its commit kept) by the startup sweep of
    a runner restarted with a shorter grace, and after the grace when the runner learns of the end
    over the link."""
    repo = git_repo(tmp_path / "repo")
    runner = create_runner(org, "laptop")
    state = tmp_path / "state"
    session = org.create_session(str(routed_agent(org, "laptop")["id"]))

    def finished_run(text: str) -> tuple[str, dict[str, Any]]:
        run = start_run(org, str(session["id"]), text)
        assert wait(org, run["id"], 90)["status"] == "succeeded"
        path = f"/v1/runs/{run['id']}/workspaces"
        until(lambda: bool(org.client.get(path, headers=org.headers).json()["data"]), 30)
        return str(run["id"]), org.client.get(path, headers=org.headers).json()["data"][0]

    def worktrees() -> str:
        return subprocess.run(["git", "worktree", "list"], cwd=repo, capture_output=True, text=True, check=True).stdout

    def branch_head(run_id: str) -> str:
        return subprocess.run(["git", "rev-parse", f"agentos/{run_id}"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()

    proc = runner_process(api.url, runner["token"], state, "--repo", str(repo), "--worktree-grace", "3600")
    proc.start()
    try:
        until(lambda: runner_online(org, runner["id"]), 30)
        first, report = finished_run(script(("file_manager", {"action": "write", "path": "a.txt", "content": "a\n"})))
    finally:
        proc.stop()
    assert (state / "workspaces" / first).is_dir() and first in worktrees()  # within its grace: kept

    again = runner_process(api.url, runner["token"], state, "--repo", str(repo), "--worktree-grace", "0")
    again.start()
    try:
        until(lambda: not (state / "workspaces" / first).exists(), 30)  # the startup sweep
        until(lambda: runner_online(org, runner["id"]), 30)
        second, second_report = finished_run(script(("file_manager", {"action": "write", "path": "b.txt",
                                                                        "content": "b\n"})))
        until(lambda: not (state / "workspaces" / second).exists(), 30)  # learned over the link
    finally:
        again.stop()
    for run_id, ended in ((first, report), (second, second_report)):
        assert not (state / "workspaces" / run_id).exists(), again.log_tail(50)
        assert run_id not in worktrees()
        assert ended["commit"] is not None and branch_head(run_id) == ended["commit"]  # the branch stays
    shown = subprocess.run(["git", "show", f"agentos/{first}:a.txt"], cwd=repo, capture_output=True, text=True,
                           check=True).stdout
    assert shown == "a\n"
