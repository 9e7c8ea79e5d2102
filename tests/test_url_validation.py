"""A skill's or an MCP server's URL must be one a client can call: schemathesis registered
`http://` and `http://[` (both passed the `^https?://` pattern), which were stored, failed every
call, and broke whatever parsed the listing later. They are refused with 422 now."""

from __future__ import annotations

import pytest

from tests.helpers import error_of

UNUSABLE = ["http://", "http://[", "https://[::1", "http://host:99999/x", "http://a b/", "https://host:0/"]


@pytest.mark.parametrize("url", UNUSABLE)
def test_an_mcp_server_with_an_unusable_url_is_refused(org, url):
    r = org.client.post("/v1/mcp-servers", json={"name": "tools", "url": url}, headers=org.headers)
    assert error_of(r, 422, "VALIDATION_FAILED")["details"]["fields"][0]["field"] == "url"
    assert org.client.get("/v1/mcp-servers", headers=org.headers).json()["data"] == []


@pytest.mark.parametrize("url", UNUSABLE)
def test_an_http_skill_with_an_unusable_url_is_refused_on_create_and_patch(org, url):
    h = org.headers
    assert org.client.put("/v1/secrets/hook", json={"value": "whsec_x"}, headers=h).status_code == 200
    skill = {"name": "lookup", "description": "Look up.", "signing_secret": {"secret": "hook"}}
    error_of(org.client.post("/v1/skills", json=skill | {"url": url}, headers=h), 422, "VALIDATION_FAILED")
    assert org.client.post("/v1/skills", json=skill | {"url": "https://example.com/hook"}, headers=h).status_code == 201
    error_of(org.client.patch("/v1/skills/lookup", json={"url": url}, headers=h), 422, "VALIDATION_FAILED")
    assert org.client.get("/v1/skills/lookup", headers=h).json()["url"] == "https://example.com/hook"


def test_usable_urls_still_register(org):
    for i, url in enumerate(["http://10.1.2.3:8080/mcp", "https://[2001:db8::1]/mcp", "https://user@example.com/m"]):
        r = org.client.post("/v1/mcp-servers", json={"name": f"s{i}", "url": url, "timeout_s": 1},
                            headers=org.headers)
        assert r.status_code == 201, r.text
