"""Run event streams (SSE) through the HTTP API with a real worker: replay from `Last-Event-ID`
or `?after=`, reconnecting mid-run and after the end, and reading from Postgres once the
session's Redis stream is gone."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from core.tenancy import session_stream_key
from tests.helpers import Org, start_run, wait
from tests.sse import assert_complete, read_events, run_events

pytestmark = [pytest.mark.usefixtures("worker"), pytest.mark.timeout(60)]

SCRIPT = "\n".join([
    'call: file_manager {"action": "write", "path": "a.txt", "content": "hello"}',
    'call: file_manager {"action": "read", "path": "a.txt"}',
])


@pytest.fixture
def redis_client(stack: StackUrls) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(stack.redis_url)
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def session(org: Org) -> dict[str, Any]:
    agent = org.create_agent(skills=["file_manager"], confirm="none")
    return org.create_session(str(agent["id"]))


def events_of(client: TestClient, org: Org, run_id: str, **kwargs: Any) -> list[dict[str, Any]]:
    return run_events(client, org.headers, run_id, **kwargs)


@pytest.fixture
def finished(client: TestClient, org: Org, session: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A run (two tool calls) that has ended, and its whole stream."""
    run = start_run(org, str(session["id"]), SCRIPT)
    assert wait(org, run["id"])["status"] == "succeeded"
    events = events_of(client, org, run["id"])
    assert_complete(events, run["id"])
    assert events[0]["type"] == "run.queued" and events[-1]["type"] == "run.succeeded"
    assert len(events) >= 10, [e["type"] for e in events]
    return run, events


def test_last_event_id_replays_exactly_the_later_events(client: TestClient, org: Org, finished: Any):
    run, events = finished
    for cut in (0, 1, len(events) // 2, len(events) - 2):
        n = events[cut]["seq"]
        assert events_of(client, org, run["id"], last_event_id=n) == events[cut + 1:], f"after seq {n}"


def test_after_query_works_like_last_event_id(client: TestClient, org: Org, finished: Any):
    run, events = finished
    for cut in (0, len(events) // 2, len(events) - 2):
        n = events[cut]["seq"]
        assert read_events(client, f"/v1/runs/{run['id']}/events?after={n}", org.headers) == events[cut + 1:]
    assert read_events(client, f"/v1/runs/{run['id']}/events?after=0", org.headers) == events


def test_last_event_id_zero_replays_the_whole_run(client: TestClient, org: Org, finished: Any):
    run, events = finished
    assert events_of(client, org, run["id"], last_event_id=0) == events


@pytest.mark.parametrize("offset", [0, 1, 1000])
def test_finished_run_with_last_event_id_at_or_past_its_end_ends_at_once(
    client: TestClient, org: Org, finished: Any, offset: int
):
    run, events = finished
    began = time.monotonic()
    assert events_of(client, org, run["id"], last_event_id=events[-1]["seq"] + offset) == []
    assert read_events(client, f"/v1/runs/{run['id']}/events?after={events[-1]['seq'] + offset}", org.headers) == []
    assert time.monotonic() - began < 3


def test_finished_run_with_later_runs_in_its_session_still_ends_at_its_terminal_event(
    client: TestClient, org: Org, session: dict[str, Any], finished: Any
):
    run, events = finished
    later = start_run(org, str(session["id"]), "another")
    assert wait(org, later["id"])["status"] == "succeeded"
    assert events_of(client, org, run["id"]) == events
    assert events_of(client, org, run["id"], last_event_id=events[-1]["seq"]) == []
    assert events_of(client, org, run["id"], last_event_id=events[-2]["seq"]) == events[-1:]
    later_events = events_of(client, org, later["id"])
    assert_complete(later_events, later["id"])
    assert later_events[0]["seq"] == events[-1]["seq"] + 1
    # A cursor before the run's own events skips the earlier run's events.
    assert events_of(client, org, later["id"], last_event_id=0) == later_events


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", "1e3", " 3", "0x10", "9" * 19])
def test_non_integer_last_event_id_is_400(client: TestClient, org: Org, finished: Any, value: str):
    run, _ = finished
    r = client.get(f"/v1/runs/{run['id']}/events", headers=org.headers | {"Last-Event-ID": value})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "BAD_REQUEST"


@pytest.mark.parametrize("value", ["abc", "-1", "1.5"])
def test_non_integer_after_is_400(client: TestClient, org: Org, finished: Any, value: str):
    run, _ = finished
    r = client.get(f"/v1/runs/{run['id']}/events", params={"after": value}, headers=org.headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "BAD_REQUEST"
    r = client.get(f"/v1/sessions/{run['session_id']}/events", params={"after": value}, headers=org.headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "BAD_REQUEST"


@pytest.mark.parametrize("value", ["\u00b2", "\u00b9\u00b3"])
def test_a_superscript_digit_cursor_is_400_not_500(client: TestClient, org: Org, finished: Any, value: str):
    """`str.isdigit()` is true for '²' but `int('²')` raises: the cursor check must reject it."""
    run, _ = finished
    r = client.get(f"/v1/runs/{run['id']}/events", params={"after": value}, headers=org.headers)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["code"] == "BAD_REQUEST"


def test_reconnecting_mid_run_yields_the_rest_up_to_the_terminal_event(
    client: TestClient, org: Org, session: dict[str, Any]
):
    run = start_run(org, str(session["id"]), 'wait: 2\ncall: file_manager {"action": "list"}')
    head = events_of(client, org, run["id"], limit=3)
    assert [e["type"] for e in head] == ["run.queued", "run.started", "step.started"]
    assert client.get(f"/v1/runs/{run['id']}", headers=org.headers).json()["status"] == "running", \
        "the reconnect below must happen while the run still runs"
    rest = events_of(client, org, run["id"], last_event_id=head[-1]["seq"])
    assert rest and rest[0]["seq"] == head[-1]["seq"] + 1
    assert rest[-1]["type"] == "run.succeeded"
    assert_complete(head + rest, run["id"])
    assert "tool.call" in [e["type"] for e in rest]
    # Afterwards the same cursor replays the same events.
    assert events_of(client, org, run["id"], last_event_id=head[-1]["seq"]) == rest
    assert events_of(client, org, run["id"]) == head + rest


def test_after_the_redis_stream_is_deleted_events_come_from_postgres(
    client: TestClient, org: Org, finished: Any, redis_client: redis.Redis
):
    run, events = finished
    key = session_stream_key(org.id, run["session_id"])
    assert redis_client.exists(key) == 1, "the events were published to the session's stream"
    assert redis_client.delete(key) == 1
    assert events_of(client, org, run["id"]) == events
    mid = len(events) // 2
    assert events_of(client, org, run["id"], last_event_id=events[mid]["seq"]) == events[mid + 1:]
    assert read_events(client, f"/v1/runs/{run['id']}/events?after={events[1]['seq']}", org.headers) == events[2:]
    assert events_of(client, org, run["id"], last_event_id=events[-1]["seq"]) == []
    session_stream = read_events(client, f"/v1/sessions/{run['session_id']}/events?after=0", org.headers,
                                 limit=len(events))
    assert session_stream == events
    assert redis_client.exists(key) == 0, "reading did not need (or recreate) the stream"


def test_redis_stream_deleted_mid_run_reconnect_has_no_gap(
    client: TestClient, org: Org, session: dict[str, Any], redis_client: redis.Redis
):
    run = start_run(org, str(session["id"]), 'wait: 1.5\ncall: file_manager {"action": "list"}')
    head = events_of(client, org, run["id"], limit=3)
    assert [e["type"] for e in head] == ["run.queued", "run.started", "step.started"]
    assert redis_client.delete(session_stream_key(org.id, str(session["id"]))) == 1
    assert client.get(f"/v1/runs/{run['id']}", headers=org.headers).json()["status"] == "running"
    rest = events_of(client, org, run["id"], last_event_id=head[-1]["seq"])
    assert_complete(head + rest, run["id"])
    assert rest[-1]["type"] == "run.succeeded"
    # The stream now lacks the head; a full replay fills it from Postgres.
    assert events_of(client, org, run["id"]) == head + rest


def test_session_stream_replays_every_run_in_order(client: TestClient, org: Org, session: dict[str, Any]):
    runs = [start_run(org, str(session["id"]), text) for text in ("one", "two")]
    for run in runs:
        assert wait(org, run["id"])["status"] == "succeeded"
    per_run = [events_of(client, org, run["id"]) for run in runs]
    total = sum(len(e) for e in per_run)
    stream = read_events(client, f"/v1/sessions/{session['id']}/events?after=0", org.headers, limit=total)
    assert [e["seq"] for e in stream] == list(range(1, total + 1))
    assert sorted(per_run[0] + per_run[1], key=lambda e: e["seq"]) == stream
    cut = stream[3]["seq"]
    tail = read_events(client, f"/v1/sessions/{session['id']}/events", org.headers, last_event_id=cut,
                       limit=total - 4)
    assert tail == stream[4:]


def test_session_stream_without_a_cursor_follows_only_new_events(
    client: TestClient, org: Org, session: dict[str, Any], finished: Any
):
    _, old = finished
    found: list[dict[str, Any]] = []
    with client.stream("GET", f"/v1/sessions/{session['id']}/events", headers=org.headers) as response:
        # The response has started, so the stream's starting point is fixed: post after it.
        assert response.status_code == 200
        run = start_run(org, str(session["id"]), "new one")
        for line in response.iter_lines():
            if line.startswith("data:"):
                found.append(orjson.loads(line[5:]))
                if len(found) == 2:
                    break
    assert [e["type"] for e in found] == ["run.queued", "run.started"]
    assert {e["run_id"] for e in found} == {run["id"]}
    assert found[0]["seq"] == old[-1]["seq"] + 1
    assert wait(org, run["id"])["status"] == "succeeded"


def test_a_live_reader_of_a_queued_run_sees_its_cancellation_and_the_stream_ends(
    client: TestClient, org: Org, session: dict[str, Any]
):
    head = start_run(org, str(session["id"]), "wait: 3")
    queued = start_run(org, str(session["id"]), "behind")
    found: list[dict[str, Any]] = []
    try:
        with client.stream("GET", f"/v1/runs/{queued['id']}/events", headers=org.headers) as response:
            assert response.status_code == 200
            assert client.post(f"/v1/runs/{queued['id']}/cancel", headers=org.headers).status_code == 202
            for line in response.iter_lines():  # ends by itself after the terminal event
                if line.startswith("data:"):
                    found.append(orjson.loads(line[5:]))
    finally:
        client.post(f"/v1/runs/{head['id']}/cancel", headers=org.headers)
    assert [e["type"] for e in found] == ["run.queued", "run.cancelled"]
    assert wait(org, head["id"])["status"] == "cancelled"


def test_a_run_streamed_right_after_its_post_is_whole_and_only_its_own_orgs(
        client: TestClient, org: Org, other_org: Org, session: dict[str, Any]):
    # The API process that took the POST opens the run's stream without looking the run up
    # (api.fresh_runs): it must still be the whole run, and nothing for another org.
    run = start_run(org, str(session["id"]), SCRIPT)
    r = client.get(f"/v1/runs/{run['id']}/events", headers=other_org.headers)
    assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND"
    events = events_of(client, org, run["id"])
    assert_complete(events, run["id"])
    assert events[0]["type"] == "run.queued" and events[-1]["type"] == "run.succeeded"
