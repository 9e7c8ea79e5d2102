"""The error contract (docs/api.md, "Errors"): every bad input gets its documented 4xx with a stable
code, a sentence that helps, and the `{"error": {"code", "message", "details"}}` object. Never a
500, and a refused write leaves nothing half-written behind."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from core import ids
from tests.helpers import ADMIN_TOKEN, Org, make_settings

MAX_BODY = 64 * 1024  # tests.helpers.make_settings sets api.max_body_bytes to this

# --------------------------------------------------------------------------------------------
# helpers


def assert_error(r: Any, status: int, code: str) -> dict[str, Any]:  # r: a TestClient response
    """`r` is the documented error object with this status and code; return its `error`."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "message", "details"}, err
    assert err["code"] == code, err
    assert isinstance(err["message"], str) and err["message"].strip(), err
    assert isinstance(err["details"], dict), err
    return dict(err)


def field_problems(err: dict[str, Any]) -> dict[str, str]:
    """`details.fields` of a VALIDATION_FAILED error as {field: message}."""
    fields = err["details"]["fields"]
    assert isinstance(fields, list) and fields, err
    return {f["field"]: f["message"] for f in fields}


def agent_names(client: TestClient, org: Org) -> list[str]:
    r = client.get("/v1/agents", headers=org.headers)
    assert r.status_code == 200, r.text
    return [a["name"] for a in r.json()["data"]]


def session_ids(client: TestClient, org: Org) -> list[str]:
    r = client.get("/v1/sessions", headers=org.headers)
    assert r.status_code == 200, r.text
    return [s["id"] for s in r.json()["data"]]


def key_names(client: TestClient, org: Org) -> list[str]:
    r = client.get("/v1/api-keys", headers=org.headers)
    assert r.status_code == 200, r.text
    return [k["name"] for k in r.json()["data"]]


def fill(template: Any, agent_id: str) -> Any:
    """Replace the placeholder `{agent}` in a path or in a body's string values."""
    if isinstance(template, str):
        return template.replace("{agent}", agent_id)
    if isinstance(template, dict):
        return {k: fill(v, agent_id) for k, v in template.items()}
    if isinstance(template, list):
        return [fill(v, agent_id) for v in template]
    return template


@pytest.fixture
def agent(org: Org) -> dict[str, Any]:
    return org.create_agent(name="subject")


@pytest.fixture(scope="session")
def raw_client(client: TestClient) -> Iterator[TestClient]:
    """The same app, but a server exception comes back as the 500 response a caller would see
    (its own lifespan: the shared state is per running app, not global)."""
    with TestClient(client.app, raise_server_exceptions=False) as raw:
        yield raw


# --------------------------------------------------------------------------------------------
# the body is not a JSON object


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"name": "half', id="truncated"),
        pytest.param(b'{"name": "a",}', id="trailing-comma"),
        pytest.param(b"{'name': 'a'}", id="single-quotes"),
        pytest.param(b'{"name": "\xff\xfe"}', id="invalid-utf8"),
        pytest.param(b'{"name": "a"} trailing', id="trailing-garbage"),
    ],
)
def test_malformed_json_is_400_bad_request(client: TestClient, org: Org, raw: bytes) -> None:
    r = client.post("/v1/agents", content=raw, headers=org.headers | {"Content-Type": "application/json"})
    err = assert_error(r, 400, "BAD_REQUEST")
    assert "not valid JSON" in err["message"]
    assert agent_names(client, org) == []


@pytest.mark.parametrize("raw", [b'["name", "a"]', b'"a string"', b"42", b"null", b"true"])
def test_json_that_is_not_an_object_is_400(client: TestClient, org: Org, raw: bytes) -> None:
    r = client.post("/v1/agents", content=raw, headers=org.headers | {"Content-Type": "application/json"})
    err = assert_error(r, 400, "BAD_REQUEST")
    assert "JSON object" in err["message"]
    assert agent_names(client, org) == []


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml"],
)
def test_non_json_content_type_with_a_body_is_415(client: TestClient, org: Org, content_type: str) -> None:
    r = client.post(
        "/v1/agents", content=b'{"name": "looks-like-json"}', headers=org.headers | {"Content-Type": content_type}
    )
    err = assert_error(r, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert "application/json" in err["message"]
    assert agent_names(client, org) == []


def test_json_content_type_with_charset_is_accepted(client: TestClient, org: Org) -> None:
    r = client.post(
        "/v1/agents",
        content=b'{"name": "charset-ok"}',
        headers=org.headers | {"Content-Type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 201, r.text


# --------------------------------------------------------------------------------------------
# the body is too large


def _oversize_agent() -> dict[str, Any]:
    return {"name": "too-big", "instructions": "x" * (MAX_BODY + 1)}


def test_oversize_body_is_413_and_creates_nothing(client: TestClient, org: Org) -> None:
    r = client.post("/v1/agents", json=_oversize_agent(), headers=org.headers)
    assert r.status_code == 413, r.text
    assert agent_names(client, org) == []


def test_oversize_body_413_carries_the_error_object(client: TestClient, org: Org) -> None:
    r = client.post("/v1/agents", json=_oversize_agent(), headers=org.headers)
    assert "content-length" in {k.lower() for k in r.request.headers}
    err = assert_error(r, 413, "PAYLOAD_TOO_LARGE")
    assert str(MAX_BODY) in err["message"]


def test_oversize_chunked_body_is_413_with_the_error_object_and_creates_nothing(client: TestClient, org: Org) -> None:
    """No Content-Length: the limit trips while the body is being read."""
    raw = orjson.dumps(_oversize_agent())

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(raw), 8192):
            yield raw[i : i + 8192]

    r = client.post("/v1/agents", content=chunks(), headers=org.headers | {"Content-Type": "application/json"})
    assert "content-length" not in {k.lower() for k in r.request.headers}
    err = assert_error(r, 413, "PAYLOAD_TOO_LARGE")
    assert str(MAX_BODY) in err["message"]
    assert agent_names(client, org) == []


def test_body_just_under_the_limit_is_accepted(client: TestClient, org: Org) -> None:
    r = client.post("/v1/agents", json={"name": "big-but-fine", "instructions": "x" * (MAX_BODY - 1024)},
                    headers=org.headers)
    assert r.status_code == 201, r.text
    assert agent_names(client, org) == ["big-but-fine"]


# --------------------------------------------------------------------------------------------
# fields of the wrong type or shape


@pytest.mark.parametrize(
    "body, field",
    [
        pytest.param({"name": 123}, "name", id="name-int"),
        pytest.param({"name": "ok", "instructions": ["a"]}, "instructions", id="instructions-list"),
        pytest.param({"name": "ok", "skills": "search"}, "skills", id="skills-string"),
        pytest.param({"name": "ok", "subagents": {"a": 1}}, "subagents", id="subagents-object"),
        pytest.param({"name": "ok", "mode": "turbo"}, "mode", id="mode-unknown"),
        pytest.param({"name": "ok", "limits": {"max_steps": "many"}}, "limits.max_steps", id="nested-type"),
        pytest.param({"name": "ok", "limits": {"max_steps": 0}}, "limits.max_steps", id="nested-range"),
        pytest.param({"name": "ok", "memory": "lots"}, "memory", id="memory-string"),
        pytest.param({"name": "ok", "skills": ["a", "a"]}, "skills", id="skills-repeated"),
        pytest.param({"name": "-leading-dash"}, "name", id="name-pattern"),
        pytest.param({"instructions": "no name"}, "name", id="name-missing"),
    ],
)
def test_agent_create_with_a_bad_field_is_422_naming_it(
    client: TestClient, org: Org, body: dict[str, Any], field: str
) -> None:
    r = client.post("/v1/agents", json=body, headers=org.headers)
    err = assert_error(r, 422, "VALIDATION_FAILED")
    assert field in field_problems(err)
    assert f"'{field}'" in err["message"]
    assert agent_names(client, org) == []


def test_agent_create_lists_every_bad_field(client: TestClient, org: Org) -> None:
    r = client.post("/v1/agents", json={"name": 1, "mode": "turbo", "limits": {"timeout_s": -1}}, headers=org.headers)
    err = assert_error(r, 422, "VALIDATION_FAILED")
    assert {"name", "mode", "limits.timeout_s"} <= set(field_problems(err))
    assert "(and 2 more)" in err["message"]


@pytest.mark.parametrize(
    "body, field",
    [
        pytest.param({"instructions": 5}, "instructions", id="instructions-int"),
        pytest.param({"limits": {"max_tokens": "lots"}}, "limits.max_tokens", id="nested-type"),
        pytest.param({"name": ""}, "name", id="name-empty"),
        pytest.param({"confirm": "some"}, "confirm", id="confirm-unknown-word"),
    ],
)
def test_agent_patch_with_a_bad_field_is_422_and_changes_nothing(
    client: TestClient, org: Org, agent: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    r = client.patch(f"/v1/agents/{agent['id']}", json=body, headers=org.headers)
    err = assert_error(r, 422, "VALIDATION_FAILED")
    assert any(f == field or f.startswith(field + ".") for f in field_problems(err)), err
    after = client.get(f"/v1/agents/{agent['id']}", headers=org.headers).json()
    assert after == agent


@pytest.mark.parametrize(
    "body, field",
    [
        pytest.param({"agent_id": 7}, "agent_id", id="agent-id-int"),
        pytest.param({"agent_id": "{agent}", "metadata": "x"}, "metadata", id="metadata-string"),
        pytest.param({"agent_id": "{agent}", "title": ["t"]}, "title", id="title-list"),
        pytest.param({"title": "no agent"}, "agent_id", id="agent-id-missing"),
    ],
)
def test_session_create_with_a_bad_field_is_422_naming_it(
    client: TestClient, org: Org, agent: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    r = client.post("/v1/sessions", json=fill(body, agent["id"]), headers=org.headers)
    err = assert_error(r, 422, "VALIDATION_FAILED")
    assert field in field_problems(err)
    assert session_ids(client, org) == []


@pytest.mark.parametrize(
    "body, field",
    [
        pytest.param({"name": 1}, "name", id="name-int"),
        pytest.param({"name": ""}, "name", id="name-empty"),
        pytest.param({"name": "k", "role": "god"}, "role", id="role-unknown"),
        pytest.param({"name": "k", "expires_at": "next tuesday"}, "expires_at", id="expires-garbage"),
    ],
)
def test_api_key_create_with_a_bad_field_is_422_naming_it(
    client: TestClient, org: Org, body: dict[str, Any], field: str
) -> None:
    before = key_names(client, org)
    r = client.post("/v1/api-keys", json=body, headers=org.headers)
    err = assert_error(r, 422, "VALIDATION_FAILED")
    assert field in field_problems(err)
    assert key_names(client, org) == before


# --------------------------------------------------------------------------------------------
# unknown fields


@pytest.mark.parametrize(
    "method, path, body, field",
    [
        pytest.param("POST", "/v1/agents", {"name": "fine", "colour": "blue"}, "colour", id="agent-create"),
        pytest.param("POST", "/v1/agents", {"name": "fine", "limits": {"turbo": True}}, "limits.turbo",
                     id="agent-create-nested"),
        pytest.param("PATCH", "/v1/agents/{agent}", {"colour": "blue"}, "colour", id="agent-patch"),
        pytest.param("PATCH", "/v1/agents/{agent}", {"version": 99}, "version", id="agent-patch-version"),
        pytest.param("POST", "/v1/sessions", {"agent_id": "{agent}", "colour": "blue"}, "colour",
                     id="session-create"),
        pytest.param("POST", "/v1/api-keys", {"name": "k", "colour": "blue"}, "colour", id="api-key-create"),
    ],
)
def test_unknown_field_is_422_not_allowed_here(
    client: TestClient, org: Org, agent: dict[str, Any], method: str, path: str, body: dict[str, Any], field: str
) -> None:
    agents_before = agent_names(client, org)
    sessions_before = session_ids(client, org)
    keys_before = key_names(client, org)
    r = client.request(method, fill(path, agent["id"]), json=fill(body, agent["id"]), headers=org.headers)
    err = assert_error(r, 422, "VALIDATION_FAILED")
    assert field_problems(err).get(field) == "is not allowed here", err
    assert err["message"] == f"'{field}' is not allowed here"
    assert agent_names(client, org) == agents_before
    assert session_ids(client, org) == sessions_before
    assert key_names(client, org) == keys_before
    assert client.get(f"/v1/agents/{agent['id']}", headers=org.headers).json()["version"] == agent["version"]


# --------------------------------------------------------------------------------------------
# ids in paths


@pytest.mark.parametrize(
    "method, path",
    [
        pytest.param("GET", "/v1/agents/nope", id="agent-word"),
        pytest.param("GET", "/v1/agents/agt_zzz", id="agent-short"),
        pytest.param("GET", "/v1/agents/AGT_0123456789abcdef0123456789ab", id="agent-uppercase"),
        pytest.param("DELETE", "/v1/agents/nope", id="agent-delete"),
        pytest.param("GET", "/v1/agents/nope/versions", id="agent-versions"),
        pytest.param("GET", "/v1/sessions/ses_zzz", id="session-short"),
        pytest.param("DELETE", "/v1/sessions/ses_zzz", id="session-delete"),
        pytest.param("GET", "/v1/sessions/ses_zzz/messages", id="session-messages"),
        pytest.param("DELETE", "/v1/api-keys/nope", id="api-key"),
        pytest.param("GET", "/v1/sessions/{agent}", id="agent-id-as-session-id"),
        pytest.param("GET", "/v1/sessions/{agent}/messages", id="agent-id-as-session-id-messages"),
        pytest.param("DELETE", "/v1/api-keys/{agent}", id="agent-id-as-api-key-id"),
    ],
)
def test_malformed_or_wrong_kind_path_id_is_404(
    client: TestClient, org: Org, agent: dict[str, Any], method: str, path: str
) -> None:
    path = fill(path, agent["id"])
    r = client.request(method, path, headers=org.headers)
    err = assert_error(r, 404, "NOT_FOUND")
    assert path.split("/")[3] in err["message"]
    assert client.get(f"/v1/agents/{agent['id']}", headers=org.headers).json() == agent


def test_session_id_used_as_agent_id_is_404(client: TestClient, org: Org, agent: dict[str, Any]) -> None:
    session = org.create_session(agent["id"])
    for method in ("GET", "DELETE"):
        r = client.request(method, f"/v1/agents/{session['id']}", headers=org.headers)
        assert_error(r, 404, "NOT_FOUND")
    r = client.patch(f"/v1/agents/{session['id']}", json={"instructions": "x"}, headers=org.headers)
    assert_error(r, 404, "NOT_FOUND")
    assert client.get(f"/v1/sessions/{session['id']}", headers=org.headers).status_code == 200


@pytest.mark.parametrize(
    "method, kind, suffix, body",
    [
        ("GET", "agent", "", None),
        ("PATCH", "agent", "", {"instructions": "x"}),
        ("DELETE", "agent", "", None),
        ("GET", "agent", "/versions", None),
        ("GET", "session", "", None),
        ("DELETE", "session", "", None),
        ("GET", "session", "/messages", None),
        ("DELETE", "api_key", "", None),
    ],
)
def test_well_formed_but_unknown_id_is_404(
    client: TestClient, org: Org, method: str, kind: str, suffix: str, body: dict[str, Any] | None
) -> None:
    collection = {"agent": "agents", "session": "sessions", "api_key": "api-keys"}[kind]
    missing = ids.new_id(kind)
    r = client.request(method, f"/v1/{collection}/{missing}{suffix}", json=body, headers=org.headers)
    err = assert_error(r, 404, "NOT_FOUND")
    assert missing in err["message"]


def test_deleted_agent_is_404_afterwards(client: TestClient, org: Org, agent: dict[str, Any]) -> None:
    assert client.delete(f"/v1/agents/{agent['id']}", headers=org.headers).status_code == 204
    assert_error(client.get(f"/v1/agents/{agent['id']}", headers=org.headers), 404, "NOT_FOUND")
    assert_error(client.delete(f"/v1/agents/{agent['id']}", headers=org.headers), 404, "NOT_FOUND")
    r = client.patch(f"/v1/agents/{agent['id']}", json={"instructions": "x"}, headers=org.headers)
    assert_error(r, 404, "NOT_FOUND")


# --------------------------------------------------------------------------------------------
# routes and methods


@pytest.mark.parametrize("path", ["/v1/nothing-here", "/v2/agents", "/v1/agents/x/y/z"])
def test_unknown_route_is_404_with_the_error_object(client: TestClient, org: Org, path: str) -> None:
    err = assert_error(client.get(path, headers=org.headers), 404, "NOT_FOUND")
    assert path in err["message"]


def test_unknown_route_is_404_even_without_credentials(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing-here"), 404, "NOT_FOUND")


@pytest.mark.parametrize(
    "method, path",
    [("PUT", "/v1/agents"), ("DELETE", "/v1/agents"), ("POST", "/v1/agents/{agent}"), ("PUT", "/v1/sessions"),
     ("GET", "/v1/orgs"), ("POST", "/healthz")],
)
def test_wrong_method_is_405_with_the_error_object(
    client: TestClient, org: Org, agent: dict[str, Any], method: str, path: str
) -> None:
    r = client.request(method, fill(path, agent["id"]), json={}, headers=org.headers)
    assert_error(r, 405, "METHOD_NOT_ALLOWED")
    assert "allow" in {k.lower() for k in r.headers}


def test_405_allow_header_lists_every_method_of_the_path(client: TestClient, org: Org) -> None:
    r = client.put("/v1/agents", json={}, headers=org.headers)
    assert_error(r, 405, "METHOD_NOT_ALLOWED")
    allowed = {m.strip() for m in r.headers["allow"].split(",")}
    assert {"GET", "POST"} <= allowed


# --------------------------------------------------------------------------------------------
# pagination parameters

LISTS = ["/v1/agents", "/v1/sessions", "/v1/api-keys", "/v1/sessions/{session}/messages"]


@pytest.fixture
def session(org: Org, agent: dict[str, Any]) -> dict[str, Any]:
    return org.create_session(agent["id"])


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("limit", ["0", "201", "abc", "-1", "1.5", ""])
def test_bad_limit_is_422(client: TestClient, org: Org, session: dict[str, Any], path: str, limit: str) -> None:
    r = client.get(path.replace("{session}", session["id"]), params={"limit": limit}, headers=org.headers)
    err = assert_error(r, 422, "VALIDATION_FAILED")
    assert "limit" in field_problems(err)
    assert "200" in err["message"]


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("limit", ["1", "200"])
def test_limit_at_the_bounds_is_accepted(
    client: TestClient, org: Org, session: dict[str, Any], path: str, limit: str
) -> None:
    r = client.get(path.replace("{session}", session["id"]), params={"limit": limit}, headers=org.headers)
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) <= int(limit)


@pytest.mark.parametrize("path", LISTS)
@pytest.mark.parametrize("cursor", ["garbage!!", "%%%", "a", "\u00e9t\u00e9", "Zm9v"])
def test_garbage_cursor_is_422(client: TestClient, org: Org, session: dict[str, Any], path: str, cursor: str) -> None:
    r = client.get(path.replace("{session}", session["id"]), params={"cursor": cursor}, headers=org.headers)
    err = assert_error(r, 422, "VALIDATION_FAILED")
    assert "cursor" in field_problems(err)


def test_a_returned_cursor_is_accepted(client: TestClient, org: Org) -> None:
    for _ in range(3):
        org.create_agent()
    first = client.get("/v1/agents", params={"limit": 2}, headers=org.headers).json()
    assert first["next_cursor"]
    r = client.get("/v1/agents", params={"limit": 2, "cursor": first["next_cursor"]}, headers=org.headers)
    assert r.status_code == 200, r.text
    assert len(r.json()["data"]) == 1


def test_messages_order_must_be_asc_or_desc(client: TestClient, org: Org, session: dict[str, Any]) -> None:
    r = client.get(f"/v1/sessions/{session['id']}/messages", params={"order": "sideways"}, headers=org.headers)
    err = assert_error(r, 422, "VALIDATION_FAILED")
    assert "order" in field_problems(err)


# --------------------------------------------------------------------------------------------
# agents: model spec, names, sub-agents


@pytest.mark.parametrize("model", ["nope", "foo:bar", "offline:", ":default", "OPENAI:gpt-4o"])
def test_bad_model_spec_on_create_is_422(client: TestClient, org: Org, model: str) -> None:
    r = client.post("/v1/agents", json={"name": "modelled", "model": model}, headers=org.headers)
    err = assert_error(r, 422, "VALIDATION_FAILED")
    assert "model" in field_problems(err)
    assert agent_names(client, org) == []


@pytest.mark.parametrize("model", ["nope", "foo:bar"])
def test_bad_model_spec_on_patch_is_422_and_keeps_the_version(
    client: TestClient, org: Org, agent: dict[str, Any], model: str
) -> None:
    r = client.patch(f"/v1/agents/{agent['id']}", json={"model": model, "instructions": "changed"},
                     headers=org.headers)
    err = assert_error(r, 422, "VALIDATION_FAILED")
    assert "model" in field_problems(err)
    assert "provider" in field_problems(err)["model"]
    after = client.get(f"/v1/agents/{agent['id']}", headers=org.headers).json()
    assert after["version"] == agent["version"]
    assert after == agent
    versions = client.get(f"/v1/agents/{agent['id']}/versions", headers=org.headers).json()["data"]
    assert [v["version"] for v in versions] == [agent["version"]]


def test_unknown_provider_message_names_the_known_ones(client: TestClient, org: Org) -> None:
    r = client.post("/v1/agents", json={"name": "modelled", "model": "foo:bar"}, headers=org.headers)
    message = field_problems(assert_error(r, 422, "VALIDATION_FAILED"))["model"]
    assert "'foo'" in message and "offline" in message


def test_duplicate_agent_name_is_409_conflict(client: TestClient, org: Org, agent: dict[str, Any]) -> None:
    r = client.post("/v1/agents", json={"name": agent["name"], "instructions": "second"}, headers=org.headers)
    err = assert_error(r, 409, "CONFLICT")
    assert agent["name"] in err["message"]
    assert err["details"] == {"field": "name"}
    assert agent_names(client, org) == [agent["name"]]


def test_rename_by_patch_to_a_taken_name_is_409_and_keeps_the_version(
    client: TestClient, org: Org, agent: dict[str, Any]
) -> None:
    other = org.create_agent(name="other")
    r = client.patch(f"/v1/agents/{other['id']}", json={"name": agent["name"], "instructions": "new"},
                     headers=org.headers)
    err = assert_error(r, 409, "CONFLICT")
    assert agent["name"] in err["message"]
    assert client.get(f"/v1/agents/{other['id']}", headers=org.headers).json() == other
    versions = client.get(f"/v1/agents/{other['id']}/versions", headers=org.headers).json()["data"]
    assert [v["version"] for v in versions] == [1]


def test_name_of_a_deleted_agent_can_be_reused(client: TestClient, org: Org, agent: dict[str, Any]) -> None:
    assert client.delete(f"/v1/agents/{agent['id']}", headers=org.headers).status_code == 204
    r = client.post("/v1/agents", json={"name": agent["name"]}, headers=org.headers)
    assert r.status_code == 201, r.text


def test_missing_sub_agent_is_422_listing_it(client: TestClient, org: Org, agent: dict[str, Any]) -> None:
    ghost = ids.new_id("agent")
    r = client.post("/v1/agents", json={"name": "boss", "subagents": [agent["id"], ghost, "nope"]},
                    headers=org.headers)
    err = assert_error(r, 422, "VALIDATION_FAILED")
    problems = err["details"]["fields"]
    assert {p["field"] for p in problems} == {"subagents"}
    named = " ".join(p["message"] for p in problems)
    assert ghost in named and "'nope'" in named
    assert agent["id"] not in named
    assert agent_names(client, org) == [agent["name"]]


def test_missing_sub_agent_on_patch_is_422_and_keeps_the_version(
    client: TestClient, org: Org, agent: dict[str, Any]
) -> None:
    ghost = ids.new_id("agent")
    r = client.patch(f"/v1/agents/{agent['id']}", json={"subagents": [ghost]}, headers=org.headers)
    err = assert_error(r, 422, "VALIDATION_FAILED")
    assert ghost in err["message"]
    assert client.get(f"/v1/agents/{agent['id']}", headers=org.headers).json() == agent


def test_agent_as_its_own_sub_agent_is_422(client: TestClient, org: Org, agent: dict[str, Any]) -> None:
    r = client.patch(f"/v1/agents/{agent['id']}", json={"subagents": [agent["id"]]}, headers=org.headers)
    err = assert_error(r, 422, "VALIDATION_FAILED")
    assert field_problems(err) == {"subagents": "an agent cannot be its own sub-agent"}
    assert client.get(f"/v1/agents/{agent['id']}", headers=org.headers).json() == agent


def test_deleted_agent_cannot_be_a_sub_agent(client: TestClient, org: Org, agent: dict[str, Any]) -> None:
    assert client.delete(f"/v1/agents/{agent['id']}", headers=org.headers).status_code == 204
    r = client.post("/v1/agents", json={"name": "boss", "subagents": [agent["id"]]}, headers=org.headers)
    err = assert_error(r, 422, "VALIDATION_FAILED")
    assert agent["id"] in err["message"]


def test_a_valid_sub_agent_patch_bumps_the_version(client: TestClient, org: Org, agent: dict[str, Any]) -> None:
    helper = org.create_agent(name="helper")
    r = client.patch(f"/v1/agents/{agent['id']}", json={"subagents": [helper["id"]]}, headers=org.headers)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == agent["version"] + 1


# --------------------------------------------------------------------------------------------
# sessions and api keys


@pytest.mark.parametrize("agent_id", ["nope", "ses_zzz", "NEW-AGENT-ID"])
def test_session_for_a_missing_agent_is_404(client: TestClient, org: Org, agent_id: str) -> None:
    agent_id = ids.new_id("agent") if agent_id == "NEW-AGENT-ID" else agent_id
    r = client.post("/v1/sessions", json={"agent_id": agent_id}, headers=org.headers)
    err = assert_error(r, 404, "NOT_FOUND")
    assert agent_id in err["message"]
    assert err["details"] == {"field": "agent_id"}
    assert session_ids(client, org) == []


def test_session_for_a_deleted_agent_is_404(client: TestClient, org: Org, agent: dict[str, Any]) -> None:
    assert client.delete(f"/v1/agents/{agent['id']}", headers=org.headers).status_code == 204
    r = client.post("/v1/sessions", json={"agent_id": agent["id"]}, headers=org.headers)
    assert_error(r, 404, "NOT_FOUND")
    assert session_ids(client, org) == []


def test_api_key_expiring_in_the_past_is_422(client: TestClient, org: Org) -> None:
    before = key_names(client, org)
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    r = client.post("/v1/api-keys", json={"name": "stale", "expires_at": past}, headers=org.headers)
    err = assert_error(r, 422, "VALIDATION_FAILED")
    assert "future" in field_problems(err)["expires_at"]
    assert key_names(client, org) == before


def test_api_key_expiry_without_timezone_is_422(client: TestClient, org: Org) -> None:
    naive = (datetime.now(UTC) + timedelta(days=1)).replace(tzinfo=None).isoformat()
    r = client.post("/v1/api-keys", json={"name": "naive", "expires_at": naive}, headers=org.headers)
    err = assert_error(r, 422, "VALIDATION_FAILED")
    assert "timezone" in field_problems(err)["expires_at"]
    assert "naive" not in key_names(client, org)


def test_api_key_expiring_in_the_future_is_accepted(client: TestClient, org: Org) -> None:
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    r = client.post("/v1/api-keys", json={"name": "fresh", "expires_at": future}, headers=org.headers)
    assert r.status_code == 201, r.text


# --------------------------------------------------------------------------------------------
# NUL characters: Postgres cannot store U+0000 in text or jsonb


NUL_CASES = [
    pytest.param("POST", "/v1/agents", {"name": "nul", "instructions": "a\u0000b"}, id="agent-instructions"),
    pytest.param("POST", "/v1/agents", {"name": "nul", "skills": ["a\u0000"]}, id="agent-skills"),
    pytest.param("PATCH", "/v1/agents/{agent}", {"instructions": "a\u0000b"}, id="agent-patch-instructions"),
    pytest.param("POST", "/v1/sessions", {"agent_id": "{agent}", "title": "a\u0000b"}, id="session-title"),
    pytest.param("POST", "/v1/sessions", {"agent_id": "{agent}", "metadata": {"k": "a\u0000b"}},
                 id="session-metadata"),
    pytest.param("POST", "/v1/sessions", {"agent_id": "{agent}", "user_id": "u\u0000"}, id="session-user-id"),
    pytest.param("POST", "/v1/api-keys", {"name": "a\u0000b"}, id="api-key-name"),
]


def test_org_name_with_nul_is_422_not_500(raw_client: TestClient) -> None:
    r = raw_client.post("/v1/orgs", json={"name": "a\u0000b"}, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code != 500, r.text
    assert_error(r, 422, "VALIDATION_FAILED")


# --------------------------------------------------------------------------------------------
# authentication


def test_missing_authorization_is_401_with_a_challenge(client: TestClient) -> None:
    r = client.get("/v1/agents")
    err = assert_error(r, 401, "UNAUTHENTICATED")
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert "Bearer" in err["message"]


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param("Basic xyz", id="basic"),
        pytest.param("Basic dXNlcjpwYXNz", id="basic-base64"),
        pytest.param("Bearer", id="bearer-no-token"),
        pytest.param("Bearer    ", id="bearer-blank"),
        pytest.param("Token aos_abc", id="other-scheme"),
        pytest.param("Bearer aos_notakey", id="malformed-api-key"),
        pytest.param("Bearer aos_abcdefghij_" + "A" * 32, id="unknown-api-key"),
        pytest.param("Bearer not.a.jwt", id="garbage-jwt"),
        pytest.param("Bearer " + ADMIN_TOKEN, id="admin-token-on-org-route"),
    ],
)
def test_bad_credential_is_401_with_a_challenge(client: TestClient, authorization: str) -> None:
    r = client.get("/v1/agents", headers={"Authorization": authorization})
    assert_error(r, 401, "UNAUTHENTICATED")
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_unauthenticated_request_learns_nothing_about_the_body(client: TestClient) -> None:
    """Authentication comes first: a bad body from an anonymous caller is still a 401."""
    r = client.post("/v1/agents", content=b"{not json", headers={"Content-Type": "application/json"})
    assert_error(r, 401, "UNAUTHENTICATED")


def test_create_org_with_an_org_owner_key_is_401(client: TestClient, org: Org) -> None:
    r = client.post("/v1/orgs", json={"name": "sneaky"}, headers=org.headers)
    err = assert_error(r, 401, "UNAUTHENTICATED")
    assert "admin" in err["message"]
    assert r.headers["www-authenticate"].startswith("Bearer")


def test_create_org_without_credentials_is_401(client: TestClient) -> None:
    r = client.post("/v1/orgs", json={"name": "anonymous"})
    assert_error(r, 401, "UNAUTHENTICATED")


@pytest.mark.parametrize(
    "body, field",
    [
        pytest.param({}, "name", id="missing-name"),
        pytest.param({"name": ""}, "name", id="empty-name"),
        pytest.param({"name": 5}, "name", id="int-name"),
        pytest.param({"name": "x" * 201}, "name", id="long-name"),
        pytest.param({"name": "ok", "plan": "enterprise"}, "plan", id="unknown-field"),
    ],
)
def test_create_org_with_the_admin_token_but_a_bad_body_is_422(
    client: TestClient, body: dict[str, Any], field: str
) -> None:
    r = client.post("/v1/orgs", json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    err = assert_error(r, 422, "VALIDATION_FAILED")
    assert field in field_problems(err)


# --------------------------------------------------------------------------------------------
# health when Redis is down


def _closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def app_without_redis(stack: Any, rsa_keys: Any) -> Iterator[TestClient]:
    settings = make_settings(
        stack, rsa_keys, redis={"url": f"redis://127.0.0.1:{_closed_port()}/0", "socket_timeout_s": 0.5}
    )
    with TestClient(create_app(settings), raise_server_exceptions=False) as c:
        yield c


def test_readyz_is_503_when_redis_is_unreachable(app_without_redis: TestClient) -> None:
    r = app_without_redis.get("/readyz")
    assert r.status_code == 503, r.text
    body = r.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["postgres"] == "ok"
    assert body["checks"]["redis"] != "ok"
    assert body["checks"]["redis"].startswith("unavailable")


def test_healthz_is_200_when_redis_is_unreachable(app_without_redis: TestClient) -> None:
    r = app_without_redis.get("/healthz")
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "ok"}


def test_readyz_is_200_when_everything_answers(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"] == {"postgres": "ok", "redis": "ok"}
