"""Custom HTTP skills end to end: the suite's worker calls an org's endpoint (a local receiver on
127.0.0.1) with the validated arguments, signed Standard Webhooks style, retried on 5xx under one
idempotency key, size- and time-limited, through the SSRF guard. The receiver verifies every
signature itself. Every failure reaches the model as text and the run goes on."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from tests.fake_web import FakeWeb, Reply, Seen, as_json
from tests.helpers import Org, Worker, error_of, start_run, wait

KEY = os.urandom(32)
SIGNING_SECRET = "whsec_" + base64.b64encode(KEY).decode()


def header(seen: Seen, name: str) -> str:
    return next((v for k, v in seen.headers.items() if k.lower() == name), "")


def verified(seen: Seen) -> bool:
    """What a receiver does: recompute the signature over id.timestamp.body, check the timestamp."""
    message_id, timestamp = header(seen, "webhook-id"), header(seen, "webhook-timestamp")
    digest = hmac.new(KEY, f"{message_id}.{timestamp}.".encode() + seen.body, hashlib.sha256).digest()
    expected = "v1," + base64.b64encode(digest).decode()
    fresh = timestamp.isdigit() and abs(time.time() - int(timestamp)) < 300
    return fresh and any(hmac.compare_digest(expected, s) for s in header(seen, "webhook-signature").split())


@pytest.fixture(scope="module")
def receiver() -> Iterator[FakeWeb]:
    with FakeWeb() as web:
        attempts: dict[str, int] = {}

        def hook(seen: Seen) -> Reply:
            if not verified(seen):
                return as_json({"error": "bad signature"}, 401)
            return as_json({"verified": True, "args": json.loads(seen.body), "token": header(seen, "x-api-token")})

        def flaky(seen: Seen) -> Reply:
            key = header(seen, "idempotency-key")
            attempts[key] = attempts.get(key, 0) + 1
            return as_json({"attempt": attempts[key]}) if attempts[key] > 1 and verified(seen) else \
                Reply(503, b"busy", {"Content-Type": "text/plain"})

        web.routes["/hook"] = hook
        web.routes["/flaky"] = flaky
        web.routes["/broken"] = lambda _: Reply(500, b"it broke", {"Content-Type": "text/plain"})
        web.routes["/huge"] = lambda _: Reply(200, b"z" * 400_000, {"Content-Type": "text/plain"})
        web.routes["/slow"] = lambda _: Reply(200, b"late", {"Content-Type": "text/plain"}, delay_s=2)
        yield web


def configure(stack: StackUrls, org: Org, **settings: Any) -> None:
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("UPDATE orgs SET settings = settings || %s::jsonb WHERE id = %s", (json.dumps(settings), org.id))


def define(org: Org, name: str, url: str, **fields: Any) -> None:
    body = {"name": name, "description": f"The {name} endpoint.", "url": url,
            "signing_secret": {"secret": "signing"}, "headers": {"X-Api-Token": {"secret": "api_token"}},
            "parameters": {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}}
    r = org.client.post("/v1/skills", json=body | fields, headers=org.headers)
    assert r.status_code == 201, r.text


def secrets_for(org: Org) -> None:
    for name, value in [("signing", SIGNING_SECRET), ("api_token", "tok-456")]:
        assert org.client.put(f"/v1/secrets/{name}", json={"value": value}, headers=org.headers).status_code == 200


def run_calls(org: Org, skills: list[str], lines: list[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    agent = org.create_agent(skills=skills, confirm="none")
    session = org.create_session(str(agent["id"]))
    run = wait(org, start_run(org, str(session["id"]), "\n".join(lines))["id"], timeout=90)
    return run, org.client.get(f"/v1/runs/{run['id']}/tool-calls", headers=org.headers).json()["data"]


def call(skill: str, **args: Any) -> str:
    return f"call: {skill} {json.dumps(args)}"


def test_calls_are_signed_retried_once_keyed_and_bounded(org: Org, stack: StackUrls, worker: Worker,
                                                         receiver: FakeWeb):
    secrets_for(org)
    configure(stack, org, outbound_allow=["127.0.0.1"])  # the operator opens loopback for this test org
    for name in ("hook", "flaky", "broken", "huge"):
        define(org, name, receiver.url(f"/{name}"))
    define(org, "slow", receiver.url("/slow"), timeout_s=0.5)
    before = len(receiver.seen)
    run, calls = run_calls(org, ["hook", "flaky", "broken", "huge", "slow"], [
        call("hook", n=7), call("flaky", n=1), call("broken", n=1), call("huge", n=1), call("slow", n=1),
        call("hook", n="seven"),
    ])
    assert run["status"] == "succeeded", run
    assert calls[0]["output"] == {"verified": True, "args": {"n": 7}, "token": "tok-456"}
    assert calls[1]["output"] == {"attempt": 2}
    flaky = [s for s in receiver.seen[before:] if s.path == "/flaky"]
    assert len(flaky) == 2 and {header(s, "idempotency-key") for s in flaky} == {calls[1]["id"]}
    assert {header(s, "webhook-id") for s in flaky} == {calls[1]["id"]}
    errors = [c["error"]["message"] for c in calls[2:]]
    assert "answered HTTP 500" in errors[0]
    assert len([s for s in receiver.seen[before:] if s.path == "/broken"]) == 3  # the first try and 2 retries
    assert "over the limit" in errors[1] or "more than the limit" in errors[1]
    assert "did not answer within 0.5 s" in errors[2]
    assert "Invalid arguments for hook" in errors[3]
    assert "tok-456" not in json.dumps([c["args"] for c in calls]) and SIGNING_SECRET not in json.dumps(calls)


def test_without_an_allowlist_a_private_endpoint_is_refused(other_org: Org, worker: Worker, receiver: FakeWeb):
    secrets_for(other_org)
    define(other_org, "hook", receiver.url("/hook"))
    before = len(receiver.seen)
    run, calls = run_calls(other_org, ["hook"], [call("hook", n=1)])
    assert run["status"] == "succeeded"
    assert "not allowed" in calls[0]["error"]["message"] and "127.0.0.1" in calls[0]["error"]["message"]
    assert len(receiver.seen) == before  # nothing was sent


def test_an_admin_may_open_private_networks_only(org: Org, other_org: Org, client: TestClient):
    for entry in ["127.0.0.1", "169.254.169.254", "0.0.0.0/0", "8.8.8.8", "internal.example", "::1"]:
        error_of(client.put("/v1/outbound-allowlist", json={"allow": [entry]}, headers=org.headers), 422,
                 "VALIDATION_FAILED")
    r = client.put("/v1/outbound-allowlist", json={"allow": ["192.168.1.7", "10.1.0.0/16", "fd00::/8"]},
                   headers=org.headers)
    assert r.status_code == 200 and r.json()["allow"] == ["10.1.0.0/16", "192.168.1.7/32", "fd00::/8"]
    member = {"Authorization": f"Bearer {org.key_with_role('member')}"}
    error_of(client.put("/v1/outbound-allowlist", json={"allow": []}, headers=member), 403, "FORBIDDEN")
    assert client.get("/v1/outbound-allowlist", headers=other_org.headers).json() == {"allow": []}
    assert client.get("/v1/outbound-allowlist", headers=org.headers).json()["allow"][0] == "10.1.0.0/16"


def test_a_sensitive_skill_waits_for_a_human_and_nothing_is_sent_before(org: Org, stack: StackUrls,
                                                                       worker: Worker, receiver: FakeWeb):
    secrets_for(org)
    configure(stack, org, outbound_allow=["127.0.0.1"])
    define(org, "hook", receiver.url("/hook"), sensitive=True)
    agent = org.create_agent(skills=["hook"])
    session = org.create_session(str(agent["id"]))
    before = len(receiver.seen)
    run = start_run(org, str(session["id"]), call("hook", n=1))
    deadline = time.monotonic() + 30
    while (status := org.client.get(f"/v1/runs/{run['id']}", headers=org.headers).json()["status"]) in (
            "queued", "running"):
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert status == "awaiting_confirmation" and len(receiver.seen) == before
    [pending] = org.client.get(f"/v1/runs/{run['id']}/tool-calls", headers=org.headers).json()["data"]
    r = org.client.post(f"/v1/tool-calls/{pending['id']}/approve", json={}, headers=org.headers)
    assert r.status_code == 200, r.text
    assert wait(org, run["id"])["status"] == "succeeded"
    assert [s.path for s in receiver.seen[before:]] == ["/hook"]
