"""CORS (`AGENTOS_API__CORS_ORIGINS`): pages on the configured origins may call the API; preflights
are answered without a credential; refusals carry the CORS headers too, so a page can read them;
with no origins configured (the default) nothing changes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from api.app import create_app
from core.settings import ApiSettings, load_settings
from tests.helpers import Org, RsaKeys, error_of, make_settings, new_org

ORIGINS = ["https://app.example.com", "http://localhost:*", "https://*.example.org"]


@pytest.fixture(scope="module")
def cors_client(stack: StackUrls, rsa_keys: RsaKeys) -> Iterator[TestClient]:
    settings = make_settings(stack, rsa_keys, api={"max_body_bytes": 64 * 1024, "cors_origins": ORIGINS})
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def cors_org(cors_client: TestClient) -> Org:
    return new_org(cors_client, "cors org")


def preflight(client: TestClient, origin: str, method: str = "POST",
              headers: str = "authorization, content-type, idempotency-key") -> Any:
    return client.options("/v1/sessions/ses_x/runs", headers={
        "Origin": origin, "Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers})


@pytest.mark.parametrize("origin", ["https://app.example.com", "http://localhost:5173", "http://localhost",
                                    "https://a.b.example.org"])
def test_a_preflight_from_an_allowed_origin_passes_without_a_credential(cors_client: TestClient, origin: str):
    r = preflight(cors_client, origin)
    assert r.status_code == 200, r.text
    h = r.headers
    assert h["access-control-allow-origin"] == origin
    allowed = {x.strip().lower() for x in h["access-control-allow-headers"].split(",")}
    assert {"authorization", "content-type", "idempotency-key", "last-event-id", "traceparent"} <= allowed
    methods = {m.strip() for m in h["access-control-allow-methods"].split(",")}
    assert {"GET", "POST", "PATCH", "PUT", "DELETE"} <= methods
    assert "access-control-allow-credentials" not in h


@pytest.mark.parametrize("origin", ["https://evil.example", "http://localhost.evil.example", "https://example.org",
                                    "http://app.example.com", "null"])
def test_a_preflight_from_another_origin_is_refused(cors_client: TestClient, origin: str):
    r = preflight(cors_client, origin)
    assert r.status_code == 400
    assert "access-control-allow-origin" not in r.headers


def test_a_preflight_for_a_header_not_listed_is_refused(cors_client: TestClient):
    assert preflight(cors_client, "https://app.example.com", headers="x-custom").status_code == 400


def test_responses_expose_the_headers_a_page_needs(cors_client: TestClient, cors_org: Org):
    r = cors_client.get("/v1/agents", headers=cors_org.headers | {"Origin": "http://localhost:3000"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"
    assert "Origin" in r.headers["vary"]
    exposed = {x.strip() for x in r.headers["access-control-expose-headers"].split(",")}
    assert {"Location", "Idempotent-Replayed", "RateLimit-Limit", "RateLimit-Remaining", "Retry-After",
            "AgentOS-Wait", "AgentOS-Trace-Id"} <= exposed
    assert "RateLimit-Limit" in r.headers  # and they are really sent


def test_refusals_carry_cors_headers_so_the_page_can_read_them(cors_client: TestClient):
    r = cors_client.get("/v1/agents", headers={"Origin": "https://app.example.com"})
    error_of(r, 401, "UNAUTHENTICATED")
    assert r.headers["access-control-allow-origin"] == "https://app.example.com"


def test_another_origin_gets_no_cors_headers(cors_client: TestClient, cors_org: Org):
    r = cors_client.get("/v1/agents", headers=cors_org.headers | {"Origin": "https://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


def test_without_origins_configured_there_is_no_cors(client: TestClient, org: Org):
    r = preflight(client, "http://localhost:5173")
    assert r.status_code == 405
    assert "access-control-allow-origin" not in r.headers
    plain = client.get("/v1/agents", headers=org.headers | {"Origin": "http://localhost:5173"})
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers


def test_origins_come_from_the_environment_as_json(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AGENTOS_API__CORS_ORIGINS", '["http://localhost:*", "https://App.Example.com"]')
    assert load_settings().api.cors_origins == ["http://localhost:*", "https://app.example.com"]
    monkeypatch.delenv("AGENTOS_API__CORS_ORIGINS")
    assert load_settings().api.cors_origins == []  # none by default


@pytest.mark.parametrize("bad", ["localhost:3000", "https://app.example.com/", "https://app.example.com/path",
                                 "ftp://x.example", "http://*", "https://a.*.example.com", "http://localhost:3*"])
def test_what_is_not_an_origin_is_refused(bad: str):
    with pytest.raises(ValidationError, match="is not an origin"):
        ApiSettings(cors_origins=[bad])
