"""Remote runners over a bad link: a TCP proxy between the runner and the API cuts and restores
the connection at random moments while a run makes 100 calls (none lost, none executed twice),
and a runner SIGKILLed mid-call and restarted answers with its journaled result or a clear
failure, never a second execution."""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentos.stack.process import ServerProcess
from core.settings import Settings
from tests.helpers import Org, Served, create_runner, runner_online, runner_process, serving, start_run, until, wait
from tests.sse import read_events
from tests.tcp_proxy import TcpProxy


@pytest.fixture
def api(settings: Settings) -> Iterator[Served]:
    from api.app import create_app

    fast = settings.model_copy(update={"runners": settings.runners.model_copy(update={"heartbeat_s": 0.5})})
    with serving(create_app(fast)) as served:
        yield served


def routed_agent(org: Org) -> dict[str, object]:
    return org.create_agent(model="offline:default", skills=["shell"], runner="laptop", confirm="none",
                            limits={"max_steps": 400, "timeout_s": 900})


def api_port(api: Served) -> int:
    return int(api.url.rsplit(":", 1)[1])


UNSANDBOXED = ("--allow-unsandboxed", "--sandbox", "none", "--backoff-max", "0.5")


def call_under_way(org: Org, proxy: TcpProxy, runner: dict[str, Any], state: Path,
                   shell: str) -> tuple[ServerProcess, dict[str, Any], Path]:
    """A runner connected through `proxy`, and a run whose one `shell` call (which appends to
    `runs.log` first) has begun on it: the runner's process, the run, and that marker file."""
    proc = runner_process(f"http://127.0.0.1:{proxy.port}", runner["token"], state, *UNSANDBOXED)
    proc.start()
    try:
        until(lambda: runner_online(org, runner["id"]), 30)
        session = org.create_session(str(routed_agent(org)["id"]))
        run = start_run(org, str(session["id"]), "call: shell " + json.dumps({"command": shell}))
        marker = state / "workspaces" / run["id"] / "runs.log"
        until(marker.exists, 60)
        assert marker.exists(), proc.log_tail(50)
    except BaseException:
        proc.stop()
        raise
    return proc, run, marker


@pytest.mark.timeout(600)
def test_100_calls_over_a_link_cut_at_random_moments_lose_nothing_and_run_once(
        api: Served, org: Org, worker: object, tmp_path: Path) -> None:
    runner = create_runner(org, "laptop")
    state = tmp_path / "state"
    rng = random.Random(19)
    with TcpProxy(api_port(api)) as proxy:
        proc = runner_process(f"http://127.0.0.1:{proxy.port}", runner["token"], state, "--backoff-max", "0.5",
                              "--allow-unsandboxed", "--sandbox", "none")
        proc.start()
        try:
            until(lambda: runner_online(org, runner["id"]), 30)
            session = org.create_session(str(routed_agent(org)["id"]))
            text = "\n".join(f'call: shell {{"command": "echo {n} >> calls.log"}}' for n in range(100))
            run = start_run(org, str(session["id"]), text)
            done = threading.Event()
            cuts = 0
            log = state / "workspaces" / run["id"] / "calls.log"
            # Cut points by progress, not by the clock, so the run cannot outpace them: after the
            # 5th..95th call (8 of them, ~10 apart), at a random moment within the next call.
            points = sorted(rng.sample(range(5, 96, 11), 8))

            def calls_done() -> int:
                return len(log.read_text().split()) if log.exists() else 0

            def cut_at_random() -> None:
                nonlocal cuts
                for point in points:
                    while calls_done() < point:
                        if done.wait(0.005):
                            return
                    time.sleep(rng.uniform(0.0, 0.05))
                    proxy.down()
                    cuts += 1
                    time.sleep(rng.uniform(0.05, 1.0))
                    proxy.up()

            cutter = threading.Thread(target=cut_at_random, daemon=True)
            cutter.start()
            try:
                finished = wait_long(org, run["id"], 500)
            finally:
                done.set()
                cutter.join(timeout=10)
                proxy.up()
        finally:
            proc.stop()
    assert finished["status"] == "succeeded", (finished, proc.log_tail(80))
    assert cuts == len(points) and proxy.connections > cuts
    # 0 executed twice: each command appended its number exactly once, in order.
    lines = (state / "workspaces" / run["id"] / "calls.log").read_text().split()
    assert lines == [str(n) for n in range(100)]
    # 0 lost: every call has its result, a success.
    events = read_events(org.client, f"/v1/runs/{run['id']}/events", org.headers)
    calls = [e["data"]["tool_call_id"] for e in events if e["type"] == "tool.call"]
    results = {e["data"]["tool_call_id"]: e["data"] for e in events if e["type"] == "tool.result"}
    assert len(calls) == 100 and set(calls) == set(results)
    assert all(r.get("error") is None and r["output"]["exit_code"] == 0 for r in results.values())


def wait_long(org: Org, run_id: str, limit_s: float) -> dict[str, object]:
    """The run once it ended, long-polling (at most 300 s a poll) for up to `limit_s`."""
    deadline = time.monotonic() + limit_s
    while True:
        r = org.client.get(f"/v1/runs/{run_id}/wait?timeout=60", headers=org.headers)
        if r.status_code == 200 or time.monotonic() > deadline:
            assert r.status_code == 200, r.text
            return dict(r.json())


def kill(proc: ServerProcess) -> None:
    """SIGKILL the runner process (by its PID) and wait until it is gone."""
    assert proc.pid is not None
    os.kill(proc.pid, signal.SIGKILL)
    until(lambda: not proc.alive(), 10)
    assert not proc.alive()


def _journal_state(state: Path, call_name: str) -> list[tuple[str, str]]:
    import sqlite3

    db = state / "journal.sqlite3"
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT id, state FROM calls WHERE name = ?", (call_name,))]


def test_a_runner_killed_mid_call_answers_with_a_clear_failure_and_never_runs_it_again(
        api: Served, org: Org, worker: object, tmp_path: Path) -> None:
    runner = create_runner(org, "laptop")
    state = tmp_path / "state"
    proc = runner_process(api.url, runner["token"], state, *UNSANDBOXED)
    proc.start()
    try:
        until(lambda: runner_online(org, runner["id"]), 30)
        session = org.create_session(str(routed_agent(org)["id"]))
        run = start_run(org, str(session["id"]), 'call: shell {"command": "echo started >> runs.log; sleep 5"}')
        marker = state / "workspaces" / run["id"] / "runs.log"
        until(marker.exists, 60)
        assert marker.exists(), proc.log_tail(50)
        kill(proc)  # the runner, mid-call
    finally:
        proc.stop()
    again = runner_process(api.url, runner["token"], state, *UNSANDBOXED)
    again.start()
    try:
        finished = wait(org, run["id"], 90)
    finally:
        again.stop()
    assert finished["status"] == "succeeded", (finished, again.log_tail(50))
    result = next(e["data"] for e in read_events(org.client, f"/v1/runs/{run['id']}/events", org.headers)
                  if e["type"] == "tool.result")
    assert "runner stopped while this call was running" in result["error"]
    assert marker.read_text() == "started\n"  # never a second execution
    assert [s for _, s in _journal_state(state, "shell")] == ["done"]


def test_a_result_finished_while_the_link_was_down_is_posted_after_a_restart(
        api: Served, org: Org, worker: object, tmp_path: Path) -> None:
    runner = create_runner(org, "laptop")
    state = tmp_path / "state"
    with TcpProxy(api_port(api)) as proxy:
        proc, run, marker = call_under_way(org, proxy, runner, state, "echo ran >> runs.log; sleep 1; echo out")
        try:
            proxy.down()  # the call finishes while its answer cannot be posted
            until(lambda: [s for _, s in _journal_state(state, "shell")] == ["done"], 30)
            assert [s for _, s in _journal_state(state, "shell")] == ["done"]
            kill(proc)
        finally:
            proc.stop()
        proxy.up()
        again = runner_process(f"http://127.0.0.1:{proxy.port}", runner["token"], state, *UNSANDBOXED)
        again.start()
        try:
            finished = wait(org, run["id"], 90)
        finally:
            again.stop()
    assert finished["status"] == "succeeded", finished
    result = next(e["data"] for e in read_events(org.client, f"/v1/runs/{run['id']}/events", org.headers)
                  if e["type"] == "tool.result")
    assert result.get("error") is None and result["output"]["stdout"] == "out\n"  # the journaled result
    assert marker.read_text() == "ran\n"


def run_status(org: Org, run_id: str) -> str:
    return str(org.client.get(f"/v1/runs/{run_id}", headers=org.headers).json()["status"])


def test_a_link_dropped_mid_call_frees_the_worker_and_the_run_resumes_when_the_runner_returns(
        api: Served, org: Org, worker: object, tmp_path: Path) -> None:
    """The runner's link drops while the worker waits for a call it was sent: after the grace the
    run waits like an approval (no worker held, `runner.offline`), and when the runner is back the
    run goes on with the call's result, the call having run once."""
    runner = create_runner(org, "laptop")
    state = tmp_path / "state"
    with TcpProxy(api_port(api)) as proxy:
        proc, run, marker = call_under_way(org, proxy, runner, state, "echo ran >> runs.log; sleep 2; echo out")
        try:
            proxy.down()  # mid-call: the call finishes on the runner while its answer cannot get through
            until(lambda: run_status(org, run["id"]) == "awaiting_confirmation", 60)
            assert run_status(org, run["id"]) == "awaiting_confirmation"  # the worker let go of the run
            waiting = org.client.get(f"/v1/runs/{run['id']}/tool-calls", headers=org.headers).json()["data"]
            assert [c["status"] for c in waiting] == ["pending"]
            proxy.up()
            finished = wait(org, run["id"], 90)
        finally:
            proc.stop()
    assert finished["status"] == "succeeded", (finished, proc.log_tail(50))
    events = read_events(org.client, f"/v1/runs/{run['id']}/events", org.headers)
    kinds = [e["type"] for e in events]
    assert kinds.count("tool.call") == 1 and kinds.count("tool.result") == 1  # one call, announced once
    assert kinds.index("tool.call") < kinds.index("runner.offline") < kinds.index("runner.online") \
        < kinds.index("tool.result")
    offline = next(e["data"] for e in events if e["type"] == "runner.offline")
    assert offline["runner_id"] == runner["id"]
    result = next(e["data"] for e in events if e["type"] == "tool.result")
    assert result.get("error") is None and result["output"]["stdout"] == "out\n"  # the runner's own result
    assert marker.read_text() == "ran\n"  # run once
