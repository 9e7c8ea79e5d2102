"""Admission control: per-org request rate (a token bucket in Redis) and a cap on active runs
(a Redis set reconciled with Postgres), 429 with Retry-After, per-org overrides by the platform
admin, and what happens when Redis is away."""

from __future__ import annotations

import logging
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from starlette.testclient import TestClient

from api.app import create_app
from core import admission
from core.tenancy import org_active_runs_key
from tests.helpers import ADMIN_TOKEN, Org, RsaKeys, error_of, make_settings, new_org, post_concurrently

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Runs that stay active for the length of a test whether or not a worker picks them up.
LONG_RUN = "wait: 10"


@pytest.fixture(scope="module")
def limited(stack: Any, rsa_keys: RsaKeys) -> Iterator[TestClient]:
    """An API whose default request rate is tiny: 120 a minute (one token every 0.5 s), bursts of 3."""
    settings = make_settings(stack, rsa_keys, limits={"requests_per_minute": 120, "burst": 3})
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def redis_client(stack: Any) -> Iterator[redis.Redis]:
    r = redis.Redis.from_url(stack.redis_url)
    yield r
    r.close()


def patch_limits(client: TestClient, org_id: str, **limits: Any) -> dict[str, Any]:
    r = client.patch(f"/v1/orgs/{org_id}", json={"limits": limits}, headers=ADMIN)
    assert r.status_code == 200, r.text
    return dict(r.json())


# --- request rate -------------------------------------------------------------------------------


def test_over_the_rate_is_429_with_retry_after_and_the_error_body(limited: TestClient):
    org = new_org(limited)
    remaining = []
    for _ in range(3):
        r = limited.get("/v1/me", headers=org.headers)
        assert r.status_code == 200, r.text
        assert r.headers["RateLimit-Limit"] == "3"
        remaining.append(int(r.headers["RateLimit-Remaining"]))
    assert remaining == [2, 1, 0]
    r = limited.get("/v1/me", headers=org.headers)
    error = error_of(r, 429, "RATE_LIMITED")
    assert error["details"]["limit"] == 120 and error["details"]["burst"] == 3
    assert 0 < error["details"]["retry_after_ms"] <= 500
    assert r.headers["Retry-After"] == "1"  # whole seconds, at least 1
    assert r.headers["RateLimit-Remaining"] == "0"
    # Every authenticated route draws on the same bucket, whatever the method.
    error_of(limited.post("/v1/agents", json={"name": "x", "instructions": "y"}, headers=org.headers),
             429, "RATE_LIMITED")


def test_the_bucket_refills_with_time(limited: TestClient):
    org = new_org(limited)
    for _ in range(3):
        assert limited.get("/v1/me", headers=org.headers).status_code == 200
    refused = limited.get("/v1/me", headers=org.headers)
    wait_ms = error_of(refused, 429, "RATE_LIMITED")["details"]["retry_after_ms"]
    time.sleep(wait_ms / 1000 + 0.05)
    r = limited.get("/v1/me", headers=org.headers)
    assert r.status_code == 200, r.text
    assert r.headers["RateLimit-Remaining"] == "0"  # one token came back, and was taken
    assert limited.get("/v1/me", headers=org.headers).status_code == 429


def test_each_org_has_its_own_bucket_and_admin_and_health_routes_are_not_limited(limited: TestClient):
    a, b = new_org(limited, "A"), new_org(limited, "B")
    for _ in range(3):
        assert limited.get("/v1/me", headers=a.headers).status_code == 200
    assert limited.get("/v1/me", headers=a.headers).status_code == 429
    assert limited.get("/v1/me", headers=b.headers).status_code == 200
    for _ in range(5):
        assert limited.get("/healthz").status_code == 200
        assert limited.get(f"/v1/orgs/{a.id}", headers=ADMIN).status_code == 200


def test_an_unauthenticated_request_does_not_draw_on_anyones_bucket(limited: TestClient):
    org = new_org(limited)
    for _ in range(5):
        assert limited.get("/v1/me", headers={"Authorization": "Bearer aos_nope"}).status_code == 401
    assert limited.get("/v1/me", headers=org.headers).status_code == 200


# --- per-org overrides --------------------------------------------------------------------------


def test_the_platform_admin_overrides_an_orgs_limits_and_resets_them(client: TestClient, org: Org):
    r = client.get(f"/v1/orgs/{org.id}", headers=ADMIN)
    assert r.status_code == 200, r.text
    defaults = r.json()["limits"]
    assert defaults == {"requests_per_minute": 1200, "burst": 1200, "max_active_runs": 50,
                        "sandbox_max_concurrent": 4, "sandbox_cpu_s_per_day": 3600}
    assert r.json()["limit_overrides"] == {} and r.json()["id"] == org.id

    body = patch_limits(client, org.id, requests_per_minute=60, burst=2)
    assert body["limits"] == {"requests_per_minute": 60, "burst": 2, "max_active_runs": 50,
                              "sandbox_max_concurrent": 4, "sandbox_cpu_s_per_day": 3600}
    assert body["limit_overrides"] == {"requests_per_minute": 60, "burst": 2}
    me = client.get("/v1/me", headers=org.headers)  # the first of the 2
    assert me.status_code == 200 and me.headers["RateLimit-Limit"] == "2"
    assert client.get("/v1/agents", headers=org.headers).status_code == 200
    refused = client.get("/v1/agents", headers=org.headers)
    assert error_of(refused, 429, "RATE_LIMITED")["details"]["limit"] == 60

    # Absent keys stay; null returns one limit to the default.
    body = patch_limits(client, org.id, max_active_runs=7)
    assert body["limit_overrides"] == {"requests_per_minute": 60, "burst": 2, "max_active_runs": 7}
    body = patch_limits(client, org.id, requests_per_minute=None, burst=None)
    assert body["limit_overrides"] == {"max_active_runs": 7}
    assert body["limits"] == {"requests_per_minute": 1200, "burst": 1200, "max_active_runs": 7,
                              "sandbox_max_concurrent": 4, "sandbox_cpu_s_per_day": 3600}
    time.sleep(0.1)  # the bucket refills at the default rate again (20 a second)
    assert client.get("/v1/agents", headers=org.headers).status_code == 200
    assert client.get(f"/v1/orgs/{org.id}", headers=ADMIN).json()["limit_overrides"] == {"max_active_runs": 7}


@pytest.mark.parametrize("body", [
    {"limits": {"requests_per_minute": 0}},
    {"limits": {"burst": -1}},
    {"limits": {"max_active_runs": "5"}},
    {"limits": {"max_active_runs": 2.5}},
    {"limits": {"max_active_runs": True}},
    {"limits": {"requests_per_minute": 10**9}},
    {"limits": {"concurrency": 3}},
    {"limits": {"sandbox_max_concurrent": 0}},
    {"limits": {"sandbox_cpu_s_per_day": "60"}},
    {"limits": 5},
    {"name": ""},
    {"plan": "gold"},
])
def test_a_malformed_patch_is_422(client: TestClient, org: Org, body: dict[str, Any]):
    error = error_of(client.patch(f"/v1/orgs/{org.id}", json=body, headers=ADMIN), 422, "VALIDATION_FAILED")
    assert error["details"]["fields"]
    assert client.get(f"/v1/orgs/{org.id}", headers=ADMIN).json()["limit_overrides"] == {}


def test_only_the_platform_admin_reads_or_changes_an_org(client: TestClient, org: Org):
    for headers in (org.headers, {}, {"Authorization": "Bearer not-the-admin-token"}):
        error_of(client.patch(f"/v1/orgs/{org.id}", json={"limits": {"burst": 1}}, headers=headers),
                 401, "UNAUTHENTICATED")
        error_of(client.get(f"/v1/orgs/{org.id}", headers=headers), 401, "UNAUTHENTICATED")
    assert client.get(f"/v1/orgs/{org.id}", headers=ADMIN).json()["limit_overrides"] == {}
    missing = "org_" + "0" * 28
    error_of(client.get(f"/v1/orgs/{missing}", headers=ADMIN), 404, "NOT_FOUND")
    error_of(client.patch(f"/v1/orgs/{missing}", json={"limits": {"burst": 1}}, headers=ADMIN), 404, "NOT_FOUND")
    error_of(client.get("/v1/orgs/not-an-id", headers=ADMIN), 404, "NOT_FOUND")


def test_the_admin_renames_an_org_and_the_change_is_audited(client: TestClient, org: Org, stack: Any):
    import psycopg

    r = client.patch(f"/v1/orgs/{org.id}", json={"name": "renamed", "limits": {"max_active_runs": 9}}, headers=ADMIN)
    assert r.status_code == 200 and r.json()["name"] == "renamed"
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT actor, details FROM audit_logs WHERE org_id = %s AND action = 'org.update'",
                           (org.id,)).fetchone()
    assert row is not None and row[0] == "platform_admin"
    assert row[1]["set_limits"] == {"max_active_runs": 9}


# --- active runs --------------------------------------------------------------------------------


def start(org: Org, session_id: str, text: str = LONG_RUN, key: str | None = None) -> Any:
    headers = org.headers | ({"Idempotency-Key": key} if key else {})
    return org.client.post(f"/v1/sessions/{session_id}/runs", json={"input": text}, headers=headers)


def cancel_all(org: Org, run_ids: list[str]) -> None:
    for run_id in run_ids:
        org.client.post(f"/v1/runs/{run_id}/cancel", headers=org.headers)


def ended(org: Org, run_id: str) -> dict[str, Any]:
    r = org.client.get(f"/v1/runs/{run_id}/wait?timeout=15", headers=org.headers)
    assert r.status_code == 200 and r.json()["status"] == "cancelled", r.text
    return dict(r.json())


def test_the_active_run_cap_holds_exactly_under_a_burst_and_cancelling_frees_a_place(client: TestClient, org: Org):
    patch_limits(client, org.id, max_active_runs=3)
    agent = org.create_agent()
    sessions = [str(org.create_session(str(agent["id"]))["id"]) for _ in range(22)]
    accepted: list[str] = []
    try:
        responses = post_concurrently(org, [(f"/v1/sessions/{s}/runs", {"input": LONG_RUN}, {})
                                            for s in sessions[:20]])
        accepted = [r.json()["id"] for r in responses if r.status_code == 202]
        refused = [r for r in responses if r.status_code != 202]
        assert len(accepted) == 3, [r.text for r in responses]
        for r in refused:
            error = error_of(r, 429, "QUOTA_EXCEEDED")
            assert error["details"]["max_active_runs"] == 3
            assert r.headers["Retry-After"] == "2"
        # The refused POSTs left nothing behind.
        runs_of = [client.get(f"/v1/sessions/{s}/runs", headers=org.headers).json()["data"] for s in sessions[:20]]
        assert sorted(run["id"] for runs in runs_of for run in runs) == sorted(accepted)

        error_of(start(org, sessions[20]), 429, "QUOTA_EXCEEDED")
        r = org.client.post(f"/v1/runs/{accepted[0]}/cancel", headers=org.headers)
        assert r.status_code == 202, r.text
        ended(org, accepted[0])
        r = start(org, sessions[20])
        assert r.status_code == 202, r.text
        accepted.append(r.json()["id"])
        error_of(start(org, sessions[21]), 429, "QUOTA_EXCEEDED")

        # Deleting a session ends its runs, and frees their places too.
        assert client.delete(f"/v1/sessions/{sessions[20]}", headers=org.headers).status_code == 204
        ended(org, accepted[-1])
        r = start(org, sessions[21])
        assert r.status_code == 202, r.text
        accepted.append(r.json()["id"])
    finally:
        cancel_all(org, accepted)


def test_an_idempotent_replay_takes_no_place_even_at_the_cap(client: TestClient, org: Org):
    patch_limits(client, org.id, max_active_runs=2)
    agent = org.create_agent()
    s1, s2, s3 = (str(org.create_session(str(agent["id"]))["id"]) for _ in range(3))
    accepted: list[str] = []
    try:
        first = start(org, s1, key="k1")
        assert first.status_code == 202, first.text
        accepted.append(first.json()["id"])
        for _ in range(3):  # replays below the cap
            again = start(org, s1, key="k1")
            assert again.status_code == 202 and again.headers["Idempotent-Replayed"] == "true"
            assert again.json()["id"] == first.json()["id"]
        second = start(org, s2, key="k2")
        assert second.status_code == 202, second.text  # the replays did not take the second place
        accepted.append(second.json()["id"])

        # At the cap: a replay still answers its run; a new key is refused and nothing is stored.
        again = start(org, s2, key="k2")
        assert again.status_code == 202 and again.json()["id"] == second.json()["id"]
        error_of(start(org, s3, key="k3"), 429, "QUOTA_EXCEEDED")
        assert client.get(f"/v1/sessions/{s3}/runs", headers=org.headers).json()["data"] == []
        mismatch = org.client.post(f"/v1/sessions/{s1}/runs", json={"input": "other"},
                                   headers=org.headers | {"Idempotency-Key": "k1"})
        error_of(mismatch, 422, "IDEMPOTENCY_MISMATCH")
    finally:
        cancel_all(org, accepted)


def test_places_whose_release_was_lost_are_reclaimed_from_postgres(client: TestClient, org: Org,
                                                                   redis_client: redis.Redis):
    """A worker that died between its commit and the release (or ended runs before releases were
    wired) leaves stale entries; once the set looks full, Postgres decides."""
    patch_limits(client, org.id, max_active_runs=2)
    agent = org.create_agent()
    session = str(org.create_session(str(agent["id"]))["id"])
    seconds, micros = redis_client.time()
    now_ms = seconds * 1000 + micros // 1000
    key = org_active_runs_key(org.id)
    stale = {"run_" + secrets.token_hex(14): now_ms - 1000, "run_" + secrets.token_hex(14): now_ms}
    redis_client.zadd(key, stale)
    r = start(org, session, "hello")
    assert r.status_code == 202, r.text
    members = {m.decode() for m in redis_client.zrange(key, 0, -1)}
    assert not members & set(stale)
    assert members <= {r.json()["id"]}  # (gone already if its worker released it)


def test_an_org_lowered_below_its_active_runs_refuses_new_ones(client: TestClient, org: Org):
    agent = org.create_agent()
    s1, s2 = (str(org.create_session(str(agent["id"]))["id"]) for _ in range(2))
    first = start(org, s1)
    assert first.status_code == 202, first.text
    try:
        patch_limits(client, org.id, max_active_runs=1)
        error = error_of(start(org, s2), 429, "QUOTA_EXCEEDED")
        assert error["details"] == {"max_active_runs": 1, "active_runs": 1}
    finally:
        cancel_all(org, [first.json()["id"]])


# --- Redis away -----------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_without_redis_both_limits_fail_open(stack: Any, rsa_keys: RsaKeys, client: TestClient, org: Org,
                                             caplog: pytest.LogCaptureFixture):
    agent = org.create_agent()
    session = org.create_session(str(agent["id"]))
    patch_limits(client, org.id, requests_per_minute=1, burst=1, max_active_runs=1)
    settings = make_settings(stack, rsa_keys, redis={"url": f"redis://127.0.0.1:{_closed_port()}/0",
                                                     "socket_timeout_s": 0.5})
    with TestClient(create_app(settings)) as down:
        for _ in range(3):
            r = down.get("/v1/me", headers=org.headers)
            assert r.status_code == 200, r.text
            assert "RateLimit-Remaining" not in r.headers
        # Each kind of warning is logged at most every 30 s: the POST's own are seen afresh.
        admission._warner._last.clear()
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="agentos.admission"):
            r = down.post(f"/v1/sessions/{session['id']}/runs", json={"input": "hello"}, headers=org.headers)
        assert r.status_code == 202, r.text  # admitted; it waits in Postgres for the broker
        assert "RateLimit-Remaining" not in r.headers
        said = [rec.getMessage() for rec in caplog.records if rec.name == "agentos.admission"]
        assert [m.split(" (")[0] for m in said] == ["request rate not checked", "active runs not counted"], said
