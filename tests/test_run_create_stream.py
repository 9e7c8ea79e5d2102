"""A run created and streamed in one request: `POST /v1/sessions/{id}/runs` with
`Accept: text/event-stream` answers `202` with the run's event stream from its `run.queued` to its
terminal event (what `GET /v1/runs/{id}/events` sends without a cursor), through a real worker.
Refusals stay JSON errors; a replay with the same Idempotency-Key streams the run it made; a client
that drops the stream resumes it with `GET .../events` and `Last-Event-ID`."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from core.settings import Settings
from core.telemetry import metrics
from tests.helpers import Org, error_of, serving, wait
from tests.sse import assert_complete, read_events, run_events
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.usefixtures("worker"), pytest.mark.timeout(60)]

SCRIPT = "\n".join([
    'call: file_manager {"action": "write", "path": "a.txt", "content": "hello"}',
    'call: file_manager {"action": "read", "path": "a.txt"}',
])


@pytest.fixture
def session(org: Org) -> dict[str, Any]:
    agent = org.create_agent(skills=["file_manager"], confirm="none")
    return org.create_session(str(agent["id"]))


def post_streaming(client: TestClient, org: Org, session_id: str, body: dict[str, Any],
                   headers: dict[str, str] | None = None, **kwargs: Any) -> tuple[list[dict[str, Any]], dict[str, str]]:
    answered: dict[str, str] = {}
    events = read_events(client, f"/v1/sessions/{session_id}/runs", org.headers | (headers or {}), method="POST",
                         json=body, status=202, response_headers=answered, **kwargs)
    return events, answered


def test_a_streaming_post_answers_the_whole_run_as_the_get_would(
        client: TestClient, org: Org, session: dict[str, Any]):
    events, headers = post_streaming(client, org, str(session["id"]), {"input": SCRIPT},
                                     {"Accept": "application/json;q=0.5, Text/Event-Stream;q=0.9"})
    run_id = events[0]["run_id"]
    assert_complete(events, run_id)
    assert events[0]["type"] == "run.queued" and events[-1]["type"] == "run.succeeded"
    assert [e["type"] for e in events].count("tool.result") == 2
    # The JSON answer's headers come with the stream.
    assert headers["location"] == f"/v1/runs/{run_id}"
    assert headers["agentos-trace-id"] and "ratelimit-remaining" in {h.lower() for h in headers}
    assert "agentos-deferred" not in headers and "idempotent-replayed" not in headers
    # The stored run and its stream say the same.
    assert wait(org, run_id)["status"] == "succeeded"
    assert run_events(client, org.headers, run_id) == events


def test_without_the_accept_header_the_post_answers_json(client: TestClient, org: Org, session: dict[str, Any]):
    for accept in ("application/json", "*/*", "text/event-stream;q=0", "application/json, text/event-stream; q=0.0"):
        r = client.post(f"/v1/sessions/{session['id']}/runs", json={"input": "hello"},
                        headers=org.headers | {"Accept": accept})
        assert r.status_code == 202 and r.headers["content-type"] == "application/json", r.text
        assert r.json()["status"] == "queued"
        wait(org, r.json()["id"])


def test_refusals_stay_json_errors(client: TestClient, org: Org, session: dict[str, Any]):
    stream = {"Accept": "text/event-stream"}
    path = f"/v1/sessions/{session['id']}/runs"
    error_of(client.post("/v1/sessions/ses_nope/runs", json={"input": "hi"}, headers=org.headers | stream),
             404, "NOT_FOUND")
    error_of(client.post(path, json={"input": ""}, headers=org.headers | stream), 422, "VALIDATION_FAILED")
    viewer = {"Authorization": f"Bearer {org.key_with_role('viewer')}"}
    error_of(client.post(path, json={"input": "hi"}, headers=viewer | stream), 403, "FORBIDDEN")
    error_of(client.post(path, json={"input": "hi"}, headers=stream), 401, "UNAUTHENTICATED")


def test_a_replayed_streaming_post_streams_the_run_it_made(client: TestClient, org: Org, session: dict[str, Any]):
    key = {"Idempotency-Key": "stream-replay-1"}
    events, first = post_streaming(client, org, str(session["id"]), {"input": SCRIPT}, key)
    assert "idempotent-replayed" not in first
    # Once the run ended: the same stream again, read back from the store, and no second run.
    replayed, headers = post_streaming(client, org, str(session["id"]), {"input": SCRIPT}, key)
    assert headers["idempotent-replayed"] == "true" and headers["location"] == first["location"]
    assert replayed == events
    runs = client.get(f"/v1/sessions/{session['id']}/runs", headers=org.headers).json()["data"]
    assert [r["id"] for r in runs] == [events[0]["run_id"]]
    # Another body with the key is refused, as a JSON error.
    r = client.post(f"/v1/sessions/{session['id']}/runs", json={"input": "something else"},
                    headers=org.headers | key | {"Accept": "text/event-stream"})
    error_of(r, 422, "IDEMPOTENCY_MISMATCH")


def test_a_dropped_streaming_post_resumes_with_last_event_id(client: TestClient, org: Org, session: dict[str, Any]):
    head, _ = post_streaming(client, org, str(session["id"]), {"input": SCRIPT}, limit=3)
    assert [e["type"] for e in head][:2] == ["run.queued", "run.started"]
    run_id = head[0]["run_id"]
    rest = run_events(client, org.headers, run_id, last_event_id=head[-1]["seq"])
    assert_complete(head + rest, run_id)
    assert rest[-1]["type"] == "run.succeeded"


def _open_streams() -> float:
    """This process's open streams, from the gauge the API's streams count themselves in."""
    [family] = metrics.get().sse_open.collect()
    return sum(sample.value for sample in family.samples)


def test_a_client_that_leaves_a_streaming_post_frees_its_stream(settings: Settings, client: TestClient, org: Org):
    # A run that waits for a human: its stream stays open and quiet until the client leaves.
    agent = org.create_agent(skills=["file_manager"])
    session = org.create_session(str(agent["id"]))
    write = 'call: file_manager {"action": "write", "path": "w.txt", "content": "w"}'
    before = _open_streams()
    with serving(create_app(settings)) as served, httpx.Client(base_url=served.url, timeout=10) as http:
        with http.stream("POST", f"/v1/sessions/{session['id']}/runs", json={"input": write},
                         headers=org.headers | {"Accept": "text/event-stream"}) as response:
            assert response.status_code == 202
            first = orjson.loads(next(line for line in response.iter_lines() if line.startswith("data:"))[5:])
            assert first["type"] == "run.queued" and _open_streams() == before + 1
        deadline = time.monotonic() + 10
        while _open_streams() > before and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _open_streams() == before, "the stream outlived its client"
    r = client.post(f"/v1/runs/{first['run_id']}/cancel", headers=org.headers)
    assert r.status_code in (200, 202), r.text


def test_a_client_that_leaves_at_the_first_event_does_not_stop_its_run(settings: Settings, org: Org):
    # The API's Redis answers 0.3 s late, so the send's answer (and the admission ticket's bind
    # that follows it) is still on its way when the client, having read `run.queued`, leaves; the
    # run must run all the same. (Its commands reached Redis already: that leaving never cancels
    # the send itself is pinned by tests/test_event_hub.py, on the reader.)
    redis_url = urlsplit(settings.redis.url)
    assert redis_url.port is not None
    agent = org.create_agent()
    session = org.create_session(str(agent["id"]))
    with TcpProxy(redis_url.port) as proxy:
        slow = settings.model_copy(update={"redis": settings.redis.model_copy(
            update={"url": redis_url._replace(netloc=f"127.0.0.1:{proxy.port}").geturl()})})
        with serving(create_app(slow)) as served, httpx.Client(base_url=served.url, timeout=10) as http:
            proxy.delay_s = 0.3
            with http.stream("POST", f"/v1/sessions/{session['id']}/runs", json={"input": "hello"},
                             headers=org.headers | {"Accept": "text/event-stream"}) as response:
                assert response.status_code == 202
                first = orjson.loads(next(line for line in response.iter_lines() if line.startswith("data:"))[5:])
                assert first["type"] == "run.queued"
            # Well before the watchdog would send a run whose message never came (30 s).
            assert wait(org, first["run_id"], timeout=15)["status"] == "succeeded"
