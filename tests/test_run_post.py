"""`POST /v1/sessions/{id}/runs`, the API's hot path: what one POST stores (in one Postgres round
trip) and what it leaves alone when it stores nothing; its round trips to Postgres and Redis are
counted (tests/round_trips.py) and pinned, so a change cannot add one unnoticed."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar, cast

import httpx
import orjson
import psycopg
import pytest
import redis
from psycopg.rows import dict_row
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Message

from api.app import create_app
from core import events
from core.jobs import JobQueue
from core.settings import Settings
from core.tenancy import org_active_runs_key
from tests.helpers import ADMIN_TOKEN, Org, error_of, wait
from tests.round_trips import Trips, counting

T = TypeVar("T")
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
LONG_RUN = "wait: 10"  # stays active for the length of a test, worker or not


def in_process(settings: Settings, scenario: Callable[[httpx.AsyncClient], Awaitable[T]]) -> T:
    """`scenario` against the API in this process (its own app, lifespan and pools), so what a
    request sends can be counted in the request's own context."""
    return served(settings, lambda client, _app: scenario(client))


def served(settings: Settings, scenario: Callable[[httpx.AsyncClient, ASGIApp], Awaitable[T]]) -> T:
    """`in_process`, the scenario also given the app itself (for a stream read event by event)."""
    app = create_app(settings)

    async def go() -> T:
        async with app.router.lifespan_context(app) as state:
            # Until its invalidation feed is live the key cache serves no hit: a key looked up
            # per request would be counted as the POST's.
            keys = state["api"].auth.keys if state else None
            # Likewise the run's message rides the POST's Redis pipeline once the sender is connected.
            jobs = state["api"].infra.jobs if state else None
            for _ in range(500):
                if (keys is None or keys.enabled) and (jobs is None or jobs.sends_on_loop):
                    break
                await asyncio.sleep(0.01)
            async def with_state(scope: Any, receive: Any, send: Any) -> None:
                scope["state"] = dict(state or {})
                await app(scope, receive, send)

            transport = httpx.ASGITransport(app=with_state)
            async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
                return await scenario(client, with_state)

    return asyncio.run(go())


def post_counted(settings: Settings, org: Org, session_id: str, body: dict[str, Any]) -> tuple[httpx.Response, Trips]:
    warm = str(org.create_session(str(org.create_agent()["id"]))["id"])

    async def scenario(client: httpx.AsyncClient) -> tuple[httpx.Response, Trips]:
        # A first POST reads the org's limits (then cached by the process) and loads the scripts.
        first = await client.post(f"/v1/sessions/{warm}/runs", json={"input": "warm"}, headers=org.headers)
        assert first.status_code == 202, first.text
        with counting() as trips:
            r = await client.post(f"/v1/sessions/{session_id}/runs", json=body, headers=org.headers)
        return r, trips

    return in_process(settings, scenario)


@pytest.fixture
def db(settings: Settings) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """The database as its owner (no row-level security): to look at what a POST stored."""
    with psycopg.connect(settings.database.url, row_factory=dict_row, autocommit=True) as conn:
        yield conn


def stored(db: psycopg.Connection[dict[str, Any]], session_id: str) -> dict[str, Any]:
    """What POSTs write to a session: its seq, runs (with their line places), messages, `run.queued`
    events and audit entries (a worker that starts a run changes its status and adds events)."""
    def rows(sql: str) -> list[dict[str, Any]]:
        return db.execute(sql, (session_id,)).fetchall()

    seq = db.execute("SELECT event_seq FROM sessions WHERE id = %s", (session_id,)).fetchone()
    return {
        "event_seq": seq["event_seq"] if seq else None,
        "runs": rows("SELECT id, queue_seq, agent_id, trace_id FROM runs WHERE session_id = %s ORDER BY id"),
        "messages": rows("SELECT run_id, role, content FROM messages WHERE session_id = %s AND role = 'user' "
                         "ORDER BY id"),
        "events": rows("SELECT seq, run_id, type, data FROM run_events WHERE session_id = %s AND type = 'run.queued' "
                       "ORDER BY seq"),
        "audit": rows("SELECT actor, target_id, details, trace_id FROM audit_logs "
                      "WHERE action = 'run.create' AND details->>'session_id' = %s ORDER BY id"),
    }


def without_seq(found: dict[str, Any]) -> dict[str, Any]:
    """`stored` but the seq, which a worker executing the session's run moves on."""
    return {k: v for k, v in found.items() if k != "event_seq"}


def test_a_post_costs_one_postgres_round_trip_and_two_redis_ones(org: Org, settings: Settings,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """BEGIN, the org, the session's lock, the run (with its message, event and line place), the
    audit entry and COMMIT travel as one batch; Redis: the rate and the admission in one script,
    then the event's publication with the admission's bind and the run's Celery message, on the
    loop: no thread."""
    session = str(org.create_session(str(org.create_agent()["id"]))["id"])
    threads: list[str] = []  # runs sent from a thread (JobQueue.enqueue_run) instead
    enqueue_run = JobQueue.enqueue_run

    async def counted(self: JobQueue, run_id: str, org_id: str) -> None:
        threads.append(run_id)
        await enqueue_run(self, run_id, org_id)

    monkeypatch.setattr(JobQueue, "enqueue_run", counted)
    r, trips = post_counted(settings, org, session, {"input": "hello"})
    assert r.status_code == 202, r.text
    assert len(trips.pg) == 1, trips.summary()
    assert len(trips.statements) == 6, trips.summary()
    assert trips.redis == ["EVALSHA", "pipeline EVALSHA,XADD,EXPIRE,LPUSH"], trips.summary()
    assert threads == [], threads


def test_with_budgets_the_post_decides_before_its_commit(client: TestClient, org: Org, settings: Settings) -> None:
    """An org with a budget: the run's answer is read before the commit (a 429 rolls it back),
    then the day's run count, then COMMIT."""
    patched = client.patch(f"/v1/orgs/{org.id}", json={"budgets": {"max_runs_per_day": 100}}, headers=ADMIN)
    assert patched.status_code == 200, patched.text
    session = str(org.create_session(str(org.create_agent()["id"]))["id"])
    r, trips = post_counted(settings, org, session, {"input": "hello"})
    assert r.status_code == 202, r.text
    assert len(trips.pg) == 3, trips.summary()
    assert len(trips.statements) == 7, trips.summary()


def test_a_post_stores_the_run_its_message_event_line_place_and_audit_entry(
        org: Org, db: psycopg.Connection[dict[str, Any]]) -> None:
    agent = org.create_agent()
    session = str(org.create_session(str(agent["id"]))["id"])
    before = stored(db, session)["event_seq"]
    r = org.client.post(f"/v1/sessions/{session}/runs", json={"input": "hello"}, headers=org.headers)
    assert r.status_code == 202, r.text
    run = r.json()
    after = stored(db, session)
    assert after["event_seq"] >= before + 1  # (more once a worker starts the run)
    assert after["runs"] == [{"id": run["id"], "queue_seq": before + 1, "agent_id": agent["id"],
                              "trace_id": run["trace_id"]}]
    assert run["status"] == "queued"
    assert after["messages"] == [{"run_id": run["id"], "role": "user", "content": "hello"}]
    assert after["events"][0] == {"seq": before + 1, "run_id": run["id"], "type": events.RUN_QUEUED,
                                  "data": {"attempt": 0}}
    assert len(after["audit"]) == 1
    assert after["audit"][0]["target_id"] == run["id"] and after["audit"][0]["trace_id"] == run["trace_id"]
    assert after["audit"][0]["details"] == {"session_id": session, "agent_id": agent["id"]}


def test_a_busy_reject_a_replay_and_a_mismatch_store_nothing(org: Org, db: psycopg.Connection[dict[str, Any]]) -> None:
    session = str(org.create_session(str(org.create_agent()["id"]))["id"])
    url = f"/v1/sessions/{session}/runs"
    first = org.client.post(url, json={"input": LONG_RUN}, headers=org.headers | {"Idempotency-Key": "once"})
    assert first.status_code == 202, first.text
    try:
        before = without_seq(stored(db, session))
        busy = org.client.post(url, json={"input": "now", "multitask": "reject"}, headers=org.headers)
        assert error_of(busy, 409, "SESSION_BUSY")["details"] == {"active_run_id": first.json()["id"]}
        replay = org.client.post(url, json={"input": LONG_RUN}, headers=org.headers | {"Idempotency-Key": "once"})
        assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true"
        assert replay.json()["id"] == first.json()["id"]
        mismatch = org.client.post(url, json={"input": "other"}, headers=org.headers | {"Idempotency-Key": "once"})
        error_of(mismatch, 422, "IDEMPOTENCY_MISMATCH")
        # A replay of a reject POST answers its run even though the session is busy (with it).
        again = org.client.post(url, json={"input": LONG_RUN}, headers=org.headers | {"Idempotency-Key": "once"})
        assert again.json()["id"] == first.json()["id"]
        assert without_seq(stored(db, session)) == before  # no row written
    finally:
        org.client.post(f"/v1/runs/{first.json()['id']}/cancel", headers=org.headers)


def test_enqueued_posts_take_line_places_in_post_order(org: Org, db: psycopg.Connection[dict[str, Any]]) -> None:
    session = str(org.create_session(str(org.create_agent()["id"]))["id"])
    ids = []
    try:
        for text in (LONG_RUN, "second", "third"):
            r = org.client.post(f"/v1/sessions/{session}/runs", json={"input": text}, headers=org.headers)
            assert r.status_code == 202, r.text
            ids.append(r.json()["id"])
        runs = stored(db, session)["runs"]
        by_place = [run["id"] for run in sorted(runs, key=lambda run: run["queue_seq"])]
        assert by_place == ids
        queued = [e for e in stored(db, session)["events"] if e["type"] == events.RUN_QUEUED]
        assert [e["run_id"] for e in queued] == ids
        assert [e["seq"] for e in queued] == sorted(run["queue_seq"] for run in runs)
    finally:
        for run_id in ids:
            org.client.post(f"/v1/runs/{run_id}/cancel", headers=org.headers)


def test_a_post_to_a_session_whose_agent_was_deleted_is_409_and_stores_nothing(
        org: Org, db: psycopg.Connection[dict[str, Any]]) -> None:
    agent = org.create_agent()
    session = str(org.create_session(str(agent["id"]))["id"])
    assert org.client.delete(f"/v1/agents/{agent['id']}", headers=org.headers).status_code == 204
    before = stored(db, session)
    r = org.client.post(f"/v1/sessions/{session}/runs", json={"input": "hello"},
                        headers=org.headers | {"Idempotency-Key": "k"})
    error_of(r, 409, "CONFLICT")
    assert stored(db, session) == before


def test_the_bind_is_made_even_after_redis_lost_its_scripts(org: Org, settings: Settings) -> None:
    """The bind rides in the publication's pipeline as a bare EVALSHA: a Redis that lost its
    scripts (a restart) answers NOSCRIPT, and the bind is made once more, loading the script."""
    session = str(org.create_session(str(org.create_agent()["id"]))["id"])
    plain = redis.Redis.from_url(settings.redis.url)
    try:
        async def scenario(client: httpx.AsyncClient) -> str:
            warm = await client.get("/v1/agents", headers=org.headers)  # the org's limits, cached
            assert warm.status_code == 200, warm.text
            plain.script_flush()
            r = await client.post(f"/v1/sessions/{session}/runs", json={"input": LONG_RUN}, headers=org.headers)
            assert r.status_code == 202, r.text
            return str(r.json()["id"])

        run_id = in_process(settings, scenario)
        members = {m.decode() for m in cast(list[bytes], plain.zrange(org_active_runs_key(org.id), 0, -1))}
        assert run_id in members and not any(m.startswith("pending:") for m in members)
        org.client.post(f"/v1/runs/{run_id}/cancel", headers=org.headers)
    finally:
        plain.close()


def test_run_queued_gets_no_webhook_delivery() -> None:
    """The POST stores `run.queued` in its own statement, without `events.append_with_deliveries`:
    right only while no webhook can subscribe to it."""
    assert events.RUN_QUEUED not in events.WEBHOOK_EVENT_TYPES


def test_refusals_inside_the_transaction_roll_everything_back(client: TestClient, org: Org,
                                                              db: psycopg.Connection[dict[str, Any]]) -> None:
    """Budgets and the cap are decided before the commit: a refused run leaves no run, message,
    event, seq or audit entry (the audit entry was sent before the refusal was known)."""
    r = client.patch(f"/v1/orgs/{org.id}", json={"budgets": {"max_runs_per_day": 1}}, headers=ADMIN)
    assert r.status_code == 200, r.text
    agent = org.create_agent()
    first, second, third = (str(org.create_session(str(agent["id"]))["id"]) for _ in range(3))
    ok = org.client.post(f"/v1/sessions/{first}/runs", json={"input": "hello"}, headers=org.headers)
    assert ok.status_code == 202, ok.text
    before = stored(db, second)
    over_budget = org.client.post(f"/v1/sessions/{second}/runs", json={"input": "hello"}, headers=org.headers)
    assert error_of(over_budget, 429, "QUOTA_EXCEEDED")["details"]["budget"] == "max_runs_per_day"
    assert stored(db, second) == before

    # The first run ends (cancelled if no worker took it, else it ends on its own) before the cap
    # of one active run is set, so the run that holds the one place is the long one below.
    org.client.post(f"/v1/runs/{ok.json()['id']}/cancel", headers=org.headers)
    wait(org, ok.json()["id"])
    lifted = {"budgets": {"max_runs_per_day": None}, "limits": {"max_active_runs": 1}}
    r = client.patch(f"/v1/orgs/{org.id}", json=lifted, headers=ADMIN)
    assert r.status_code == 200, r.text
    held = org.client.post(f"/v1/sessions/{first}/runs", json={"input": LONG_RUN}, headers=org.headers)
    assert held.status_code == 202, held.text
    try:
        before = stored(db, third)
        at_cap = org.client.post(f"/v1/sessions/{third}/runs", json={"input": "hello"},
                                 headers=org.headers | {"Idempotency-Key": "new"})
        error_of(at_cap, 429, "QUOTA_EXCEEDED")
        assert stored(db, third) == before
    finally:
        for run in (ok, held):
            if run.status_code == 202:
                org.client.post(f"/v1/runs/{run.json()['id']}/cancel", headers=org.headers)


# --- the rate and the admission, one Redis round trip ----------------------------------------------


Request = tuple[str, dict[str, Any], dict[str, str]]  # (url, body, headers) of a POST


def posts_counted(settings: Settings, warm: list[Request], counted: Request) -> tuple[httpx.Response, Trips]:
    """`warm` POSTs (they load the org's limits, its keys and the scripts), then one counted."""
    async def scenario(client: httpx.AsyncClient) -> tuple[httpx.Response, Trips]:
        for url, body, headers in warm:
            await client.post(url, json=body, headers=headers)
        url, body, headers = counted
        with counting() as trips:
            r = await client.post(url, json=body, headers=headers)
        return r, trips

    return in_process(settings, scenario)


def places(settings: Settings, org: Org) -> set[str]:
    """The org's active-run set: its runs and the reservations of requests not yet done."""
    plain = redis.Redis.from_url(settings.redis.url)
    try:
        return {m.decode() for m in cast(list[bytes], plain.zrange(org_active_runs_key(org.id), 0, -1))}
    finally:
        plain.close()


def reservations(settings: Settings, org: Org) -> set[str]:
    return {m for m in places(settings, org) if m.startswith("pending:")}


def test_a_rate_limited_post_is_429_first_and_takes_no_place(client: TestClient, org: Org,
                                                             settings: Settings) -> None:
    """Two tokens: the warm POST takes one, a GET the other; the POST then is refused by its one
    round trip, before anything else (even a malformed body), and no place is taken."""
    session = str(org.create_session(str(org.create_agent()["id"]))["id"])
    r = client.patch(f"/v1/orgs/{org.id}", json={"limits": {"requests_per_minute": 1, "burst": 2}}, headers=ADMIN)
    assert r.status_code == 200, r.text
    url = f"/v1/sessions/{session}/runs"

    async def scenario(client: httpx.AsyncClient) -> tuple[httpx.Response, httpx.Response, Trips]:
        first = await client.post(url, json={"input": LONG_RUN}, headers=org.headers)
        assert first.status_code == 202 and first.headers["RateLimit-Remaining"] == "1", first.text
        assert (await client.get("/v1/me", headers=org.headers)).status_code == 200
        with counting() as trips:
            refused = await client.post(url, json={"input": ""}, headers=org.headers | {"Idempotency-Key": "k"})
        return first, refused, trips

    first, refused, trips = in_process(settings, scenario)
    try:
        error = error_of(refused, 429, "RATE_LIMITED")
        assert error["details"]["burst"] == 2 and refused.headers["RateLimit-Remaining"] == "0"
        assert int(refused.headers["Retry-After"]) >= 1
        assert trips.redis == ["EVALSHA"] and trips.pg == [], trips.summary()
        assert reservations(settings, org) == set()
    finally:
        org.client.post(f"/v1/runs/{first.json()['id']}/cancel", headers=org.headers)


def test_a_viewers_post_is_forbidden_and_takes_no_place(org: Org, settings: Settings) -> None:
    """The role is known before Redis is asked: a viewer's POST draws on the rate alone."""
    session = str(org.create_session(str(org.create_agent()["id"]))["id"])
    viewer = {"Authorization": f"Bearer {org.key_with_role('viewer')}"}
    url = f"/v1/sessions/{session}/runs"
    r, trips = posts_counted(settings, [(url, {"input": "warm"}, org.headers), (url, {"input": "x"}, viewer)],
                             (url, {"input": "hello"}, viewer))
    error_of(r, 403, "FORBIDDEN")
    assert trips.redis == ["EVALSHA"] and trips.pg == [], trips.summary()
    assert reservations(settings, org) == set()


@pytest.mark.parametrize(("path", "body", "headers", "status", "code"), [
    ("{session}", {"input": ""}, {}, 422, "VALIDATION_FAILED"),
    ("{session}", {"input": "hello", "extra": 1}, {}, 422, "VALIDATION_FAILED"),
    ("{session}", {"input": "hello"}, {"Content-Type": "text/plain"}, 415, "UNSUPPORTED_MEDIA_TYPE"),
    ("{session}", {"input": "hello"}, {"Idempotency-Key": "x" * 201}, 400, "BAD_REQUEST"),
    ("not-a-session", {"input": "hello"}, {}, 404, "NOT_FOUND"),
    ("ses_" + "0" * 28, {"input": "hello"}, {"Idempotency-Key": "k"}, 404, "NOT_FOUND"),
])
def test_a_post_refused_after_its_admission_leaves_no_place_behind(
        org: Org, settings: Settings, path: str, body: dict[str, Any], headers: dict[str, str],
        status: int, code: str) -> None:
    """The place taken with the rate's token is released when the body, the path or the
    Idempotency-Key refuse the request (or the session does not exist)."""
    session = str(org.create_session(str(org.create_agent()["id"]))["id"])
    url = f"/v1/sessions/{path.format(session=session)}/runs"
    warm = f"/v1/sessions/{session}/runs"
    r, trips = posts_counted(settings, [(warm, {"input": "warm"}, org.headers)], (url, body, org.headers | headers))
    error_of(r, status, code)
    assert trips.redis[0] == "EVALSHA", trips.summary()
    assert reservations(settings, org) == set()


def test_at_the_cap_only_a_replay_passes_and_no_place_is_left_behind(client: TestClient, org: Org,
                                                                     settings: Settings) -> None:
    r = client.patch(f"/v1/orgs/{org.id}", json={"limits": {"max_active_runs": 1}}, headers=ADMIN)
    assert r.status_code == 200, r.text
    agent = str(org.create_agent()["id"])
    held_session, other = (str(org.create_session(agent)["id"]) for _ in range(2))
    held = org.client.post(f"/v1/sessions/{held_session}/runs", json={"input": LONG_RUN},
                           headers=org.headers | {"Idempotency-Key": "held"})
    assert held.status_code == 202, held.text
    try:
        url = f"/v1/sessions/{other}/runs"
        error = error_of(org.client.post(url, json={"input": "hello"}, headers=org.headers), 429, "QUOTA_EXCEEDED")
        assert error["details"] == {"max_active_runs": 1, "active_runs": 1}
        error_of(org.client.post(url, json={"input": "hello"}, headers=org.headers | {"Idempotency-Key": "new"}),
                 429, "QUOTA_EXCEEDED")
        replay = org.client.post(f"/v1/sessions/{held_session}/runs", json={"input": LONG_RUN},
                                 headers=org.headers | {"Idempotency-Key": "held"})
        assert replay.status_code == 202 and replay.headers["Idempotent-Replayed"] == "true", replay.text
        assert replay.json()["id"] == held.json()["id"] and "RateLimit-Remaining" in replay.headers
        assert places(settings, org) == {held.json()["id"]}
        assert org.client.get(f"/v1/sessions/{other}/runs", headers=org.headers).json()["data"] == []
    finally:
        org.client.post(f"/v1/runs/{held.json()['id']}/cancel", headers=org.headers)


def test_an_accepted_post_carries_the_rate_headers(org: Org, settings: Settings) -> None:
    session = str(org.create_session(str(org.create_agent()["id"]))["id"])
    r, _ = post_counted(settings, org, session, {"input": "hello"})
    assert r.status_code == 202, r.text
    assert r.headers["RateLimit-Limit"] == "1200" and int(r.headers["RateLimit-Remaining"]) >= 0


# --- the stream opened right after the POST -----------------------------------------------------


async def first_event(app: ASGIApp, path: str, headers: dict[str, str]) -> tuple[bytes, Trips]:
    """GET an event stream until its first event: that event's bytes, and the round trips made
    before it was sent (then the client leaves). httpx's ASGI transport would wait for the end."""
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
             "server": ("api", 80), "client": ("127.0.0.1", 50000)}
    got: list[tuple[bytes, Trips]] = []
    asked, gone = False, asyncio.Event()

    async def receive() -> Message:
        nonlocal asked
        if not asked:
            asked = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        assert message["type"] != "http.response.start" or message["status"] == 200, message
        body = message.get("body", b"")
        if message["type"] == "http.response.body" and b"data:" in body and not got:
            got.append((body, Trips(list(trips.pg), list(trips.statements), list(trips.redis))))
            gone.set()

    with counting() as trips:
        await asyncio.wait_for(app(scope, receive, send), 30)
    assert got, "the stream ended without an event"
    return got[0]


def test_the_stream_opened_right_after_the_post_sends_run_queued_before_any_round_trip(
        org: Org, settings: Settings) -> None:
    """The API process that took the POST holds the run's run.queued (api.fresh_runs): the stream
    sends it, the same bytes a read from Redis gives, after the rate's round trip alone."""
    session = str(org.create_session(str(org.create_agent()["id"]))["id"])
    url = f"/v1/sessions/{session}/runs"

    async def scenario(client: httpx.AsyncClient, app: ASGIApp) -> tuple[dict[str, Any], bytes, Trips, bytes]:
        warm = await client.post(url, json={"input": "warm"}, headers=org.headers)
        assert warm.status_code == 202, warm.text
        await first_event(app, f"/v1/runs/{warm.json()['id']}/events", org.headers)
        r = await client.post(url, json={"input": LONG_RUN}, headers=org.headers)
        assert r.status_code == 202, r.text
        run = dict(r.json())
        fresh, trips = await first_event(app, f"/v1/runs/{run['id']}/events", org.headers)
        # The same event read back (from Redis: a cursor takes the path that looks the run up).
        seq = int(fresh.split(b"\r\n")[0].removeprefix(b"id: "))
        read, _ = await first_event(app, f"/v1/runs/{run['id']}/events",
                                    org.headers | {"Last-Event-ID": str(seq - 1)})
        return run, fresh, trips, read

    run, fresh, trips, read = served(settings, scenario)
    try:
        assert trips.redis == ["EVALSHA"] and trips.pg == [], trips.summary()
        assert fresh.startswith(b"id: ") and b"\r\nevent: run.queued\r\n" in fresh, fresh
        assert fresh == read
        assert orjson.loads(fresh.split(b"data: ", 1)[1])["run_id"] == run["id"]
    finally:
        org.client.post(f"/v1/runs/{run['id']}/cancel", headers=org.headers)
