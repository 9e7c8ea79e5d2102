"""SIGTERM, as a rolling deploy sends it, loses nothing: an API process ends its SSE streams with
a farewell comment and exits 0, and the client resumes on another API process with
Last-Event-ID; a worker finishes its run within its grace period, or releases it to another
worker, which resumes it from its last checkpoint without repeating or losing an event."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from agentos.stack.process import ServerProcess, free_port
from agentos.stack.redis import EmbeddedRedis
from agentos.stack.worker import api_process, worker_process
from api.app import create_app
from tests.helpers import Org, RsaKeys, make_settings, new_org, start_run, wait
from tests.sse import read_events

FAREWELL = ": shutting down; reconnect with Last-Event-ID"


def _started_api(stack: StackUrls, base: Path, name: str) -> tuple[ServerProcess, str]:
    port = free_port()
    proc = api_process(base / f"{name}.log", database_url=stack.database_url, redis_url=stack.redis_url, port=port,
                       extra_env={"AGENTOS_ENV": "test"})
    proc.start()
    proc.wait_until(lambda: "AgentOS API ready" in proc.log_tail(50), timeout_s=60)
    return proc, f"http://127.0.0.1:{port}"


def _read_until(lines: Any, want: str) -> list[str]:
    """Lines of an SSE body up to the first that starts with `want` (or the end of the body)."""
    seen = []
    for line in lines:
        seen.append(line)
        if line.startswith(want):
            break
    return seen


def _seq_of(lines: list[str]) -> list[int]:
    return [int(line[3:].strip()) for line in lines if line.startswith("id:")]


def _exit_code(proc: ServerProcess, timeout_s: float = 30) -> int:
    assert proc.proc is not None
    try:
        return proc.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.stop()
        tail = proc.log_tail(40)
        raise AssertionError(f"{proc.name} did not exit within {timeout_s} s of SIGTERM:\n{tail}") from None


@pytest.mark.timeout(120)
def test_an_api_stopped_by_sigterm_says_goodbye_and_the_client_resumes_on_another(
    stack: StackUrls, client: TestClient, org: Org, tmp_path: Path
):
    first, first_url = _started_api(stack, tmp_path, "api-1")
    second, second_url = _started_api(stack, tmp_path, "api-2")
    try:
        agent = org.create_agent()
        session = org.create_session(str(agent["id"]))
        path = f"/v1/sessions/{session['id']}/events"
        with httpx.stream("GET", first_url + path, headers=org.headers, timeout=30) as stream:
            assert stream.status_code == 200
            lines = stream.iter_lines()
            run = start_run(org, str(session["id"]), "hello")
            before = _read_until(lines, "data:")
            assert orjson.loads(before[-1][5:])["run_id"] == run["id"]
            last_seen = _seq_of(before)[-1]

            assert first.proc is not None
            first.proc.send_signal(signal.SIGTERM)  # the process alone, as tini or Kubernetes signal it
            rest = list(lines)  # until the server ends the body
        farewell = [line for line in rest if line.startswith(":") and "ping" not in line]
        assert farewell == [FAREWELL], rest
        assert "retry: 500" in rest, rest
        assert _exit_code(first) == 0
        assert "Traceback" not in first.log_path.read_text()

        # The client reconnects elsewhere with the last id it got: nothing is missed or repeated.
        later = start_run(org, str(session["id"]), "again", multitask="enqueue")
        with httpx.stream("GET", second_url + path, headers=org.headers | {"Last-Event-ID": str(last_seen)},
                          timeout=30) as resumed:
            seen: list[dict[str, Any]] = []
            for line in resumed.iter_lines():
                if line.startswith("data:"):
                    seen.append(orjson.loads(line[5:]))
                    if seen[-1]["run_id"] == later["id"]:
                        break
        seqs = [e["seq"] for e in seen]
        assert seqs == list(range(last_seen + 1, last_seen + 1 + len(seqs))), seqs
    finally:
        first.stop()
        second.stop()


def _worker(stack: StackUrls, redis_url: str, base: Path, name: str, grace_s: float) -> ServerProcess:
    proc = worker_process(
        base / f"{name}.log", database_url=stack.database_url, redis_url=redis_url, workspace_root=base / "ws",
        concurrency=1, extra_env={"AGENTOS_ENV": "test", "AGENTOS_WORKER__LEASE_S": "3",
                                  "AGENTOS_WORKER__HEARTBEAT_S": "0.5",
                                  "AGENTOS_WORKER__SHUTDOWN_GRACE_S": str(grace_s)})
    proc.start()
    proc.wait_until(lambda: " ready." in proc.log_tail(200), timeout_s=60)
    return proc


def _sigterm_main_process(proc: ServerProcess) -> None:
    """SIGTERM to the worker's main process only (its prefork children are not signalled), as
    tini (without -g), Kubernetes, Fly and ECS deliver it."""
    assert proc.proc is not None
    proc.proc.send_signal(signal.SIGTERM)


@pytest.mark.timeout(150)
def test_a_worker_stopped_mid_run_releases_it_and_another_worker_finishes_it(
    stack: StackUrls, rsa_keys: RsaKeys, tmp_path: Path
):
    redis = EmbeddedRedis(tmp_path, durable=False)  # our own queue: no other worker takes the run
    redis.start()
    settings = make_settings(stack, rsa_keys, redis={"url": redis.url})
    leaving: ServerProcess | None = None
    staying: ServerProcess | None = None
    try:
        leaving = _worker(stack, redis.url, tmp_path, "leaving", grace_s=1)
        with TestClient(create_app(settings)) as client:
            org = new_org(client)
            agent = org.create_agent(skills=["file_manager"], confirm="none")
            session = org.create_session(str(agent["id"]))
            script = 'call: file_manager {"action": "write", "path": "once.txt", "content": "1"}\n' \
                     "wait: 8\n" \
                     'call: file_manager {"action": "list"}'
            run = start_run(org, str(session["id"]), script)
            # The write happened; the model now sits in `wait: 8` (as in test_run_recovery).
            first = read_events(client, f"/v1/runs/{run['id']}/events", org.headers, limit=8)
            assert [e["type"] for e in first][-2:] == ["tool.result", "step.started"], first

            _sigterm_main_process(leaving)
            assert _exit_code(leaving) == 0
            log = leaving.log_path.read_text()
            assert "released at shutdown" in log, log[-3000:]
            assert client.get(f"/v1/runs/{run['id']}", headers=org.headers).json()["status"] == "queued"

            staying = _worker(stack, redis.url, tmp_path, "staying", grace_s=20)
            final = wait(org, run["id"], timeout=60)
            assert final["status"] == "succeeded", final
            assert final["attempt"] == 2
            events = read_events(client, f"/v1/runs/{run['id']}/events", org.headers)
    finally:
        for proc in (leaving, staying):
            if proc is not None:
                proc.stop()
        redis.stop()
    types = [e["type"] for e in events]
    assert types.count("run.started") == 2
    assert [t for t in types if t in ("run.succeeded", "run.failed", "run.cancelled", "run.timed_out")] == \
        ["run.succeeded"]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no gap and no repeated seq"
    assert [e["data"]["args"]["action"] for e in events if e["type"] == "tool.call"] == ["write", "list"], \
        "resumed from the checkpoint after the write: the write is not repeated"


@pytest.mark.timeout(120)
def test_a_worker_stopped_mid_run_finishes_it_within_its_grace_period(
    stack: StackUrls, rsa_keys: RsaKeys, tmp_path: Path
):
    redis = EmbeddedRedis(tmp_path, durable=False)
    redis.start()
    settings = make_settings(stack, rsa_keys, redis={"url": redis.url})
    leaving: ServerProcess | None = None
    try:
        leaving = _worker(stack, redis.url, tmp_path, "leaving", grace_s=60)
        with TestClient(create_app(settings)) as client:
            org = new_org(client)
            agent = org.create_agent()
            session = org.create_session(str(agent["id"]))
            run = start_run(org, str(session["id"]), "wait: 3")
            started = read_events(client, f"/v1/runs/{run['id']}/events", org.headers, limit=2)
            assert [e["type"] for e in started] == ["run.queued", "run.started"]

            _sigterm_main_process(leaving)
            assert _exit_code(leaving, timeout_s=60) == 0
            final = client.get(f"/v1/runs/{run['id']}", headers=org.headers).json()
            assert final["status"] == "succeeded" and final["attempt"] == 1, final
    finally:
        if leaving is not None:
            leaving.stop()
        redis.stop()
