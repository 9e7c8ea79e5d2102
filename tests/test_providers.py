"""Model providers per org (`/v1/providers`): created with a key that never comes back, tested and
listed against local fake servers speaking each kind's HTTP API, refused at internal addresses
without an allowlist, invisible to other orgs."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from tests.anthropic_server import AnthropicServer
from tests.helpers import Org, error_of, open_loopback
from tests.openai_server import OpenAIServer

KEY = "test-provider-key-0123456789"


def create(org: Org, **fields: Any) -> dict[str, Any]:
    r = org.client.post("/v1/providers", json=fields, headers=org.headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


@pytest.fixture
def fake() -> Iterator[OpenAIServer]:
    with OpenAIServer() as server:
        server.api_key = KEY
        yield server


@pytest.fixture
def loopback(stack: StackUrls, org: Org) -> Org:
    open_loopback(stack, org.id)
    return org


def test_a_provider_is_created_tested_and_lists_its_models_without_showing_its_key(
    client: TestClient, stack: StackUrls, loopback: Org, fake: OpenAIServer
) -> None:
    org = loopback
    provider = create(org, name="myopenai", kind="openai_compatible", base_url=fake.base_url, api_key=KEY,
                      default_model="gpt-4o-mini")
    assert provider["name"] == "myopenai" and provider["kind"] == "openai_compatible"
    assert provider["api_key_secret"] is None and "api_key" not in provider
    path = f"/v1/providers/{provider['id']}"

    test = client.post(f"{path}/test", headers=org.headers)
    assert test.status_code == 200 and test.json()["ok"] is True and test.json()["error"] is None
    assert test.json()["latency_ms"] >= 0
    assert fake.keys_seen[-1] == KEY

    models = client.get(f"{path}/models", headers=org.headers)
    assert models.status_code == 200
    assert [m["id"] for m in models.json()["data"]] == ["gpt-4o-mini", "test-model"]
    assert models.json()["cached"] is False
    fake.models = ["changed"]
    again = client.get(f"{path}/models", headers=org.headers).json()
    assert again["cached"] is True and [m["id"] for m in again["data"]] == ["gpt-4o-mini", "test-model"]
    refreshed = client.get(f"{path}/models?refresh=true", headers=org.headers).json()
    assert refreshed["cached"] is False and [m["id"] for m in refreshed["data"]] == ["changed"]

    listed = client.get("/v1/providers", headers=org.headers).json()["data"]
    assert [p["id"] for p in listed] == [provider["id"]]
    one = client.get(path, headers=org.headers).json()
    patched = client.patch(path, json={"default_model": "changed"}, headers=org.headers)
    assert patched.status_code == 200 and patched.json()["default_model"] == "changed"
    audit = client.get("/v1/audit-logs", headers=org.headers).text
    for text in (str(provider), str(listed), str(one), patched.text, test.text, models.text, audit):
        assert KEY not in text
    with psycopg.connect(stack.database_url) as conn:  # stored sealed, not in the providers table
        rows = conn.execute("SELECT * FROM model_providers WHERE id = %s", (provider["id"],)).fetchall()
        assert KEY not in str(rows)


def test_a_bad_key_an_unknown_model_and_an_unreachable_server_each_say_why(
    client: TestClient, loopback: Org, fake: OpenAIServer
) -> None:
    org = loopback
    bad = create(org, name="badkey", kind="openai_compatible", base_url=fake.base_url, api_key="wrong-key-987654")
    result = client.post(f"/v1/providers/{bad['id']}/test", headers=org.headers).json()
    assert result["ok"] is False and "authentication failed (401)" in result["error"]
    assert "wrong-key-987654" not in result["error"]

    unknown = create(org, name="unknown", kind="openai_compatible", base_url=fake.base_url, api_key=KEY,
                     default_model="gpt-9")
    result = client.post(f"/v1/providers/{unknown['id']}/test", headers=org.headers).json()
    assert result["ok"] is False and result["error"].startswith("model unknown: 'gpt-9'")

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gone = create(org, name="gone", kind="openai_compatible", base_url=f"http://127.0.0.1:{port}/v1", api_key=KEY)
    result = client.post(f"/v1/providers/{gone['id']}/test", headers=org.headers).json()
    assert result["ok"] is False and result["error"].startswith("unreachable")
    r = client.get(f"/v1/providers/{gone['id']}/models", headers=org.headers)
    assert "unreachable" in error_of(r, 502, "PROVIDER_FAILED")["message"]


def test_anthropic_and_azure_providers_are_tested_in_their_own_protocols(
    client: TestClient, loopback: Org, fake: OpenAIServer
) -> None:
    org = loopback
    with AnthropicServer() as anthropic:
        anthropic.api_key = KEY
        provider = create(org, name="claude", kind="anthropic", base_url=anthropic.root_url, api_key=KEY,
                          default_model="test-model")
        result = client.post(f"/v1/providers/{provider['id']}/test", headers=org.headers).json()
        assert result == {"ok": True, "latency_ms": result["latency_ms"], "error": None}
        bad = create(org, name="claude-bad", kind="anthropic", base_url=anthropic.root_url, api_key="nope-nope")
        result = client.post(f"/v1/providers/{bad['id']}/test", headers=org.headers).json()
        assert result["ok"] is False and "authentication failed" in result["error"]

    azure = create(org, name="azure", kind="azure_openai", base_url=fake.root_url, api_key=KEY,
                   api_version="2024-10-21", default_model="test-model")
    result = client.post(f"/v1/providers/{azure['id']}/test", headers=org.headers).json()
    assert result["ok"] is True, result
    assert fake.deployments[-1] == "test-model"
    missing = create(org, name="azure-missing", kind="azure_openai", base_url=fake.root_url, api_key=KEY,
                     default_model="no-such-deployment")
    result = client.post(f"/v1/providers/{missing['id']}/test", headers=org.headers).json()
    assert result["ok"] is False and "model unknown" in result["error"]


def test_a_loopback_base_url_is_refused_without_an_allowlist(client: TestClient, org: Org,
                                                             fake: OpenAIServer) -> None:
    r = client.post("/v1/providers", json={"name": "local", "kind": "openai_compatible", "base_url": fake.base_url},
                    headers=org.headers)
    assert "loopback" in error_of(r, 422, "PROVIDER_URL_REFUSED")["message"]
    r = client.post("/v1/providers", json={"name": "meta", "kind": "openai_compatible",
                                           "base_url": "http://169.254.169.254/v1"}, headers=org.headers)
    error_of(r, 422, "PROVIDER_URL_REFUSED")


def test_names_keys_and_secrets_are_validated(client: TestClient, loopback: Org, fake: OpenAIServer) -> None:
    org = loopback
    base = {"kind": "openai_compatible", "base_url": fake.base_url}
    for body in ({"name": "openai", "api_key": KEY}, {"name": "Bad Name"}, {"name": "x", "api_key": KEY,
                 "api_key_secret": "k"}, {"name": "y", "api_key_secret": "no-such-secret"},
                 {"name": "z", "headers": {"Authorization": "Bearer x"}}):
        r = client.post("/v1/providers", json=base | body, headers=org.headers)
        error_of(r, 422, "VALIDATION_FAILED")
    r = client.post("/v1/providers", json={"name": "noauth", "kind": "openai"}, headers=org.headers)
    error_of(r, 422, "VALIDATION_FAILED")

    assert client.put("/v1/secrets/vendor-key", json={"value": KEY}, headers=org.headers).status_code in (200, 201)
    named = create(org, name="named", api_key_secret="vendor-key", **base)
    assert named["api_key_secret"] == "vendor-key"
    assert client.post(f"/v1/providers/{named['id']}/test", headers=org.headers).json()["ok"] is True
    r = client.post("/v1/providers", json=base | {"name": "named"}, headers=org.headers)
    error_of(r, 409, "CONFLICT")
    # Deleting a provider deletes the key stored for it, never a secret the org named itself.
    own = create(org, name="own", api_key=KEY, **base)
    assert client.delete(f"/v1/providers/{own['id']}", headers=org.headers).status_code == 204
    assert client.delete(f"/v1/providers/{named['id']}", headers=org.headers).status_code == 204
    names = [s["name"] for s in client.get("/v1/secrets", headers=org.headers).json()["data"]]
    assert names == ["vendor-key"]


def test_another_org_cannot_see_or_use_a_provider(client: TestClient, loopback: Org, other_org: Org,
                                                  fake: OpenAIServer) -> None:
    provider = create(loopback, name="private", kind="openai_compatible", base_url=fake.base_url, api_key=KEY)
    path = f"/v1/providers/{provider['id']}"
    for method, suffix in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("POST", "/test"), ("GET", "/models")):
        body = {"default_model": "x"} if method == "PATCH" else None
        r = client.request(method, path + suffix, json=body, headers=other_org.headers)
        error_of(r, 404, "NOT_FOUND")
    assert client.get("/v1/providers", headers=other_org.headers).json()["data"] == []


def test_viewers_read_providers_but_only_admins_change_them(client: TestClient, loopback: Org,
                                                            fake: OpenAIServer) -> None:
    provider = create(loopback, name="shared", kind="openai_compatible", base_url=fake.base_url, api_key=KEY)
    viewer = {"Authorization": f"Bearer {loopback.key_with_role('viewer')}"}
    assert client.get(f"/v1/providers/{provider['id']}", headers=viewer).status_code == 200
    r = client.post("/v1/providers", json={"name": "v", "kind": "openai_compatible", "base_url": fake.base_url},
                    headers=viewer)
    error_of(r, 403, "FORBIDDEN")
    error_of(client.post(f"/v1/providers/{provider['id']}/test", headers=viewer), 403, "FORBIDDEN")
