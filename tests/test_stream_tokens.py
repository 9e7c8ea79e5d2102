"""Stream tokens (`POST /v1/stream-tokens`): what a browser's `EventSource` sends as `?token=`.
A token opens its own run's (or session's) event stream and nothing else: not another route,
not another resource, not after it expired, not for another org, not once altered; an open
stream outlives it; and it never reaches the access log."""

from __future__ import annotations

import base64
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import jwt
import orjson
import pytest
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from agentos.stack.process import ServerProcess
from core.settings import Settings
from core.stream_tokens import AUDIENCE, issue
from tests.helpers import AGENTOS, JWT_SECRET, Org, cli_env, error_of, start_run, wait
from tests.sse import read_events
from tests.tcp_proxy import free_port

pytestmark = [pytest.mark.usefixtures("worker"), pytest.mark.timeout(90)]


@pytest.fixture
def session(org: Org) -> dict[str, Any]:
    return org.create_session(str(org.create_agent()["id"]))


@pytest.fixture
def finished(org: Org, session: dict[str, Any]) -> dict[str, Any]:
    run = start_run(org, str(session["id"]), "hello")
    assert wait(org, run["id"])["status"] == "succeeded"
    return run


def token_for(org: Org, headers: dict[str, str] | None = None, **body: str) -> dict[str, Any]:
    r = org.client.post("/v1/stream-tokens", json=body, headers=headers or org.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def with_token(path: str, token: str) -> str:
    return f"{path}?token={token}"


def test_a_run_token_streams_its_run_without_a_header(client: TestClient, org: Org, finished: dict[str, Any]):
    viewer = {"Authorization": f"Bearer {org.key_with_role('viewer')}"}
    before = datetime.now(UTC)
    issued = token_for(org, viewer, run_id=finished["id"])
    expires = datetime.fromisoformat(issued["expires_at"].replace("Z", "+00:00"))
    assert before + timedelta(seconds=290) <= expires <= datetime.now(UTC) + timedelta(seconds=301)
    url = urlsplit(issued["url"])
    assert url.path == f"/v1/runs/{finished['id']}/events" and url.query == f"token={issued['token']}"

    events = read_events(client, f"{url.path}?{url.query}", {})
    assert events == read_events(client, f"/v1/runs/{finished['id']}/events", org.headers)
    assert events[-1]["type"] == "run.succeeded"
    # ...resuming like any stream: `?after=` with the token, since an EventSource made anew sends no header.
    tail = read_events(client, f"{url.path}?{url.query}&after={events[2]['seq']}", {})
    assert tail == events[3:]


def test_a_run_token_opens_no_other_route_and_no_other_resource(
    client: TestClient, org: Org, session: dict[str, Any], finished: dict[str, Any]
):
    token = token_for(org, run_id=finished["id"])["token"]
    other = start_run(org, str(session["id"]), "another")
    refused = [
        client.get(with_token(f"/v1/runs/{finished['id']}", token)),
        client.get(with_token("/v1/agents", token)),
        client.post(with_token(f"/v1/runs/{finished['id']}/cancel", token)),
        client.post(with_token(f"/v1/sessions/{session['id']}/runs", token), json={"input": "x"}),
        client.post(with_token("/v1/stream-tokens", token), json={"run_id": other["id"]}),
        client.get(with_token(f"/v1/runs/{other['id']}/events", token)),
        client.get(with_token(f"/v1/sessions/{session['id']}/events", token)),
        # A valid key beside it does not help: a request with `?token=` is judged by the token.
        client.get(with_token("/v1/agents", token), headers=org.headers),
    ]
    for response in refused:
        error_of(response, 401, "STREAM_TOKEN_INVALID")
    # Nor is it a bearer credential.
    error_of(client.get("/v1/agents", headers={"Authorization": f"Bearer {token}"}), 401, "UNAUTHENTICATED")
    wait(org, other["id"])


def test_an_expired_token_is_refused(client: TestClient, org: Org, settings: Settings, finished: dict[str, Any]):
    past = datetime.now(UTC) - timedelta(minutes=10)
    token, _ = issue(settings.secrets, org.id, "run", finished["id"], 300, now=past)
    error = error_of(client.get(with_token(f"/v1/runs/{finished['id']}/events", token)), 401, "STREAM_TOKEN_EXPIRED")
    assert "POST /v1/stream-tokens" in error["message"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(token: str) -> dict[str, Any]:
    payload = token.split(".")[1]
    return dict(orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_an_altered_token_is_refused(
    client: TestClient, org: Org, session: dict[str, Any], finished: dict[str, Any]
):
    token = token_for(org, run_id=finished["id"])["token"]
    header, payload, signature = token.split(".")
    path = f"/v1/runs/{finished['id']}/events"
    # Pointed at the session's stream, or given a later expiry, with the signature kept.
    for change in ({"res": f"session:{session['id']}"}, {"exp": int(time.time()) + 86_400}):
        forged = ".".join([header, _b64(orjson.dumps(_claims(token) | change)), signature])
        target = f"/v1/sessions/{session['id']}/events" if "res" in change else path
        error_of(client.get(with_token(target, forged)), 401, "STREAM_TOKEN_INVALID")
    # A changed signature; the same claims signed with the JWT secret (not the stream-token key); `alg: none`.
    flipped = signature[:-2] + ("AA" if not signature.endswith("AA") else "BB")
    other_key = jwt.encode(_claims(token), JWT_SECRET, algorithm="HS256", headers={"kid": "1"})
    unsigned = jwt.encode(_claims(token), None, algorithm="none", headers={"kid": "1"})
    for bad in (f"{header}.{payload}.{flipped}", other_key, unsigned, "", "not-a-token"):
        error_of(client.get(with_token(path, bad)), 401, "STREAM_TOKEN_INVALID")


def test_another_orgs_token_opens_nothing_here(
    client: TestClient, org: Org, other_org: Org, settings: Settings, finished: dict[str, Any]
):
    # Another org cannot get a token for this run: it does not see it.
    r = client.post("/v1/stream-tokens", json={"run_id": finished["id"]}, headers=other_org.headers)
    error_of(r, 404, "NOT_FOUND")
    theirs = start_run(other_org, str(other_org.create_session(str(other_org.create_agent()["id"]))["id"]), "hi")
    their_token = token_for(other_org, run_id=theirs["id"])["token"]
    error_of(client.get(with_token(f"/v1/runs/{finished['id']}/events", their_token)), 401, "STREAM_TOKEN_INVALID")
    # Even a validly signed token naming this run under the other org reads as that org, so row-level
    # security finds nothing.
    crafted, _ = issue(settings.secrets, other_org.id, "run", finished["id"], 300)
    error_of(client.get(with_token(f"/v1/runs/{finished['id']}/events", crafted)), 404, "NOT_FOUND")
    wait(other_org, theirs["id"])


@pytest.mark.parametrize("body", [{}, {"run_id": "run_x", "session_id": "ses_x"}, {"run": "x"}])
def test_a_token_names_exactly_one_resource(client: TestClient, org: Org, body: dict[str, str]):
    error_of(client.post("/v1/stream-tokens", json=body, headers=org.headers), 422, "VALIDATION_FAILED")


def test_a_token_for_nothing_is_404(client: TestClient, org: Org):
    for body in ({"run_id": "run_00000000000000000000000000"}, {"session_id": "nonsense"}):
        error_of(client.post("/v1/stream-tokens", json=body, headers=org.headers), 404, "NOT_FOUND")


def test_a_session_token_follows_the_session_and_outlives_its_expiry_once_open(
    client: TestClient, org: Org, settings: Settings, session: dict[str, Any]
):
    # Valid for the next few seconds only (the verifier's clock-skew allowance).
    token, _ = issue(settings.secrets, org.id, "session", str(session["id"]), 0)
    path = with_token(f"/v1/sessions/{session['id']}/events", token)
    found: list[dict[str, Any]] = []
    with client.stream("GET", path) as response:
        assert response.status_code == 200
        deadline = time.monotonic() + 30
        # A bad cursor is answered 400 once authenticated, so this probe never opens a stream.
        while client.get(path, headers={"Last-Event-ID": "x"}).status_code != 401:
            assert time.monotonic() < deadline, "the token never expired"
            time.sleep(0.25)
        error_of(client.get(path), 401, "STREAM_TOKEN_EXPIRED")
        run = start_run(org, str(session["id"]), "after expiry")
        for line in response.iter_lines():
            if line.startswith("data:"):
                found.append(orjson.loads(line[5:]))
                if found[-1]["type"] == "run.succeeded":
                    break
    assert {e["run_id"] for e in found} == {run["id"]} and found[0]["type"] == "run.queued"
    assert [e["seq"] for e in found] == list(range(found[0]["seq"], found[0]["seq"] + len(found)))


@pytest.fixture(scope="module")
def api_process(stack: StackUrls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """`agentos api` as deployed (uvicorn's own access log on stdout) on the suite's stack."""
    base = tmp_path_factory.mktemp("api")
    port = free_port()
    env = cli_env() | {"AGENTOS_DATABASE_URL": stack.database_url, "AGENTOS_REDIS_URL": stack.redis_url}
    proc = ServerProcess("api", [*AGENTOS, "api", "--port", str(port)], base / "api.log",
                         stop_signal=signal.SIGTERM, env=env)
    proc.start()

    def ready() -> bool:
        try:
            return httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        proc.wait_until(ready, timeout_s=60)
        yield f"http://127.0.0.1:{port}", base / "api.log"
    finally:
        proc.stop()


def test_tokens_never_reach_the_access_log(
    api_process: tuple[str, Path], org: Org, session: dict[str, Any], settings: Settings
):
    url, log_path = api_process
    token, _ = issue(settings.secrets, org.id, "session", str(session["id"]), 60)
    with httpx.stream("GET", f"{url}/v1/sessions/{session['id']}/events?after=0&token={token}", timeout=10) as r:
        assert r.status_code == 200
    assert httpx.get(f"{url}/v1/agents?limit=5&token={token}").status_code == 401
    signature = token.split(".")[2]
    deadline = time.monotonic() + 10
    while log_path.read_text().count("token=[redacted]") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    logged = log_path.read_text()
    assert f"GET /v1/sessions/{session['id']}/events?after=0&token=[redacted] HTTP/1.1" in logged
    assert "GET /v1/agents?limit=5&token=[redacted] HTTP/1.1" in logged
    assert signature not in logged and token.split(".")[1] not in logged


def test_audience_is_the_stream_only(settings: Settings, org: Org):
    token, grant = issue(settings.secrets, org.id, "run", "run_x", 60)
    claims = _claims(token)
    assert claims["aud"] == AUDIENCE and claims["res"] == "run:run_x" and claims["org_id"] == org.id
    assert grant.expires_at == datetime.fromtimestamp(claims["exp"], UTC)
