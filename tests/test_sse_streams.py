"""What an idle SSE stream costs the API process (a real uvicorn server): at most two asyncio
tasks (its request and its disconnect listener), no timer task of its own; a client that leaves
stops following at once; a HEAD answers the headers without starting the stream. Memory per
stream at 10,000 streams is in bench/sse.py (docs/benchmarks.md)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any, cast

import httpx
import pytest
import redis.asyncio as aioredis
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from api.app import create_app
from core.event_hub import EventHub
from tests.helpers import Org, RsaKeys, Served, make_settings, new_org, serving, until

STREAMS = 20
TASKS_PER_STREAM = 2


def _followers(served: Served) -> int:
    return int(served.state["api"].events.followers)


def _tasks(served: Served) -> int:
    """The asyncio tasks of the server's loop, counted on that loop."""
    loop = next(iter(served.server.server_state.tasks)).get_loop()

    async def count() -> int:
        return len(asyncio.all_tasks())

    return asyncio.run_coroutine_threadsafe(count(), loop).result(timeout=10)


@contextmanager
def _served_org(stack: StackUrls, rsa_keys: RsaKeys) -> Iterator[tuple[Served, Org, str]]:
    settings = make_settings(stack, rsa_keys, events={"keepalive_s": 0.2})
    app = create_app(settings)
    with serving(app) as served, TestClient(app) as client:
        org = new_org(client)
        session = org.create_session(str(org.create_agent()["id"]))
        yield served, org, str(session["id"])


def _open(stack: ExitStack, http: httpx.Client, path: str, headers: dict[str, str]) -> Any:
    response = stack.enter_context(http.stream("GET", path, headers=headers))
    assert response.status_code == 200
    return response


@pytest.mark.timeout(120)
def test_an_idle_stream_costs_at_most_two_tasks_and_keep_alives_still_come(stack: StackUrls, rsa_keys: RsaKeys):
    with _served_org(stack, rsa_keys) as (served, org, session_id), httpx.Client(
        base_url=served.url, timeout=30, limits=httpx.Limits(max_connections=STREAMS + 2)
    ) as http, ExitStack() as streams:
        path = f"/v1/sessions/{session_id}/events"
        first = _open(streams, http, path, org.headers)
        until(lambda: _followers(served) == 1)
        one = _tasks(served)
        for _ in range(STREAMS):
            _open(streams, http, path, org.headers)
        until(lambda: _followers(served) == STREAMS + 1)
        assert _followers(served) == STREAMS + 1
        more = _tasks(served)
        assert (more - one) / STREAMS <= TASKS_PER_STREAM, (one, more)
        # Keep-alives come from the hub's one timer, not a task per stream: they still come.
        lines = first.iter_lines()
        comments = []
        for line in lines:
            if line.startswith(": ping"):
                comments.append(line)
                if len(comments) == 3:
                    break
        assert len(comments) == 3


@pytest.mark.timeout(120)
def test_a_client_that_leaves_an_idle_stream_stops_following(stack: StackUrls, rsa_keys: RsaKeys):
    with _served_org(stack, rsa_keys) as (served, org, session_id), httpx.Client(
        base_url=served.url, timeout=30
    ) as http:
        with ExitStack() as streams:
            _open(streams, http, f"/v1/sessions/{session_id}/events", org.headers)
            until(lambda: _followers(served) == 1)
            assert _followers(served) == 1
        until(lambda: _followers(served) == 0)  # the client closed its socket
        assert _followers(served) == 0
        assert not served.server.server_state.tasks, "the stream's request task ended"


def test_head_of_an_event_stream_answers_headers_without_streaming(client: TestClient, org: Org):
    session = org.create_session(str(org.create_agent()["id"]))
    r = client.head(f"/v1/sessions/{session['id']}/events", headers=org.headers)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.content == b""


def test_the_event_stream_wire_format_is_unchanged(client: TestClient, org: Org):
    """`id:`, `event:` and `data:` lines, CRLF line ends, as sse-starlette wrote them."""
    session = org.create_session(str(org.create_agent()["id"]))
    r = client.post(f"/v1/sessions/{session['id']}/runs", json={"input": "hi"}, headers=org.headers)
    assert r.status_code == 202, r.text
    with client.stream("GET", f"/v1/runs/{r.json()['id']}/events", headers=org.headers) as response:
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-accel-buffering"] == "no"
        raw = b""
        for chunk in response.iter_bytes():
            raw += chunk
            if b"id: " in raw and b"\r\n\r\n" in raw[raw.index(b"id: "):]:
                break
    first = raw[raw.index(b"id: "):].split(b"\r\n\r\n")[0].split(b"\r\n")
    assert [line.split(b": ")[0] for line in first] == [b"id", b"event", b"data"], raw
    assert first[1] == b"event: run.queued"



def test_the_hubs_one_timer_marks_each_follower_due_once_per_interval():
    """A keep-alive is due `keepalive_s` after a follower joined or got its last one; the mark
    wakes a waiting follower; a drained hub ends every follower, also one that joins later."""

    async def scenario() -> None:
        hub = EventHub(cast(Any, None), aioredis.Redis(), block_s=1, check_s=1, keepalive_s=15)
        followers = [hub.join("org", f"ses_{i}", 0) for i in range(3)]
        now = time.monotonic()
        hub._mark_keepalives(15, now + 10)
        assert not any(f.ping for f in followers)
        hub._mark_keepalives(15, now + 15.1)
        assert all(f.ping for f in followers)
        for f in followers:
            f.ping = False
        hub._mark_keepalives(15, now + 20)  # marked 4.9 s ago: not due
        assert not any(f.ping for f in followers)
        waiting = asyncio.ensure_future(followers[0].waiter())
        hub._mark_keepalives(15, now + 30.2)
        await asyncio.wait_for(waiting, 1)  # the mark woke the waiting follower
        assert all(f.ping for f in followers)
        hub.leave(followers[1])
        hub.drain()
        assert followers[0].closed and followers[2].closed and not followers[1].closed
        assert hub.join("org", "ses_after", 0).closed
        await hub.redis.aclose()

    asyncio.run(scenario())


def test_a_change_to_one_streams_headers_leaves_every_other_streams_alone():
    """Streams share one list of their fixed headers (memory per idle stream); whatever changes a
    stream's headers, the endpoint's `headers` or Starlette's `set_cookie`, changes its own copy."""
    from prometheus_client import CollectorRegistry, Gauge

    from api.sse import EventStream

    async def nothing() -> Any:
        yield None

    gauge = Gauge("g", "g", registry=CollectorRegistry())
    fixed = {"Cache-Control": "no-cache"}
    first, second, third = (EventStream(nothing(), gauge=gauge, headers=fixed) for _ in range(3))
    before = list(second.raw_headers)
    first.headers["RateLimit-Limit"] = "10"
    second.set_cookie("c", "v")
    assert (b"ratelimit-limit", b"10") in first.raw_headers
    assert not any(name == b"ratelimit-limit" for name, _ in second.raw_headers)
    assert any(name == b"set-cookie" for name, _ in second.raw_headers)
    assert third.raw_headers == before  # the shared pairs, untouched by either
    assert first._start()["headers"] == first.raw_headers


def test_a_run_stream_writes_each_batch_at_hand_once_and_its_terminal_event_with_its_end() -> None:
    """The reader hands the stream the events at hand in batches; each batch is one body message
    (one write, one wake-up of the client) of the run's own events, other runs' left out, and
    the batch with the terminal event is the response's last message, its end with it (uvicorn
    writes a chunked body's last chunk and its end together). A session stream sends every
    event of a batch."""
    from datetime import UTC, datetime

    from prometheus_client import CollectorRegistry, Gauge

    from api.sse import EventStream, event_bytes
    from core.events import Event

    def event(seq: int, type_: str, run_id: str = "run_a") -> Event:
        return Event(seq=seq, type=type_, run_id=run_id, session_id="ses_a", ts=datetime.now(UTC), data={})

    batches: list[list[Event] | None] = [
        [event(1, "run.queued")],
        [event(2, "run.started"), event(3, "run.started", "run_b"), event(4, "step.started")],
        None,  # a keep-alive due
        [event(5, "run.started", "run_b")],  # none of the run's: nothing sent
        [event(6, "message.completed"), event(7, "run.succeeded"), event(8, "run.queued", "run_b")],
    ]

    async def events() -> Any:
        for batch in batches:
            yield batch

    async def bodies(run_id: str | None) -> list[tuple[bytes, bool]]:
        sent: list[dict[str, Any]] = []
        received = [{"type": "http.request", "body": b"", "more_body": False}]

        async def receive() -> dict[str, Any]:
            if received:
                return received.pop()
            await asyncio.sleep(3600)
            return {"type": "http.disconnect"}

        async def send(message: Any) -> None:
            sent.append(message)

        stream = EventStream(events(), gauge=Gauge("g2", "g", registry=CollectorRegistry()), run_id=run_id)
        await stream({"type": "http", "method": "GET"}, receive, send)
        return [(m["body"], m["more_body"]) for m in sent if m["type"] == "http.response.body"]

    def wire(*seqs: int) -> bytes:
        return b"".join(event_bytes(e) for b in batches if b for e in b if e.seq in seqs)

    run = asyncio.run(bodies("run_a"))
    assert [more for _, more in run] == [True, True, True, False]
    assert run[0][0] == wire(1) and run[1][0] == wire(2, 4) and run[2][0].startswith(b": ping")
    assert run[3][0] == wire(6, 7)
    session = asyncio.run(bodies(None))
    assert [body for body, _ in session if not body.startswith(b": ping")] == [
        wire(1), wire(2, 3, 4), wire(5), wire(6, 7, 8), b""]
