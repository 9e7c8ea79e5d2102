"""Signed webhooks: registration behind the SSRF guard, Standard Webhooks signatures checked by an
independent verifier, retries until a receiver that was down comes back (each event once per
webhook-id), rotation with two signatures, re-checks at delivery, disabling a failing webhook."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from agentos.stack.redis import EmbeddedRedis
from api.app import create_app
from core import webhook_signing, webhooks
from core.infra import Infra
from core.outbound import Resolver
from core.settings import Settings
from runtime import watchdog
from tests.fake_web import FakeWeb, Reply
from tests.helpers import Org, RsaKeys, error_of, make_settings, new_org, running_worker, start_run, wait
from tests.openai_server import OpenAIServer
from tests.webhook_receiver import Receiver

EVENTS = ["run.succeeded", "run.failed", "run.cancelled", "run.timed_out"]


def open_loopback(stack: StackUrls, org: Org) -> None:
    """The operator opens 127.0.0.1 for this org (orgs.settings.outbound_allow)."""
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("UPDATE orgs SET settings = settings || %s::jsonb WHERE id = %s",
                     (json.dumps({"outbound_allow": ["127.0.0.1"]}), org.id))


def register(org: Org, url: str, **fields: Any) -> dict[str, Any]:
    r = org.client.post("/v1/webhooks", json={"url": url, "events": EVENTS} | fields, headers=org.headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


def ended_run(org: Org) -> dict[str, Any]:
    """A run ended, so its terminal event made the deliveries: cancelled while queued, or, if the
    suite's worker took it first, however it ended (the webhooks here take every run event)."""
    agent = org.create_agent()
    session = org.create_session(str(agent["id"]))
    run = start_run(org, str(session["id"]), "hello")
    r = org.client.post(f"/v1/runs/{run['id']}/cancel", headers=org.headers)
    assert r.status_code in (200, 202, 409), r.text
    return wait(org, run["id"])


def deliveries(org: Org, webhook_id: str) -> list[dict[str, Any]]:
    r = org.client.get(f"/v1/webhooks/{webhook_id}/deliveries", headers=org.headers)
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


def deliver(settings: Settings, org: Org, delivery_id: str, resolver: Resolver | None = None) -> webhooks.Attempt:
    """One attempt in this process, as the webhook task makes it."""

    async def go() -> webhooks.Attempt:
        infra = await Infra.open(settings, name="test-webhooks", pool_min=0, pool_max=2)
        try:
            if resolver is None:
                return await webhooks.deliver(infra, org.id, delivery_id)
            return await webhooks.deliver(infra, org.id, delivery_id, resolver=resolver)
        finally:
            await infra.close()

    return asyncio.run(go())


def deliver_when_due(settings: Settings, org: Org, delivery_id: str) -> webhooks.Attempt:
    """Attempt until one is made (a failed attempt waits its backoff, short in these settings)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        attempt = deliver(settings, org, delivery_id)
        if attempt.outcome != "skipped":
            return attempt
        time.sleep(0.05)
    raise AssertionError("the delivery never became due")


@pytest.fixture
def fast(stack: StackUrls, rsa_keys: RsaKeys) -> Settings:
    """Settings for in-process attempts: retries after ~10 ms."""
    return make_settings(stack, rsa_keys, webhooks={"retry_base_s": 0.01, "retry_max_s": 0.05})


# --- signatures -----------------------------------------------------------------------------------


def test_signatures_verify_with_an_independent_library() -> None:
    old, new = webhook_signing.new_secret(), webhook_signing.new_secret()
    body = b'{"type":"run.succeeded"}'
    single = webhook_signing.headers([new], "whd_1", int(time.time()), body)
    assert Webhook(new).verify(body, single) == {"type": "run.succeeded"}
    with pytest.raises(WebhookVerificationError):
        Webhook(old).verify(body, single)
    with pytest.raises(WebhookVerificationError):  # the body is covered
        Webhook(new).verify(b'{"type":"run.failed"}', single)
    both = webhook_signing.headers([new, old], "whd_1", int(time.time()), body)
    assert len(both["webhook-signature"].split(" ")) == 2
    for secret in (old, new):
        Webhook(secret).verify(body, both)
    for bad in ("secret", "whsec_!!!", "whsec_" + "QUJD"):  # not base64, too short
        with pytest.raises(ValueError):
            webhook_signing.secret_key(bad)


# --- registration ---------------------------------------------------------------------------------


def test_a_loopback_url_is_refused_at_creation_without_an_allowlist(org: Org) -> None:
    with Receiver() as receiver:
        r = org.client.post("/v1/webhooks", json={"url": receiver.url, "events": ["run.succeeded"]},
                            headers=org.headers)
        error = error_of(r, 422, "WEBHOOK_URL_REFUSED")
        assert "127.0.0.1" in error["message"] and "loopback" in error["message"]
        for url in ("http://169.254.169.254/latest", "http://[::1]:9/x", "ftp://example.com/x"):
            r = org.client.post("/v1/webhooks", json={"url": url, "events": ["run.failed"]}, headers=org.headers)
            error_of(r, 422, "WEBHOOK_URL_REFUSED")
        assert org.client.get("/v1/webhooks", headers=org.headers).json()["data"] == []
        assert receiver.posts == 0


def test_crud_shows_the_secret_once_and_keeps_orgs_apart(stack: StackUrls, org: Org, other_org: Org) -> None:
    open_loopback(stack, org)
    hook = register(org, "http://127.0.0.1:9/hooks", events=["run.succeeded"], description="billing")
    assert hook["id"].startswith("whk_") and hook["secret"].startswith("whsec_")
    webhook_signing.secret_key(hook["secret"])
    read = org.client.get(f"/v1/webhooks/{hook['id']}", headers=org.headers).json()
    assert "secret" not in read and read["events"] == ["run.succeeded"] and read["enabled"] is True
    assert [w["id"] for w in org.client.get("/v1/webhooks", headers=org.headers).json()["data"]] == [hook["id"]]
    # The secret lives in the org secrets store, not in the webhook's row.
    names = [s["name"] for s in org.client.get("/v1/secrets", headers=org.headers).json()["data"]]
    assert f"webhook.{hook['id']}" in names

    r = org.client.patch(f"/v1/webhooks/{hook['id']}", json={"events": ["run.failed", "run.succeeded"]},
                         headers=org.headers)
    assert r.status_code == 200 and r.json()["events"] == ["run.failed", "run.succeeded"]
    error_of(org.client.patch(f"/v1/webhooks/{hook['id']}", json={"events": ["message.delta"]},
                              headers=org.headers), 422, "VALIDATION_FAILED")
    error_of(org.client.patch(f"/v1/webhooks/{hook['id']}", json={"url": "http://10.0.0.1/x"},
                              headers=org.headers), 422, "WEBHOOK_URL_REFUSED")
    r = org.client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/x", "events": ["run.failed"],
                                              "secret": "whsec_short"}, headers=org.headers)
    error_of(r, 422, "VALIDATION_FAILED")
    assert "whsec_short" not in r.text

    member = {"Authorization": f"Bearer {org.key_with_role('member')}"}
    error_of(org.client.get("/v1/webhooks", headers=member), 403, "FORBIDDEN")
    for method, path in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("GET", "/deliveries"),
                         ("POST", "/rotate-secret")):
        body: dict[str, Any] | None = {} if method in ("PATCH", "POST") else None
        r = other_org.client.request(method, f"/v1/webhooks/{hook['id']}{path}", json=body,
                                     headers=other_org.headers)
        error_of(r, 404, "NOT_FOUND")

    assert org.client.delete(f"/v1/webhooks/{hook['id']}", headers=org.headers).status_code == 204
    error_of(org.client.get(f"/v1/webhooks/{hook['id']}", headers=org.headers), 404, "NOT_FOUND")
    names = [s["name"] for s in org.client.get("/v1/secrets", headers=org.headers).json()["data"]]
    assert not any(n.startswith(f"webhook.{hook['id']}") for n in names)


# --- attempts in this process ---------------------------------------------------------------------


def test_a_delivery_is_signed_recorded_and_retried_by_hand_with_the_same_id(
        stack: StackUrls, org: Org, fast: Settings) -> None:
    open_loopback(stack, org)
    with Receiver() as receiver:
        hook = register(org, receiver.url)
        receiver.secrets = [hook["secret"]]
        run = ended_run(org)
        [delivery] = deliveries(org, hook["id"])
        assert delivery["status"] == "pending" and delivery["run_id"] == run["id"]
        assert deliver(fast, org, delivery["id"]).outcome == "delivered"
        assert deliver(fast, org, delivery["id"]).outcome == "skipped"  # a duplicate message does nothing
        assert receiver.refused == [] and list(receiver.events) == [delivery["id"]]
        payload = receiver.events[delivery["id"]]
        assert payload["type"] == f"run.{run['status']}" and payload["data"]["run_id"] == run["id"]
        [done] = deliveries(org, hook["id"])
        assert done["status"] == "delivered" and done["attempts"] == 1
        assert [a["status"] for a in done["attempt_log"]] == [204]

        r = org.client.post(f"/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/retry", headers=org.headers)
        assert r.status_code == 202 and r.json()["status"] == "pending"
        assert deliver(fast, org, delivery["id"]).outcome == "delivered"
        assert receiver.posts == 2 and list(receiver.events) == [delivery["id"]]  # same webhook-id: deduplicated
        error_of(org.client.post(f"/v1/webhooks/{hook['id']}/deliveries/whd_{'0' * 28}/retry",
                                 headers=org.headers), 404, "NOT_FOUND")


def test_rotation_signs_with_both_secrets_during_the_grace_period(stack: StackUrls, org: Org, fast: Settings) -> None:
    open_loopback(stack, org)
    with Receiver() as old_only, Receiver(port=0) as new_only:
        hook = register(org, old_only.url)
        old = hook["secret"]
        r = org.client.post(f"/v1/webhooks/{hook['id']}/rotate-secret", json={}, headers=org.headers)
        assert r.status_code == 200, r.text
        new = r.json()["secret"]
        assert new != old and r.json()["previous_secret_valid_until"]
        old_only.secrets, new_only.secrets = [old], [new]
        ended_run(org)
        [first] = deliveries(org, hook["id"])
        assert deliver(fast, org, first["id"]).outcome == "delivered"
        assert len(old_only.signatures[-1].split(" ")) == 2 and old_only.refused == []
        # The same delivery at the other receiver: the new secret verifies it too.
        org.client.patch(f"/v1/webhooks/{hook['id']}", json={"url": new_only.url}, headers=org.headers)
        org.client.post(f"/v1/webhooks/{hook['id']}/deliveries/{first['id']}/retry", headers=org.headers)
        assert deliver(fast, org, first["id"]).outcome == "delivered"
        assert new_only.refused == [] and list(new_only.events) == [first["id"]]


def test_an_address_that_turns_internal_after_creation_is_refused_at_delivery(
        stack: StackUrls, org: Org, fast: Settings) -> None:
    open_loopback(stack, org)
    with Receiver() as receiver:
        hook = register(org, receiver.url)
    # Behind the API: the URL's host becomes a name (no lookup in tests) and the allowlist goes.
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("UPDATE webhooks SET url = %s WHERE id = %s",
                     (receiver.url.replace("127.0.0.1", "hooks.example.com"), hook["id"]))
        conn.execute("UPDATE orgs SET settings = settings - 'outbound_allow' WHERE id = %s", (org.id,))
    ended_run(org)
    [delivery] = deliveries(org, hook["id"])

    async def rebinding(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    with Receiver(port=receiver.port) as again:
        attempt = deliver(fast, org, delivery["id"], resolver=rebinding)
        assert attempt.outcome == "retry" and again.posts == 0
    [failed] = deliveries(org, hook["id"])
    assert "loopback" in failed["last_error"] and failed["attempt_log"][0]["status"] is None


def test_a_slow_answer_a_large_answer_and_a_redirect_are_failed_attempts(
        stack: StackUrls, org: Org, rsa_keys: RsaKeys) -> None:
    settings = make_settings(stack, rsa_keys, webhooks={"timeout_s": 0.5, "max_response_bytes": 1024,
                                                        "retry_base_s": 0.01, "retry_max_s": 0.05})
    open_loopback(stack, org)
    with FakeWeb() as web:
        web.routes["/slow"] = lambda _: Reply(204, delay_s=2.0)
        web.routes["/large"] = lambda _: Reply(200, b"x" * 10_000, chunked=True)
        web.routes["/moved"] = lambda _: Reply(302, headers={"Location": web.url("/elsewhere")})
        problems = {}
        for path in ("/slow", "/large", "/moved"):
            hook = register(org, web.url(path))
            ended_run(org)
            [delivery] = deliveries(org, hook["id"])
            assert deliver_when_due(settings, org, delivery["id"]).outcome == "retry"
            [after] = deliveries(org, hook["id"])
            problems[path] = (after["last_status"], after["last_error"])
            org.client.delete(f"/v1/webhooks/{hook['id']}", headers=org.headers)
        assert not any(seen.path == "/elsewhere" for seen in web.seen)  # redirects are not followed
    assert problems["/slow"][0] is None and "did not answer within 0.5 s" in problems["/slow"][1]
    assert problems["/large"][0] is None and "limit of 1024 bytes" in problems["/large"][1]
    assert problems["/moved"] == (302, "the receiver answered HTTP 302")


def test_a_webhook_deleted_during_an_attempt_ends_the_attempt_quietly(
        stack: StackUrls, org: Org, fast: Settings) -> None:
    open_loopback(stack, org)
    with FakeWeb() as web:
        hook = register(org, web.url("/hooks"))

        def delete_then_answer(_: Any) -> Reply:  # the admin deletes it while the receiver works
            assert org.client.delete(f"/v1/webhooks/{hook['id']}", headers=org.headers).status_code == 204
            return Reply(204)

        web.routes["/hooks"] = delete_then_answer
        ended_run(org)
        [delivery] = deliveries(org, hook["id"])
        assert deliver(fast, org, delivery["id"]).outcome == "skipped"
        assert len(web.seen) == 1


def test_a_webhook_failing_too_long_is_disabled_with_an_audit_entry(
        stack: StackUrls, org: Org, rsa_keys: RsaKeys) -> None:
    settings = make_settings(stack, rsa_keys, webhooks={"retry_base_s": 0.01, "retry_max_s": 0.05,
                                                        "disable_after_days": 0.1 / 86_400})  # 0.1 s
    open_loopback(stack, org)
    with Receiver(status=500) as receiver:
        hook = register(org, receiver.url)
        receiver.secrets = [hook["secret"]]
        ended_run(org)
        [delivery] = deliveries(org, hook["id"])
        assert deliver_when_due(settings, org, delivery["id"]).outcome == "retry"
        time.sleep(0.15)
        assert deliver_when_due(settings, org, delivery["id"]).outcome == "failed"
        assert receiver.posts == 2
    read = org.client.get(f"/v1/webhooks/{hook['id']}", headers=org.headers).json()
    assert read["enabled"] is False and "HTTP 500" in read["disabled_reason"]
    [gone] = deliveries(org, hook["id"])
    assert gone["status"] == "failed" and [a["status"] for a in gone["attempt_log"]] == [500, 500]
    with psycopg.connect(stack.database_url) as conn:
        actions = [r[0] for r in conn.execute("SELECT action FROM audit_logs WHERE org_id = %s AND target_id = %s",
                                              (org.id, hook["id"]))]
    assert "webhook.disable" in actions
    r = org.client.post(f"/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/retry", headers=org.headers)
    error_of(r, 409, "WEBHOOK_DISABLED")
    r = org.client.patch(f"/v1/webhooks/{hook['id']}", json={"enabled": True}, headers=org.headers)
    assert r.json()["enabled"] is True and r.json()["disabled_reason"] is None and r.json()["failing_since"] is None
    r = org.client.patch(f"/v1/webhooks/{hook['id']}", json={"enabled": False}, headers=org.headers)
    assert r.json()["enabled"] is False and r.json()["disabled_reason"] == "disabled by an admin"


def test_the_watchdog_sends_again_a_delivery_whose_message_was_lost(
        stack: StackUrls, org: Org, rsa_keys: RsaKeys) -> None:
    settings = make_settings(stack, rsa_keys, webhooks={"requeue_after_s": 0.05})
    open_loopback(stack, org)
    hook = register(org, "http://127.0.0.1:9/hooks")
    ended_run(org)  # its message goes to a queue no worker of this suite consumes: as good as lost
    [delivery] = deliveries(org, hook["id"])
    time.sleep(0.1)

    async def sweep() -> list[str]:
        infra = await Infra.open(settings, name="test-watchdog", pool_min=0, pool_max=2)
        try:
            return (await watchdog.sweep(infra)).webhooks_resent
        finally:
            await infra.close()

    assert delivery["id"] in asyncio.run(sweep())


def test_a_retry_by_hand_with_the_broker_away_is_kept_for_the_watchdog(
        stack: StackUrls, org: Org, rsa_keys: RsaKeys) -> None:
    """The delivery is made due at once all the same (`202`, `AgentOS-Deferred`), not a 500: the
    watchdog sends it once the broker answers."""
    open_loopback(stack, org)
    hook = register(org, "http://127.0.0.1:9/hooks")
    ended_run(org)
    [delivery] = deliveries(org, hook["id"])
    away = make_settings(stack, rsa_keys, redis={"url": "redis://127.0.0.1:9/0", "socket_timeout_s": 0.5})
    with TestClient(create_app(away)) as no_broker:
        r = no_broker.post(f"/v1/webhooks/{hook['id']}/deliveries/{delivery['id']}/retry", headers=org.headers)
    assert r.status_code == 202, r.text
    assert r.headers["AgentOS-Deferred"] == "broker-unavailable"
    assert r.json()["id"] == delivery["id"] and r.json()["status"] == "pending"


# --- through a real worker ------------------------------------------------------------------------


class HookStack:
    def __init__(self, client: TestClient, org: Org) -> None:
        self.client, self.org = client, org


@pytest.fixture(scope="module")
def hook_stack(stack: StackUrls, rsa_keys: RsaKeys, openai_server: OpenAIServer,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[HookStack]:
    """An API and a worker on a Redis of their own (the worker consumes the runs and the webhook
    queues), with retries after ~0.2 s."""
    base: Path = tmp_path_factory.mktemp("webhooks")
    redis = EmbeddedRedis(base, durable=False)
    redis.start()
    try:
        own = StackUrls(stack.database_url, redis.url)
        settings = make_settings(own, rsa_keys)
        env = {"AGENTOS_WORKER__QUEUES": '["agentos.runs", "agentos.webhooks"]',
               "AGENTOS_WEBHOOKS__RETRY_BASE_S": "0.2", "AGENTOS_WEBHOOKS__RETRY_MAX_S": "0.5"}
        with TestClient(create_app(settings)) as client, running_worker(own, openai_server, base, env):
            org = new_org(client, "webhook org")
            open_loopback(stack, org)
            yield HookStack(client, org)
    finally:
        redis.stop()


def wait_for(check: Any, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting")
        time.sleep(0.1)


def test_a_receiver_that_was_down_gets_every_event_once_per_webhook_id(hook_stack: HookStack) -> None:
    org = hook_stack.org
    receiver = Receiver()
    receiver.start()
    try:
        hook = register(org, receiver.url, events=["run.succeeded"])
        receiver.secrets = [hook["secret"]]
        agent = org.create_agent()
        session = org.create_session(str(agent["id"]))
        first = wait(org, start_run(org, str(session["id"]), "one")["id"])
        assert first["status"] == "succeeded"
        wait_for(lambda: len(receiver.events) == 1)

        receiver.stop()  # down for a while: runs end, their deliveries fail and wait
        ended = [wait(org, start_run(org, str(session["id"]), text)["id"]) for text in ("two", "three")]
        wait_for(lambda: sum(d["attempts"] for d in deliveries(org, hook["id"]) if d["status"] == "pending") >= 4)

        receiver.start()
        wait_for(lambda: len(receiver.events) == 3)
        wait_for(lambda: all(d["status"] == "delivered" for d in deliveries(org, hook["id"])))
    finally:
        receiver.stop()
    assert receiver.refused == []
    assert sorted(p["data"]["run_id"] for p in receiver.events.values()) == sorted(
        [first["id"], *(r["id"] for r in ended)])
    assert all(p["type"] == "run.succeeded" for p in receiver.events.values())
    retried = [d for d in deliveries(org, hook["id"]) if d["run_id"] != first["id"]]
    assert all(d["attempts"] >= 2 and d["attempt_log"][0]["status"] is None for d in retried)
    # Every post carried one of these three ids, however often it was retried.
    assert receiver.posts >= 3 and set(receiver.events) == {d["id"] for d in deliveries(org, hook["id"])}
