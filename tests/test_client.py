"""`agentos.client` against the real stack: an `agentos api` process (reached directly, or through
a `TcpProxy` that breaks connections at chosen points) and the suite's worker.

CRUD and pagination, errors as typed exceptions with the API's codes, a 429 retried no sooner
than its `Retry-After`, a run creation whose answer was lost retried without a second run, wait
and approvals, and streams that resume after a cut with no gap and no duplicate."""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import jwt
import pytest
from starlette.testclient import TestClient

from agentos.client import (
    AsyncClient,
    Client,
    Conflict,
    ConnectionFailed,
    Event,
    Forbidden,
    NotFound,
    RateLimited,
    SessionBusy,
    ToolCall,
    Unauthenticated,
    Unavailable,
    ValidationFailed,
)
from agentos.client.models import TERMINAL_EVENTS
from agentos.stack.local import StackUrls
from tests.helpers import ADMIN_TOKEN, AGENTOS, JWT_SECRET, Org, Worker, cli_env, running_api
from tests.tcp_proxy import TcpProxy

# Two file_manager calls: a run of a dozen or more events.
SCRIPT = "\n".join([
    'call: file_manager {"action": "write", "path": "a.txt", "content": "hello"}',
    'call: file_manager {"action": "read", "path": "a.txt"}',
])
WRITE = 'call: file_manager {"action": "write", "path": "b.txt", "content": "b"}'


@pytest.fixture(scope="module")
def api_url(stack: StackUrls, worker: Worker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`agentos api` on the suite's stack (and so the suite's worker), over real HTTP."""
    env = cli_env() | {"AGENTOS_ENV": "test", "AGENTOS_DATABASE_URL": stack.database_url,
                       "AGENTOS_REDIS_URL": stack.redis_url, "AGENTOS_AUTH__PLATFORM_ADMIN_TOKEN": ADMIN_TOKEN,
                       "AGENTOS_AUTH__JWT_SECRET": JWT_SECRET}
    with running_api(AGENTOS, tmp_path_factory.mktemp("client-api") / "api.log", env) as (url, _):
        yield url


@pytest.fixture
def aos(api_url: str, org: Org) -> Iterator[Client]:
    """The client, as `org`'s owner."""
    with Client(api_url, org.key) as c:
        yield c


def _agent_and_session(aos: Client, confirm: str = "none") -> tuple[str, str]:
    """An agent with file_manager (whose writes wait for a human unless `confirm` is "none") and a session."""
    created = aos.agents.create(f"agent-{secrets.token_hex(4)}", skills=["file_manager"], confirm=confirm)
    return created.id, aos.sessions.create(created.id).id


def _set_limits(admin: TestClient, org: Org, **limits: int) -> None:
    r = admin.patch(f"/v1/orgs/{org.id}", json={"limits": limits}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 200, r.text


# --- resources ---------------------------------------------------------------------------------------


def test_agents_sessions_and_keys_round_trip_as_typed_objects(aos: Client) -> None:
    agent = aos.agents.create("support", instructions="Be brief.", skills=["file_manager"])
    assert agent.id.startswith("agt_") and agent.version == 1 and agent.skills == ["file_manager"]
    assert agent.created_at is not None and agent.model == "offline:default"  # defaults filled in by the API
    assert aos.agents.get(agent.id) == agent
    changed = aos.agents.update(agent.id, instructions="Be thorough.")
    assert (changed.version, changed.instructions) == (2, "Be thorough.")

    session = aos.sessions.create(agent.id, title="first", user_id="alice", metadata={"k": 1})
    assert (session.agent_id, session.user_id, session.metadata) == (agent.id, "alice", {"k": 1})
    assert aos.sessions.get(session.id) == session
    assert [s.id for s in aos.sessions.iter(agent_id=agent.id)] == [session.id]

    key = aos.api_keys.create("ci", role="viewer")
    assert key.key and key.key.startswith("aos_") and key.role == "viewer"
    assert key.id in {k.id for k in aos.api_keys.iter()} and all(k.key is None for k in aos.api_keys.iter())
    assert aos.api_keys.revoke(key.id).revoked_at is not None

    aos.sessions.delete(session.id)
    aos.agents.delete(agent.id)
    with pytest.raises(NotFound):
        aos.agents.get(agent.id)


def test_the_list_iterator_follows_next_cursor_through_every_page(aos: Client) -> None:
    made = [aos.agents.create(f"paged-{i}").id for i in range(5)]
    first = aos.agents.list(limit=2)
    assert len(first) == 2 and first.next_cursor is not None
    seen = [a.id for a in aos.agents.iter(limit=2)]
    assert sorted(seen) == sorted(made) and len(seen) == len(set(seen))


def test_me_with_an_api_key_and_with_a_jwt(api_url: str, aos: Client, org: Org) -> None:
    assert aos.me().credential == "api_key" and aos.me().org_id == org.id
    token = jwt.encode({"sub": "user-42", "org_id": org.id, "aud": "agentos", "role": "member",
                        "exp": int(time.time()) + 300}, JWT_SECRET, algorithm="HS256")
    with Client(api_url, jwt=token) as as_user:
        me = as_user.me()
        assert (me.credential, me.user_id, me.role) == ("jwt", "user-42", "member")
        # the JWT's user is the default end user of the sessions it creates
        agent_id, _ = _agent_and_session(aos)
        assert as_user.sessions.create(agent_id).user_id == "user-42"


# --- errors ------------------------------------------------------------------------------------------


def test_errors_are_typed_and_carry_the_apis_code_status_and_details(api_url: str, aos: Client,
                                                                     org: Org) -> None:
    with pytest.raises(NotFound) as missing:
        aos.runs.get("run_" + "0" * 28)
    assert (missing.value.code, missing.value.status) == ("NOT_FOUND", 404) and missing.value.message

    aos.agents.create("taken")
    with pytest.raises(Conflict) as taken:
        aos.agents.create("taken")
    assert taken.value.code == "CONFLICT" and taken.value.details == {"field": "name"}

    with pytest.raises(ValidationFailed) as invalid:
        aos.agents.create("x", limits={"max_steps": 0}, colour="red")
    fields = {f["field"] for f in invalid.value.details["fields"]}
    assert invalid.value.status == 422 and fields == {"limits.max_steps", "colour"}

    with Client(api_url, "aos_" + "x" * 43) as stranger, pytest.raises(Unauthenticated) as refused:
        stranger.me()
    assert refused.value.status == 401

    with Client(api_url, org.key_with_role("viewer")) as viewer, pytest.raises(Forbidden) as forbidden:
        viewer.agents.create("nope")
    assert forbidden.value.code == "FORBIDDEN"


def test_a_busy_session_is_session_busy_naming_the_active_run(aos: Client) -> None:
    _, session = _agent_and_session(aos, confirm="all")
    first = aos.runs.create(session, WRITE)  # waits for an approval: stays active
    with pytest.raises(SessionBusy) as busy:
        aos.runs.create(session, "and now?", multitask="reject")
    assert busy.value.code == "SESSION_BUSY" and busy.value.details["active_run_id"] == first.id
    assert isinstance(busy.value, Conflict)
    aos.runs.cancel(first.id)


# --- retries -----------------------------------------------------------------------------------------


def test_a_429_is_retried_no_sooner_than_its_retry_after(client: TestClient, api_url: str, org: Org) -> None:
    _set_limits(client, org, requests_per_minute=60, burst=1)  # one request a second
    answers: list[httpx.Response] = []
    waited: list[float] = []

    def sleep(seconds: float) -> None:
        waited.append(seconds)
        time.sleep(seconds)

    http = httpx.Client(event_hooks={"response": [answers.append]})
    with Client(api_url, org.key, http=http, sleep=sleep) as patient:
        patient.me()
        assert patient.me().org_id == org.id  # the bucket was empty: 429, then a retry that passed
    statuses = [a.status_code for a in answers]
    assert statuses == [200, 429, 200], statuses
    told = float(answers[1].headers["retry-after"])
    assert told >= 1 and len(waited) == 1 and waited[0] >= told

    with Client(api_url, org.key, max_retries=0) as impatient, pytest.raises(RateLimited) as limited:
        impatient.me()
        impatient.me()
    assert limited.value.code == "RATE_LIMITED" and limited.value.retry_after is not None
    assert limited.value.retry_after >= 1


def test_a_run_creation_whose_answer_was_lost_is_retried_without_a_second_run(api_url: str, aos: Client,
                                                                              org: Org) -> None:
    _, session = _agent_and_session(aos)
    answers: list[httpx.Response] = []
    with TcpProxy(int(api_url.rsplit(":", 1)[1])) as proxy:
        http = httpx.Client(event_hooks={"response": [answers.append]})
        with Client(f"http://127.0.0.1:{proxy.port}", org.key, http=http) as flaky:
            proxy.cut_before(b"HTTP/1.1 ")  # the server creates the run; its answer never arrives
            run = flaky.runs.create(session, "only once")
    assert proxy.connections == 2, "the first answer was not lost, or the call was not retried"
    assert answers[-1].headers.get("idempotent-replayed") == "true", "the retry did not replay the first run"
    assert [r.id for r in aos.runs.iter(session)] == [run.id]
    assert len([m for m in aos.sessions.messages(session) if m.role == "user"]) == 1


def test_a_session_creation_whose_answer_was_lost_is_not_sent_again(api_url: str, aos: Client,
                                                                    org: Org) -> None:
    # The API does not deduplicate sessions: a retry could make a second one, so the client says
    # the request may have been handled instead of guessing.
    agent = aos.agents.create("lost-answer")
    with TcpProxy(int(api_url.rsplit(":", 1)[1])) as proxy:
        with Client(f"http://127.0.0.1:{proxy.port}", org.key) as flaky:
            proxy.cut_before(b"HTTP/1.1 ")
            with pytest.raises(ConnectionFailed) as lost:
                flaky.sessions.create(agent.id)
    assert lost.value.maybe_handled and lost.value.code == "CONNECTION_FAILED" and proxy.connections == 1
    assert len(aos.sessions.list(agent_id=agent.id)) == 1


# --- wait and approvals ------------------------------------------------------------------------------


def test_wait_returns_the_ended_run_and_with_a_timeout_the_run_as_it_is(aos: Client) -> None:
    _, session = _agent_and_session(aos)
    run = aos.runs.wait(aos.runs.create(session, SCRIPT).id, timeout_s=60)
    assert run.terminal and run.status == "succeeded" and run.text and run.text.startswith("Done.")

    _, waiting = _agent_and_session(aos, confirm="all")
    held = aos.runs.create(waiting, WRITE)
    now = aos.runs.wait(held.id, timeout_s=0)
    assert now.id == held.id and not now.terminal
    # Cancelled once it waits: a cancel that lands while the worker is pausing the run is lost
    # by the server today (the pause ignores the cancel request), which is not this test's subject.
    _pending_of(aos, held.id)
    aos.runs.cancel(held.id)
    assert aos.runs.wait(held.id, timeout_s=60).status == "cancelled"


def test_approvals_list_pending_calls_and_approve_or_reject_them(aos: Client) -> None:
    _, session = _agent_and_session(aos, confirm="all")
    run = aos.runs.create(session, WRITE)
    seen: list[str] = []
    for event in aos.runs.events(run.id):
        seen.append(event.type)
        if event.type == "confirmation.required":
            pending = [c for c in aos.tool_calls.pending() if c.run_id == run.id]
            assert [c.id for c in pending] == [event.data["tool_call_id"]] and pending[0].name == "file_manager"
            decided = aos.tool_calls.approve(pending[0].id)
            assert decided.status == "approved" and decided.decided_by
    assert seen[-1] == "run.succeeded" and "confirmation.resolved" in seen

    again = aos.runs.create(session, WRITE)
    call = _pending_of(aos, again.id)
    assert aos.tool_calls.reject(call.id, "not today").status == "rejected"
    assert aos.runs.wait(again.id, timeout_s=60).status == "succeeded"
    assert aos.runs.tool_calls(again.id)[0].decision_reason == "not today"


def _pending_of(aos: Client, run_id: str) -> ToolCall:
    """The run's call waiting for a human, once its stream says one does."""
    for event in aos.runs.events(run_id):
        if event.type == "confirmation.required":
            break
    return next(c for c in aos.tool_calls.pending() if c.run_id == run_id)


# --- streams that resume -----------------------------------------------------------------------------


def _cut_points(seed: int, runs: int) -> list[int]:
    """For each run, the event (1-based) before whose `data:` line its first connection breaks;
    every such run has at least ten events, so the cut always falls before the terminal one."""
    rng = random.Random(seed)
    return [rng.randint(1, 9) for _ in range(runs)]


def _check(events: list[Event], whole: list[Event]) -> tuple[int, int]:
    """(gaps, duplicates) of a followed stream against the run's whole stream read afterwards."""
    seqs, expected = [e.seq for e in events], [e.seq for e in whole]
    return len(set(expected) - set(seqs)), len(seqs) - len(set(seqs))


def test_a_stream_cut_mid_run_resumes_with_no_gap_and_no_duplicate(api_url: str, aos: Client,
                                                                   org: Org) -> None:
    _, session = _agent_and_session(aos)
    seed = int(os.environ.get("AGENTOS_TEST_SEED", secrets.randbelow(2**32)))
    print(f"seed {seed}")
    for cut in _cut_points(seed, 3):
        run = aos.runs.create(session, SCRIPT)
        with TcpProxy(int(api_url.rsplit(":", 1)[1])) as proxy:
            proxy.cut_before(b"data:", cut)
            with Client(f"http://127.0.0.1:{proxy.port}", org.key) as follower:
                events = list(follower.runs.events(run.id))
        whole = list(aos.runs.events(run.id))
        assert proxy.connections == 2, f"the stream was not cut at event {cut} and resumed"
        assert events == whole and _check(events, whole) == (0, 0)
        assert [e.type for e in events if e.type in TERMINAL_EVENTS] == ["run.succeeded"] == [events[-1].type]


@pytest.mark.timeout(300)
def test_fifty_runs_each_cut_at_a_random_event_arrive_whole(api_url: str, aos: Client, org: Org) -> None:
    """The acceptance test of issue 15: 50 runs followed with `AsyncClient`, each stream's
    connection broken before a random event; every stream must end with its terminal event,
    with 0 gaps and 0 duplicates."""
    runs_n, at_once = 50, 10
    seed = int(os.environ.get("AGENTOS_TEST_SEED", secrets.randbelow(2**32)))
    print(f"seed {seed} (AGENTOS_TEST_SEED={seed} repeats these cuts)")
    cuts = _cut_points(seed, runs_n)
    agent_id, _ = _agent_and_session(aos)
    port = int(api_url.rsplit(":", 1)[1])

    async def follow(run_id: str, cut: int, slots: asyncio.Semaphore) -> tuple[list[Event], int]:
        async with slots:
            with TcpProxy(port) as proxy:
                proxy.cut_before(b"data:", cut)
                async with AsyncClient(f"http://127.0.0.1:{proxy.port}", org.key) as follower:
                    events = [event async for event in follower.runs.events(run_id)]
                return events, proxy.connections

    async def all_runs() -> list[tuple[str, list[Event], int]]:
        async with AsyncClient(api_url, org.key) as direct:
            run_ids = []
            for _ in range(runs_n):
                session = await direct.sessions.create(agent_id)
                run_ids.append((await direct.runs.create(session.id, SCRIPT)).id)
            slots = asyncio.Semaphore(at_once)
            followed = await asyncio.gather(*(follow(r, c, slots) for r, c in zip(run_ids, cuts, strict=True)))
        return [(r, events, connections) for r, (events, connections) in zip(run_ids, followed, strict=True)]

    results = asyncio.run(all_runs())
    gaps = duplicates = unfinished = reconnected = 0
    differ = []
    for run_id, events, connections in results:
        whole = list(aos.runs.events(run_id))
        gap, dup = _check(events, whole)
        gaps, duplicates = gaps + gap, duplicates + dup
        unfinished += not (events and events[-1].type in TERMINAL_EVENTS)
        reconnected += connections >= 2
        if events != whole:
            differ.append(f"{run_id}: followed {[e.seq for e in events]}, stored {[e.seq for e in whole]}")
    print(f"{runs_n} runs, cuts before events {cuts}: {reconnected} resumed, {gaps} gaps, {duplicates} duplicates, "
          f"{unfinished} without a terminal event")
    assert (gaps, duplicates, unfinished, reconnected) == (0, 0, 0, runs_n), differ[:3]
    assert differ == []


def test_a_run_started_and_streamed_in_one_request_survives_cuts_without_a_second_run(
        api_url: str, aos: Client, org: Org) -> None:
    """`runs.stream`: the POST answers with the stream. Its answer lost (`HTTP/`), or the stream
    cut before the first event, the POST is sent again with its key: the same run, from its start.
    Cut later, the rest comes from `GET .../events`."""
    for marker, cut in ((b"HTTP/", 1), (b"data:", 1), (b"data:", 2), (b"data:", 6)):
        _, session = _agent_and_session(aos)
        with TcpProxy(int(api_url.rsplit(":", 1)[1])) as proxy:
            proxy.cut_before(marker, cut)
            with Client(f"http://127.0.0.1:{proxy.port}", org.key) as follower:
                events = list(follower.runs.stream(session, SCRIPT))
        assert proxy.connections == 2, f"{marker!r} {cut}: not cut and resumed"
        runs = list(aos.runs.iter(session))
        assert [r.id for r in runs] == [events[0].run_id], f"{marker!r} {cut}: {len(runs)} runs"
        whole = list(aos.runs.events(events[0].run_id))
        assert events == whole and _check(events, whole) == (0, 0), f"{marker!r} {cut}"
        assert events[0].type == "run.queued" and events[-1].type == "run.succeeded"


def test_the_async_clients_one_request_stream_is_the_runs_whole_stream(api_url: str, aos: Client,
                                                                         org: Org) -> None:
    _, session = _agent_and_session(aos)

    async def follow() -> list[Event]:
        async with AsyncClient(api_url, org.key) as client:
            return [event async for event in client.runs.stream(session, SCRIPT, metadata={"via": "stream"})]

    events = asyncio.run(follow())
    run = aos.runs.get(events[0].run_id)
    assert run.status == "succeeded" and run.metadata == {"via": "stream"}
    assert events == list(aos.runs.events(run.id))
    with pytest.raises(NotFound):
        list(aos.runs.stream("ses_" + "0" * 28, "hello"))


# --- the retry policy without a server -----------------------------------------------------------------


def _scripted(*answers: httpx.Response | Exception) -> tuple[httpx.Client, list[httpx.Request]]:
    """An httpx client whose transport gives `answers` in turn, and the requests it was sent."""
    sent: list[httpx.Request] = []
    queue = list(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        answer = queue.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return httpx.Client(transport=httpx.MockTransport(handle)), sent


UNAVAILABLE = httpx.Response(503, headers={"Retry-After": "0"},
                             json={"error": {"code": "UNAVAILABLE", "message": "Postgres is away.", "details": {}}})
AGENT = httpx.Response(201, json={"id": "agt_" + "1" * 28, "name": "a", "surprise": {"new": "field"}})


def test_unavailable_and_refused_connections_are_retried_then_the_error_is_typed() -> None:
    http, sent = _scripted(httpx.ConnectError("refused"), UNAVAILABLE, AGENT)
    with Client("http://api.invalid", "aos_k", http=http, sleep=lambda s: None) as c:
        agent = c.agents.create("a")
    assert agent.name == "a" and agent.model_extra == {"surprise": {"new": "field"}}  # unknown fields kept
    assert len(sent) == 3 and len({r.headers["idempotency-key"] for r in sent}) == 1

    http, sent = _scripted(UNAVAILABLE, UNAVAILABLE, UNAVAILABLE)
    with Client("http://api.invalid", "aos_k", http=http, sleep=lambda s: None, max_retries=2) as c:
        with pytest.raises(Unavailable) as gave_up:
            c.me()
    error = gave_up.value
    assert (error.code, error.status, error.message) == ("UNAVAILABLE", 503, "Postgres is away.")
    assert len(sent) == 3


def test_a_broken_answer_is_retried_only_where_the_api_deduplicates() -> None:
    run = httpx.Response(202, json={"id": "run_" + "1" * 28, "status": "queued"})
    http, sent = _scripted(httpx.ReadError("reset"), httpx.RemoteProtocolError("closed"), run)
    with Client("http://api.invalid", "aos_k", http=http, sleep=lambda s: None) as c:
        assert c.runs.create("ses_x", "hi").status == "queued"
    keys = [r.headers["idempotency-key"] for r in sent]
    assert len(keys) == 3 and len(set(keys)) == 1, "each retry of one call must send the same key"

    http, sent = _scripted(httpx.ReadError("reset"), AGENT)
    with Client("http://api.invalid", "aos_k", http=http, sleep=lambda s: None) as c:
        with pytest.raises(ConnectionFailed) as lost:
            c.agents.create("a")
    assert lost.value.maybe_handled and len(sent) == 1


def test_every_api_error_code_has_its_exception_class() -> None:
    from agentos.client.errors import error_class
    from core.errors import CODES

    for code, (status, _) in CODES.items():
        cls = error_class(code)
        assert cls.code == code, f"{code} has no class of its own"
        err = cls("m", code=code, status=status)
        assert err.code == code and err.status == status


def test_the_clients_terminal_events_are_the_servers() -> None:
    from core.events import TERMINAL_TYPES

    assert set(TERMINAL_TYPES) == set(TERMINAL_EVENTS)



def test_the_readmes_python_example_runs(api_url: str, aos: Client, org: Org, tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    example = readme.split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / ".agentos").mkdir()
    (tmp_path / ".agentos" / "owner_key").write_text(org.key + "\n")
    aos.agents.create("assistant")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the example reads .agentos/owner_key, as in the directory of `agentos dev`
    try:
        exec(compile(example.replace("http://127.0.0.1:8000", api_url), "README.md", "exec"), {})
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("run.queued") and printed[-1].startswith("run.succeeded"), printed
    # two runs: created then followed, and started and followed in one request
    assert [line.split()[0] for line in printed].count("run.succeeded") == 2, printed


def test_a_run_over_the_orgs_cap_waits_for_a_slot_and_starts_once(client: TestClient, api_url: str, aos: Client,
                                                                   org: Org) -> None:
    _set_limits(client, org, max_active_runs=1)
    _, held_session = _agent_and_session(aos, confirm="all")
    held = aos.runs.create(held_session, WRITE)
    _pending_of(aos, held.id)  # it waits for a human now, holding the org's one slot
    _, session = _agent_and_session(aos)
    refusals: list[str] = []

    def end_the_held_run(seconds: float) -> None:  # the client waits out QUOTA_EXCEEDED's Retry-After
        refusals.append(f"{seconds:.1f}")
        if len(refusals) == 1:
            aos.runs.cancel(held.id)
        time.sleep(seconds)

    with Client(api_url, org.key, sleep=end_the_held_run) as patient:
        run = patient.runs.create(session, "hello")
    assert len(refusals) >= 1 and all(float(s) >= 2 for s in refusals), refusals  # Retry-After: 2
    assert aos.runs.wait(run.id, timeout_s=60).status == "succeeded"
    assert [r.id for r in aos.runs.iter(session)] == [run.id]


def test_the_async_client_creates_lists_decides_and_maps_errors(api_url: str, org: Org) -> None:
    async def story() -> None:
        async with AsyncClient(api_url, org.key) as aio:
            made = {(await aio.agents.create(f"async-{i}", skills=["file_manager"], confirm="all")).id
                    for i in range(3)}
            assert {a.id async for a in aio.agents.iter(limit=2)} == made
            with pytest.raises(NotFound):
                await aio.sessions.get("ses_" + "0" * 28)
            session = await aio.sessions.create(sorted(made)[0])
            run = await aio.runs.create(session.id, WRITE)
            async for event in aio.runs.events(run.id):
                if event.type == "confirmation.required":
                    pending = [c async for c in aio.tool_calls.pending()]
                    assert [c.id for c in pending] == [event.data["tool_call_id"]]
                    await aio.tool_calls.reject(pending[0].id, "no")
            assert (await aio.runs.wait(run.id, timeout_s=60)).status == "succeeded"
            assert (await aio.me()).org_id == org.id

    asyncio.run(story())
