"""Runs through the HTTP API with a real worker: the per-session queue (enqueue / reject / FIFO),
idempotency, wait, cancel, limits and failures, errors, roles and tenancy."""

from __future__ import annotations

import secrets
import threading
import time
from typing import Any

import pytest
from starlette.testclient import TestClient

from core.events import TERMINAL_TYPES
from tests.helpers import Org, error_of, post_concurrently, start_run, wait
from tests.sse import read_events

pytestmark = pytest.mark.usefixtures("worker")

RUN_FIELDS = {"id", "session_id", "agent_id", "agent_version", "status", "input", "output", "error", "usage",
              "attempt", "created_at", "started_at", "finished_at", "trace_id", "stream_url"}
WELL_FORMED_MISSING_RUN = "run_" + "0" * 28
WELL_FORMED_MISSING_SESSION = "ses_" + "0" * 28


def run_events(client: TestClient, org: Org, run_id: str, **kwargs: Any) -> list[dict[str, Any]]:
    return read_events(client, f"/v1/runs/{run_id}/events", org.headers, **kwargs)


def assert_one_terminal(events: list[dict[str, Any]], kind: str, *, contiguous: bool = True) -> None:
    """Seqs increase (with no gaps, when the run is alone in its session), and the stream ends
    with exactly one terminal event, of `kind`."""
    assert events, "no events"
    seqs = [e["seq"] for e in events]
    if contiguous:
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gap or repeat in seqs {seqs}"
    else:
        assert seqs == sorted(set(seqs)), f"seqs out of order or repeated: {seqs}"
    terminal = [e["type"] for e in events if e["type"] in TERMINAL_TYPES]
    assert terminal == [kind], terminal
    assert events[-1]["type"] == kind


def until_running(client: TestClient, org: Org, run_id: str) -> None:
    """Block until the run's first THINK step started (the model call, where `wait:` pauses)."""
    events = run_events(client, org, run_id, limit=3)
    assert [e["type"] for e in events] == ["run.queued", "run.started", "step.started"], events


def list_runs(org: Org, session_id: str, **params: Any) -> dict[str, Any]:
    r = org.client.get(f"/v1/sessions/{session_id}/runs", params=params, headers=org.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


@pytest.fixture
def session(org: Org) -> dict[str, Any]:
    agent = org.create_agent(skills=["file_manager"])
    return org.create_session(str(agent["id"]))


# --- create, read, list, wait -------------------------------------------------------------------


def test_post_returns_a_queued_run_that_get_and_wait_return(client: TestClient, org: Org, session: dict[str, Any]):
    r = client.post(f"/v1/sessions/{session['id']}/runs", json={"input": "hello there", "metadata": {"k": "v"}},
                    headers=org.headers)
    assert r.status_code == 202, r.text
    run = r.json()
    assert RUN_FIELDS <= set(run), RUN_FIELDS - set(run)
    assert run["status"] == "queued" and run["session_id"] == session["id"]
    assert run["agent_id"] == session["agent_id"] and run["agent_version"] == 1
    assert run["stream_url"] == f"/v1/runs/{run['id']}/events"
    assert run["input"] == {"text": "hello there"} and run["metadata"] == {"k": "v"}
    assert run["output"] is None and run["error"] is None and run["finished_at"] is None
    assert r.headers["Location"] == f"/v1/runs/{run['id']}"

    got = client.get(f"/v1/runs/{run['id']}", headers=org.headers)
    assert got.status_code == 200, got.text
    assert got.json()["id"] == run["id"] and got.json()["trace_id"] == run["trace_id"]

    final = wait(org, run["id"])
    assert final["status"] == "succeeded" and final["attempt"] == 1
    assert final["output"]["text"] and final["error"] is None
    assert final["started_at"] and final["finished_at"] and final["finished_at"] >= final["started_at"]
    again = client.get(f"/v1/runs/{run['id']}", headers=org.headers).json()
    assert again["status"] == "succeeded" and again["output"] == final["output"]
    assert_one_terminal(run_events(client, org, run["id"]), "run.succeeded")


def test_session_runs_are_listed_newest_first_and_paginated(client: TestClient, org: Org, session: dict[str, Any]):
    posted = [start_run(org, str(session["id"]), f"message {i}")["id"] for i in range(3)]
    first = list_runs(org, str(session["id"]), limit=2)
    assert [r["id"] for r in first["data"]] == posted[::-1][:2]
    assert first["next_cursor"]
    rest = list_runs(org, str(session["id"]), limit=2, cursor=first["next_cursor"])
    assert [r["id"] for r in rest["data"]] == [posted[0]] and rest["next_cursor"] is None
    assert all(r["stream_url"] == f"/v1/runs/{r['id']}/events" for r in first["data"] + rest["data"])
    for run_id in posted:
        assert wait(org, run_id)["status"] == "succeeded"
    whole = list_runs(org, str(session["id"]))
    assert [r["id"] for r in whole["data"]] == posted[::-1] and whole["next_cursor"] is None
    assert {r["status"] for r in whole["data"]} == {"succeeded"}


def test_runs_of_another_session_are_not_listed(org: Org, session: dict[str, Any]):
    other = org.create_session(str(session["agent_id"]))
    mine = start_run(org, str(session["id"]), "hi")
    assert list_runs(org, str(other["id"]))["data"] == []
    assert wait(org, mine["id"])["status"] == "succeeded"


@pytest.mark.parametrize("timeout", ["-1", "300.5", "301", "abc", "nan", "inf", ""])
def test_wait_timeout_outside_0_to_300_is_422(client: TestClient, org: Org, timeout: str):
    r = client.get(f"/v1/runs/{WELL_FORMED_MISSING_RUN}/wait?timeout={timeout}", headers=org.headers)
    error = error_of(r, 422, "VALIDATION_FAILED")
    assert error["details"]["fields"][0]["field"] == "timeout"


def test_wait_accepts_the_bounds_and_returns_a_finished_run_at_once(org: Org, session: dict[str, Any]):
    run = start_run(org, str(session["id"]), "hello")
    assert wait(org, run["id"], 30)["status"] == "succeeded"
    for timeout in (0, 300):
        began = time.monotonic()
        assert wait(org, run["id"], timeout)["status"] == "succeeded"
        assert time.monotonic() - began < 2


def test_wait_returns_the_run_as_it_is_when_the_timeout_passes(client: TestClient, org: Org, session: dict[str, Any]):
    run = start_run(org, str(session["id"]), "wait: 3")
    try:
        began = time.monotonic()
        r = client.get(f"/v1/runs/{run['id']}/wait?timeout=0.5", headers=org.headers)
        elapsed = time.monotonic() - began
        # A wait that ends before the run does says so: 202 and AgentOS-Wait: timeout.
        assert r.status_code == 202 and r.headers["AgentOS-Wait"] == "timeout", r.text
        at_timeout = r.json()
        assert at_timeout["status"] in ("queued", "running") and at_timeout["finished_at"] is None
        assert 0.4 <= elapsed < 2.5, elapsed
        now = client.get(f"/v1/runs/{run['id']}/wait?timeout=0", headers=org.headers)
        assert now.status_code == 202 and now.json()["status"] in ("queued", "running")
    finally:
        client.post(f"/v1/runs/{run['id']}/cancel", headers=org.headers)
    assert wait(org, run["id"])["status"] == "cancelled"


# --- idempotency --------------------------------------------------------------------------------


def test_same_idempotency_key_and_body_replays_the_same_run(client: TestClient, org: Org, session: dict[str, Any]):
    path, key = f"/v1/sessions/{session['id']}/runs", "key-" + secrets.token_hex(4)
    headers = org.headers | {"Idempotency-Key": key}
    first = client.post(path, json={"input": "once"}, headers=headers)
    assert first.status_code == 202, first.text
    assert "Idempotent-Replayed" not in first.headers
    second = client.post(path, json={"input": "once", "multitask": "enqueue"}, headers=headers)  # same body
    assert second.status_code == 202, second.text
    assert second.headers.get("Idempotent-Replayed") == "true"
    assert second.json()["id"] == first.json()["id"]
    # The replay points at the run exactly as the first answer did.
    assert second.headers["Location"] == first.headers["Location"] == f"/v1/runs/{first.json()['id']}"
    assert wait(org, first.json()["id"])["status"] == "succeeded"
    # Replayed after the run ended too: still the same run, in its current state; no new run.
    third = client.post(path, json={"input": "once"}, headers=headers)
    assert third.status_code == 202 and third.headers.get("Idempotent-Replayed") == "true"
    assert third.json()["id"] == first.json()["id"] and third.json()["status"] == "succeeded"
    assert [r["id"] for r in list_runs(org, str(session["id"]))["data"]] == [first.json()["id"]]
    messages = client.get(f"/v1/sessions/{session['id']}/messages", headers=org.headers).json()["data"]
    assert [m["role"] for m in messages] == ["user", "assistant"], "the replay stored no second message"


def test_same_idempotency_key_with_another_body_is_422_mismatch(client: TestClient, org: Org, session: dict[str, Any]):
    path, key = f"/v1/sessions/{session['id']}/runs", "key-" + secrets.token_hex(4)
    headers = org.headers | {"Idempotency-Key": key}
    first = client.post(path, json={"input": "one"}, headers=headers)
    assert first.status_code == 202, first.text
    for body in ({"input": "two"}, {"input": "one", "metadata": {"x": 1}}, {"input": "one", "multitask": "reject"}):
        error = error_of(client.post(path, json=body, headers=headers), 422, "IDEMPOTENCY_MISMATCH")
        assert error["details"]["run_id"] == first.json()["id"]
    # Without the key, or with another key, the other body is simply a new run.
    other = client.post(path, json={"input": "two"}, headers=org.headers | {"Idempotency-Key": key + "-b"})
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]
    ids = [r["id"] for r in list_runs(org, str(session["id"]))["data"]]
    assert ids == [other.json()["id"], first.json()["id"]]
    assert wait(org, other.json()["id"])["status"] == "succeeded"


@pytest.mark.parametrize("key", ["", "x" * 201, "bad\u0001key"])
def test_malformed_idempotency_key_is_400(client: TestClient, org: Org, session: dict[str, Any], key: str):
    r = client.post(f"/v1/sessions/{session['id']}/runs", json={"input": "hi"},
                    headers=org.headers | {"Idempotency-Key": key})
    error_of(r, 400, "BAD_REQUEST")
    assert list_runs(org, str(session["id"]))["data"] == []


def test_concurrent_posts_with_one_idempotency_key_make_one_run(org: Org, session: dict[str, Any]):
    path, key = f"/v1/sessions/{session['id']}/runs", "key-" + secrets.token_hex(4)
    headers = org.headers | {"Idempotency-Key": key}
    barrier = threading.Barrier(4)
    responses: list[Any] = []
    lock = threading.Lock()

    def post() -> None:
        barrier.wait()
        r = org.client.post(path, json={"input": "exactly once"}, headers=headers)
        with lock:
            responses.append(r)

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(responses) == 4
    assert all(r.status_code == 202 for r in responses), [r.text for r in responses]
    ids = {r.json()["id"] for r in responses}
    assert len(ids) == 1, ids
    replayed = [r.headers.get("Idempotent-Replayed") == "true" for r in responses]
    assert replayed.count(False) == 1, "exactly one request created the run"
    assert [r["id"] for r in list_runs(org, str(session["id"]))["data"]] == list(ids)
    assert wait(org, ids.pop())["status"] == "succeeded"


# --- multitask: reject and enqueue ----------------------------------------------------------------


def test_reject_while_a_run_is_active_is_409_session_busy(client: TestClient, org: Org, session: dict[str, Any]):
    busy = start_run(org, str(session["id"]), "wait: 3")
    try:
        r = client.post(f"/v1/sessions/{session['id']}/runs", json={"input": "me too", "multitask": "reject"},
                        headers=org.headers)
        error = error_of(r, 409, "SESSION_BUSY")
        assert error["details"]["active_run_id"] == busy["id"]
        until_running(client, org, busy["id"])
        r = client.post(f"/v1/sessions/{session['id']}/runs", json={"input": "me too", "multitask": "reject"},
                        headers=org.headers)
        assert error_of(r, 409, "SESSION_BUSY")["details"]["active_run_id"] == busy["id"]
        assert [x["id"] for x in list_runs(org, str(session["id"]))["data"]] == [busy["id"]], "nothing was created"
    finally:
        client.post(f"/v1/runs/{busy['id']}/cancel", headers=org.headers)
    assert wait(org, busy["id"])["status"] == "cancelled"
    # Once the session is idle again, reject is accepted.
    free = start_run(org, str(session["id"]), "now", multitask="reject")
    assert wait(org, free["id"])["status"] == "succeeded"


def test_enqueue_runs_one_at_a_time_in_post_order(client: TestClient, org: Org, session: dict[str, Any]):
    texts = ["wait: 0.5", "second", "third"]
    posted = [start_run(org, str(session["id"]), text) for text in texts]
    assert [r["status"] for r in posted] == ["queued"] * 3
    finals = [wait(org, r["id"]) for r in posted]
    assert [f["status"] for f in finals] == ["succeeded"] * 3

    per_run = [run_events(client, org, r["id"]) for r in posted]
    for events in per_run:
        assert_one_terminal(events, "run.succeeded", contiguous=False)
    total = sum(len(events) for events in per_run)
    stream = read_events(client, f"/v1/sessions/{session['id']}/events?after=0", org.headers, limit=total)
    assert [e["seq"] for e in stream] == list(range(1, total + 1))
    assert sorted(stream, key=lambda e: e["seq"]) == sorted((e for ev in per_run for e in ev), key=lambda e: e["seq"])

    def seq_of(run_id: str, kinds: frozenset[str] | set[str]) -> int:
        found = [e["seq"] for e in stream if e["run_id"] == run_id and e["type"] in kinds]
        assert len(found) == 1, (run_id, kinds, found)
        return int(found[0])

    started = [seq_of(r["id"], {"run.started"}) for r in posted]
    ended = [seq_of(r["id"], TERMINAL_TYPES) for r in posted]
    assert started == sorted(started), "runs started in post order"
    for i in (1, 2):
        assert started[i] > ended[i - 1], f"run {i} started before run {i - 1} ended"
    queued = [seq_of(r["id"], {"run.queued"}) for r in posted]
    assert queued == sorted(queued)
    assert [f["started_at"] for f in finals] == sorted(f["started_at"] for f in finals)
    for earlier, later in zip(finals, finals[1:], strict=False):
        assert later["started_at"] >= earlier["finished_at"]


def test_idempotent_replay_of_a_reject_post_is_not_session_busy(client: TestClient, org: Org,
                                                                 session: dict[str, Any]):
    path = f"/v1/sessions/{session['id']}/runs"
    headers = org.headers | {"Idempotency-Key": "key-" + secrets.token_hex(4)}
    body = {"input": "wait: 3", "multitask": "reject"}
    first = client.post(path, json=body, headers=headers)
    assert first.status_code == 202, first.text
    try:
        again = client.post(path, json=body, headers=headers)  # the session is busy with this very run
        assert again.status_code == 202, again.text
        assert again.json()["id"] == first.json()["id"] and again.headers.get("Idempotent-Replayed") == "true"
    finally:
        client.post(f"/v1/runs/{first.json()['id']}/cancel", headers=org.headers)
    assert wait(org, first.json()["id"])["status"] == "cancelled"


def post_all(org: Org, path: str, bodies: list[dict[str, Any]]) -> list[Any]:
    """POST each body to `path` at once (see `tests.helpers.post_concurrently`)."""
    return post_concurrently(org, [(path, body, {}) for body in bodies])


def test_concurrent_reject_posts_on_an_idle_session_start_exactly_one_run(org: Org, session: dict[str, Any]):
    responses = post_all(org, f"/v1/sessions/{session['id']}/runs",
                                  [{"input": f"race {i}", "multitask": "reject"} for i in range(3)])
    accepted = [r for r in responses if r.status_code == 202]
    busy = [r for r in responses if r.status_code == 409]
    assert len(accepted) == 1 and len(busy) == 2, [r.text for r in responses]
    winner = accepted[0].json()["id"]
    assert all(error_of(r, 409, "SESSION_BUSY")["details"]["active_run_id"] == winner for r in busy)
    assert [r["id"] for r in list_runs(org, str(session["id"]))["data"]] == [winner]
    assert wait(org, winner)["status"] == "succeeded"


def test_concurrent_enqueue_posts_all_run_one_at_a_time(client: TestClient, org: Org, session: dict[str, Any]):
    responses = post_all(org, f"/v1/sessions/{session['id']}/runs",
                                  [{"input": f"wait: 0.2\nrace {i}"} for i in range(3)])
    assert [r.status_code for r in responses] == [202] * 3, [r.text for r in responses]
    ids = [r.json()["id"] for r in responses]
    assert [wait(org, run_id)["status"] for run_id in ids] == ["succeeded"] * 3
    total = sum(len(run_events(client, org, run_id)) for run_id in ids)
    stream = read_events(client, f"/v1/sessions/{session['id']}/events?after=0", org.headers, limit=total)
    assert [e["seq"] for e in stream] == list(range(1, total + 1))
    lifecycle = [(e["type"], e["run_id"]) for e in stream if e["type"] == "run.started" or e["type"] in TERMINAL_TYPES]
    queue_order = [e["run_id"] for e in stream if e["type"] == "run.queued"]
    expected = [pair for run_id in queue_order for pair in (("run.started", run_id), ("run.succeeded", run_id))]
    assert lifecycle == expected, "one run at a time, in the order they were queued"


# --- cancel -------------------------------------------------------------------------------------


def test_cancel_a_running_run_stops_it_within_a_step(client: TestClient, org: Org, session: dict[str, Any]):
    run = start_run(org, str(session["id"]), "wait: 3\ncall: file_manager {\"action\": \"list\"}")
    until_running(client, org, run["id"])
    began = time.monotonic()
    r = client.post(f"/v1/runs/{run['id']}/cancel", headers=org.headers)
    assert r.status_code == 202, r.text
    assert r.json()["id"] == run["id"]
    final = wait(org, run["id"])
    assert final["status"] == "cancelled" and final["finished_at"]
    assert time.monotonic() - began < 2.5, "cancel honoured inside the 3 s model call"
    events = run_events(client, org, run["id"])
    assert_one_terminal(events, "run.cancelled")
    assert "tool.call" not in [e["type"] for e in events], "nothing ran after the cancel"
    error_of(client.post(f"/v1/runs/{run['id']}/cancel", headers=org.headers), 409, "CONFLICT")
    # The session goes on with its next run.
    after = start_run(org, str(session["id"]), "next")
    assert wait(org, after["id"])["status"] == "succeeded"


def test_cancel_a_queued_run_ends_it_at_once(client: TestClient, org: Org, session: dict[str, Any]):
    head = start_run(org, str(session["id"]), "wait: 3")
    queued = start_run(org, str(session["id"]), "behind")
    third = start_run(org, str(session["id"]), "third")
    try:
        r = client.post(f"/v1/runs/{queued['id']}/cancel", headers=org.headers)
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "cancelled" and r.json()["finished_at"]
        assert client.get(f"/v1/runs/{queued['id']}", headers=org.headers).json()["status"] == "cancelled"
        events = run_events(client, org, queued["id"])
        assert [e["type"] for e in events] == ["run.queued", "run.cancelled"]
        error_of(client.post(f"/v1/runs/{queued['id']}/cancel", headers=org.headers), 409, "CONFLICT")
        assert client.get(f"/v1/runs/{head['id']}", headers=org.headers).json()["status"] in ("queued", "running")
    finally:
        client.post(f"/v1/runs/{head['id']}/cancel", headers=org.headers)
    assert wait(org, head["id"])["status"] == "cancelled"
    # The run behind the cancelled one still runs.
    assert wait(org, third["id"])["status"] == "succeeded"
    assert wait(org, queued["id"])["started_at"] is None


def test_cancel_of_a_finished_run_is_409_conflict(client: TestClient, org: Org, session: dict[str, Any]):
    run = start_run(org, str(session["id"]), "hello")
    assert wait(org, run["id"])["status"] == "succeeded"
    error = error_of(client.post(f"/v1/runs/{run['id']}/cancel", headers=org.headers), 409, "CONFLICT")
    assert error["details"]["status"] == "succeeded"
    assert client.get(f"/v1/runs/{run['id']}", headers=org.headers).json()["status"] == "succeeded"


# --- limits and failures ------------------------------------------------------------------------

THREE_CALLS = "\n".join(f'call: file_manager {{"action": "write", "path": "f{i}.txt", "content": "x"}}'
                        for i in range(3))


def test_max_steps_exceeded_fails_the_run(client: TestClient, org: Org):
    agent = org.create_agent(skills=["file_manager"], limits={"max_steps": 2}, confirm="none")
    session = org.create_session(str(agent["id"]))
    run = start_run(org, str(session["id"]), THREE_CALLS)
    behind = start_run(org, str(session["id"]), "hello")
    final = wait(org, run["id"])
    assert final["status"] == "failed", final
    assert final["error"]["code"] == "MAX_STEPS_EXCEEDED" and "2" in final["error"]["message"]
    assert final["output"] is None
    events = run_events(client, org, run["id"])
    assert_one_terminal(events, "run.failed", contiguous=False)
    assert events[-1]["data"]["error"] == final["error"]
    assert [e["data"]["node"] for e in events if e["type"] == "step.started"].count("think") == 2
    assert wait(org, behind["id"])["status"] == "succeeded", "the queue moves on after a failed run"


def test_max_steps_is_enough_when_the_steps_fit(org: Org):
    agent = org.create_agent(skills=["file_manager"], limits={"max_steps": 2}, confirm="none")
    session = org.create_session(str(agent["id"]))
    run = start_run(org, str(session["id"]), 'call: file_manager {"action": "list"}')
    assert wait(org, run["id"])["status"] == "succeeded"


def test_a_failing_model_call_fails_the_run_with_model_error(client: TestClient, org: Org, session: dict[str, Any]):
    run = start_run(org, str(session["id"]), "wait: 0.2\nfail: boom")
    behind = start_run(org, str(session["id"]), "hello")
    final = wait(org, run["id"])
    assert final["status"] == "failed", final
    assert final["error"]["code"] == "MODEL_ERROR"
    assert "boom" in final["error"]["message"] and "Traceback" not in final["error"]["message"]
    events = run_events(client, org, run["id"])
    assert_one_terminal(events, "run.failed", contiguous=False)
    assert events[-1]["data"]["error"] == final["error"]
    # The run queued behind it still runs, and the session is usable afterwards.
    assert wait(org, behind["id"])["status"] == "succeeded"
    assert wait(org, start_run(org, str(session["id"]), "again")["id"])["status"] == "succeeded"


def test_a_run_over_its_time_limit_times_out(client: TestClient, org: Org):
    agent = org.create_agent(limits={"timeout_s": 1})
    session = org.create_session(str(agent["id"]))
    began = time.monotonic()
    run = start_run(org, str(session["id"]), "wait: 5")
    behind = start_run(org, str(session["id"]), "hello")
    final = wait(org, run["id"])
    assert final["status"] == "timed_out", final
    assert time.monotonic() - began < 4, "stopped at the limit, not after the 5 s pause"
    assert final["error"]["code"] == "TIMED_OUT" and final["error"]["message"]
    events = run_events(client, org, run["id"])
    assert_one_terminal(events, "run.timed_out", contiguous=False)
    assert events[-1]["data"]["error"] == final["error"]
    assert wait(org, behind["id"])["status"] == "succeeded", "the queue moves on after a timed-out run"


# --- errors -------------------------------------------------------------------------------------


def test_post_to_an_unknown_session_is_404(client: TestClient, org: Org):
    r = client.post(f"/v1/sessions/{WELL_FORMED_MISSING_SESSION}/runs", json={"input": "hi"}, headers=org.headers)
    error_of(r, 404, "NOT_FOUND")
    r = client.get(f"/v1/sessions/{WELL_FORMED_MISSING_SESSION}/runs", headers=org.headers)
    error_of(r, 404, "NOT_FOUND")


def test_post_to_a_deleted_session_is_404(client: TestClient, org: Org, session: dict[str, Any]):
    assert client.delete(f"/v1/sessions/{session['id']}", headers=org.headers).status_code in (200, 204)
    r = client.post(f"/v1/sessions/{session['id']}/runs", json={"input": "hi"}, headers=org.headers)
    error_of(r, 404, "NOT_FOUND")


def test_deleting_a_session_does_not_strand_its_active_runs(client: TestClient, org: Org, session: dict[str, Any]):
    running = start_run(org, str(session["id"]), "wait: 1")
    behind = start_run(org, str(session["id"]), "behind")
    until_running(client, org, running["id"])
    r = client.delete(f"/v1/sessions/{session['id']}", headers=org.headers)
    if r.status_code == 409:  # refusing to delete a busy session is fine too
        client.post(f"/v1/runs/{running['id']}/cancel", headers=org.headers)
        return
    assert r.status_code == 204, r.text
    statuses = [wait(org, running["id"], 4)["status"], wait(org, behind["id"], 2)["status"]]
    assert all(s in ("succeeded", "failed", "cancelled", "timed_out") for s in statuses), statuses
    events = run_events(client, org, running["id"])
    assert [e["type"] for e in events if e["type"] in TERMINAL_TYPES] == [events[-1]["type"]]


@pytest.mark.parametrize("bad", ["nope", "run_123", "ses_" + "0" * 28, "RUN_" + "0" * 28, "run_" + "g" * 28])
def test_malformed_run_ids_are_404(client: TestClient, org: Org, bad: str):
    error_of(client.get(f"/v1/runs/{bad}", headers=org.headers), 404, "NOT_FOUND")
    error_of(client.get(f"/v1/runs/{bad}/wait?timeout=0", headers=org.headers), 404, "NOT_FOUND")
    error_of(client.post(f"/v1/runs/{bad}/cancel", headers=org.headers), 404, "NOT_FOUND")
    error_of(client.get(f"/v1/runs/{bad}/events", headers=org.headers), 404, "NOT_FOUND")


@pytest.mark.parametrize("bad", ["nope", "run_" + "0" * 28, "agt_" + "0" * 28])
def test_malformed_session_ids_are_404(client: TestClient, org: Org, bad: str):
    error_of(client.post(f"/v1/sessions/{bad}/runs", json={"input": "hi"}, headers=org.headers), 404, "NOT_FOUND")
    error_of(client.get(f"/v1/sessions/{bad}/runs", headers=org.headers), 404, "NOT_FOUND")


def test_unknown_well_formed_run_id_is_404(client: TestClient, org: Org):
    error_of(client.get(f"/v1/runs/{WELL_FORMED_MISSING_RUN}", headers=org.headers), 404, "NOT_FOUND")
    error_of(client.get(f"/v1/runs/{WELL_FORMED_MISSING_RUN}/wait?timeout=1", headers=org.headers), 404, "NOT_FOUND")
    error_of(client.post(f"/v1/runs/{WELL_FORMED_MISSING_RUN}/cancel", headers=org.headers), 404, "NOT_FOUND")
    error_of(client.get(f"/v1/runs/{WELL_FORMED_MISSING_RUN}/events", headers=org.headers), 404, "NOT_FOUND")


def test_agent_with_an_unknown_skill_is_422_at_create(client: TestClient, org: Org):
    r = client.post("/v1/agents", json={"name": "bad-skill", "instructions": "x", "skills": ["nope"]},
                    headers=org.headers)
    error = error_of(r, 422, "VALIDATION_FAILED")
    assert [f["field"] for f in error["details"]["fields"]] == ["skills"]
    assert "nope" in error["details"]["fields"][0]["message"]
    assert client.get("/v1/agents", headers=org.headers).json()["data"] == []


@pytest.mark.parametrize("body", [
    {}, {"input": ""}, {"input": 5}, {"input": "hi", "multitask": "interrupt"}, {"input": "hi", "extra": 1},
    {"input": "hi", "metadata": "not an object"},
])
def test_bad_run_body_is_422_and_creates_nothing(client: TestClient, org: Org, session: dict[str, Any],
                                                 body: dict[str, Any]):
    error_of(client.post(f"/v1/sessions/{session['id']}/runs", json=body, headers=org.headers), 422,
             "VALIDATION_FAILED")
    assert list_runs(org, str(session["id"]))["data"] == []


# --- roles and tenancy --------------------------------------------------------------------------


def test_viewer_reads_runs_but_cannot_start_or_cancel_them(client: TestClient, org: Org, session: dict[str, Any]):
    viewer = {"Authorization": f"Bearer {org.key_with_role('viewer')}"}
    run = start_run(org, str(session["id"]), "wait: 1")
    error_of(client.post(f"/v1/sessions/{session['id']}/runs", json={"input": "hi"}, headers=viewer), 403, "FORBIDDEN")
    error_of(client.post(f"/v1/runs/{run['id']}/cancel", headers=viewer), 403, "FORBIDDEN")
    assert client.get(f"/v1/runs/{run['id']}", headers=viewer).status_code == 200
    r = client.get(f"/v1/runs/{run['id']}/wait?timeout=30", headers=viewer)
    assert r.status_code == 200 and r.json()["status"] == "succeeded", "the viewer's cancel did nothing"
    listed = client.get(f"/v1/sessions/{session['id']}/runs", headers=viewer)
    assert listed.status_code == 200 and [x["id"] for x in listed.json()["data"]] == [run["id"]]
    assert_one_terminal(read_events(client, f"/v1/runs/{run['id']}/events", viewer), "run.succeeded")
    error_of(client.post(f"/v1/runs/{run['id']}/cancel", headers=viewer), 403, "FORBIDDEN")


def test_member_can_start_and_cancel_runs(client: TestClient, org: Org, session: dict[str, Any]):
    member = {"Authorization": f"Bearer {org.key_with_role('member')}"}
    r = client.post(f"/v1/sessions/{session['id']}/runs", json={"input": "wait: 3"}, headers=member)
    assert r.status_code == 202, r.text
    assert client.post(f"/v1/runs/{r.json()['id']}/cancel", headers=member).status_code == 202
    assert wait(org, r.json()["id"])["status"] == "cancelled"


def test_another_org_gets_404_for_every_run_route(client: TestClient, org: Org, other_org: Org,
                                                    session: dict[str, Any]):
    run = start_run(org, str(session["id"]), "wait: 1")
    b = other_org.headers
    error_of(client.get(f"/v1/runs/{run['id']}", headers=b), 404, "NOT_FOUND")
    error_of(client.get(f"/v1/runs/{run['id']}/wait?timeout=0", headers=b), 404, "NOT_FOUND")
    error_of(client.post(f"/v1/runs/{run['id']}/cancel", headers=b), 404, "NOT_FOUND")
    error_of(client.get(f"/v1/runs/{run['id']}/events", headers=b), 404, "NOT_FOUND")
    error_of(client.get(f"/v1/runs/{run['id']}/events", headers=b | {"Last-Event-ID": "0"}), 404, "NOT_FOUND")
    error_of(client.get(f"/v1/sessions/{session['id']}/runs", headers=b), 404, "NOT_FOUND")
    error_of(client.post(f"/v1/sessions/{session['id']}/runs", json={"input": "hi"}, headers=b), 404, "NOT_FOUND")
    error_of(client.post(f"/v1/sessions/{session['id']}/runs", json={"input": "hi"},
                         headers=b | {"Idempotency-Key": "k"}), 404, "NOT_FOUND")
    error_of(client.get(f"/v1/sessions/{session['id']}/events?after=0", headers=b), 404, "NOT_FOUND")

    final = wait(org, run["id"])
    assert final["status"] == "succeeded", "B's cancel did not touch A's run"
    # Finished: still 404 for B (not A's 409 CONFLICT, which would reveal the run).
    error_of(client.post(f"/v1/runs/{run['id']}/cancel", headers=b), 404, "NOT_FOUND")
    error_of(client.get(f"/v1/runs/{run['id']}/events", headers=b), 404, "NOT_FOUND")
    assert [x["id"] for x in list_runs(org, str(session["id"]))["data"]] == [run["id"]], "B created nothing"
