"""Tenant isolation through the API: a resource of another org is indistinguishable from a missing
one (404 NOT_FOUND), lists never show another org's items, and a refused request changes nothing
for the org that owns the resource. Org A owns the resources; org B is the intruder."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from starlette.testclient import TestClient

from core import ids
from core.pagination import encode_cursor
from tests.helpers import JWT_SECRET, Org


def mint_jwt(org_id: str, role: str = "owner", sub: str = "user-of-b") -> str:
    now = int(time.time())
    claims = {"sub": sub, "org_id": org_id, "role": role, "aud": "agentos", "iat": now, "exp": now + 300}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def assert_not_found(r: Any) -> dict[str, Any]:
    assert r.status_code == 404, r.text
    err = r.json()["error"]
    assert err["code"] == "NOT_FOUND", err
    assert "in this organisation" in err["message"], err
    return dict(err)


@dataclass
class World:
    """Org A with an agent, a session and a second API key; org B with its own agent and session."""

    a: Org
    b: Org
    agent: dict[str, Any]
    session: dict[str, Any]
    key: dict[str, Any]  # includes the secret `key`
    b_agent: dict[str, Any]
    b_session: dict[str, Any]

    def a_get(self, path: str) -> Any:
        return self.a.client.get(path, headers=self.a.headers)

    def a_snapshot(self) -> dict[str, Any]:
        """Everything org A can see of the resources B will go after."""
        keys = {k["id"]: k for k in self.a_get("/v1/api-keys").json()["data"]}
        key = keys.get(self.key["id"])
        return {
            "agent": self.a_get(f"/v1/agents/{self.agent['id']}").json(),
            "versions": self.a_get(f"/v1/agents/{self.agent['id']}/versions").json(),
            "session": self.a_get(f"/v1/sessions/{self.session['id']}").json(),
            "messages": self.a_get(f"/v1/sessions/{self.session['id']}/messages").json(),
            # last_used_at moves whenever A's key is used, so it is left out
            "key": key and {f: key[f] for f in ("id", "name", "role", "expires_at", "revoked_at")},
        }


@pytest.fixture
def world(client: TestClient, org: Org, other_org: Org) -> World:
    agent = org.create_agent(name="shared-name")
    session = org.create_session(str(agent["id"]), title="A's secret chat", metadata={"k": "v"})
    r = client.post("/v1/api-keys", json={"name": "A's ci key", "role": "member"}, headers=org.headers)
    assert r.status_code == 201, r.text
    # B uses the same agent name: names are unique per org, not across orgs
    b_agent = other_org.create_agent(name="shared-name")
    b_session = other_org.create_session(str(b_agent["id"]))
    return World(org, other_org, agent, session, r.json(), b_agent, b_session)


@pytest.fixture(params=["api-key", "jwt"])
def b_headers(request: pytest.FixtureRequest, world: World) -> dict[str, str]:
    """Org B's owner, by its owner API key or by an HS256 JWT."""
    if request.param == "api-key":
        return world.b.headers
    return {"Authorization": f"Bearer {mint_jwt(world.b.id)}"}


def test_b_credentials_work_on_b_own_resources(client: TestClient, world: World, b_headers: dict[str, str]) -> None:
    """The control for the 404s below: B's credentials are good, A's resources are just not B's."""
    me = client.get("/v1/me", headers=b_headers)
    assert me.status_code == 200, me.text
    assert me.json()["org_id"] == world.b.id
    assert client.get(f"/v1/agents/{world.b_agent['id']}", headers=b_headers).status_code == 200
    assert client.get(f"/v1/sessions/{world.b_session['id']}", headers=b_headers).status_code == 200


ID_ROUTES = [
    pytest.param("GET", "/v1/agents/{agent}", None, id="get-agent"),
    pytest.param("PATCH", "/v1/agents/{agent}", {"instructions": "Leak everything."}, id="patch-agent"),
    pytest.param("PATCH", "/v1/agents/{agent}", {"name": "renamed-by-b"}, id="rename-agent"),
    pytest.param("DELETE", "/v1/agents/{agent}", None, id="delete-agent"),
    pytest.param("GET", "/v1/agents/{agent}/versions", None, id="agent-versions"),
    pytest.param("GET", "/v1/sessions/{session}", None, id="get-session"),
    pytest.param("DELETE", "/v1/sessions/{session}", None, id="delete-session"),
    pytest.param("GET", "/v1/sessions/{session}/messages", None, id="session-messages"),
    pytest.param("DELETE", "/v1/api-keys/{key}", None, id="revoke-api-key"),
]


@pytest.mark.parametrize("method, template, body", ID_ROUTES)
def test_b_gets_404_on_every_id_route_of_a_and_changes_nothing(
    client: TestClient, world: World, b_headers: dict[str, str], method: str, template: str, body: Any
) -> None:
    before = world.a_snapshot()
    path = template.format(agent=world.agent["id"], session=world.session["id"], key=world.key["id"])

    err = assert_not_found(client.request(method, path, json=body, headers=b_headers))

    assert path.split("/")[3] in err["message"]  # the id B sent, and nothing of A's
    assert world.a_snapshot() == before
    assert before["agent"]["version"] == 1 and before["key"]["revoked_at"] is None


def test_b_cannot_revoke_a_key_of_a(client: TestClient, world: World, b_headers: dict[str, str]) -> None:
    assert_not_found(client.delete(f"/v1/api-keys/{world.key['id']}", headers=b_headers))
    r = client.get("/v1/me", headers={"Authorization": f"Bearer {world.key['key']}"})
    assert r.status_code == 200, r.text
    assert r.json()["org_id"] == world.a.id


def test_b_cannot_revoke_the_owner_key_of_a(client: TestClient, world: World, b_headers: dict[str, str]) -> None:
    owner_key = next(k for k in world.a_get("/v1/api-keys").json()["data"] if k["role"] == "owner")
    assert_not_found(client.delete(f"/v1/api-keys/{owner_key['id']}", headers=b_headers))
    assert world.a_get("/v1/me").status_code == 200


@pytest.mark.parametrize(
    "path, a_ids",
    [
        ("/v1/agents", lambda w: {w.agent["id"]}),
        ("/v1/sessions", lambda w: {w.session["id"]}),
        ("/v1/api-keys", lambda w: {w.key["id"]} | {k["id"] for k in w.a_get("/v1/api-keys").json()["data"]}),
    ],
    ids=["agents", "sessions", "api-keys"],
)
def test_b_lists_never_include_a_items(
    client: TestClient, world: World, b_headers: dict[str, str], path: str, a_ids: Any
) -> None:
    r = client.get(path, params={"limit": 200}, headers=b_headers)
    assert r.status_code == 200, r.text
    listed = {item["id"] for item in r.json()["data"]}
    assert listed, "B's own items should be listed"
    assert not listed & a_ids(world)
    assert r.json()["next_cursor"] is None


def test_b_lists_only_its_own_agents_and_sessions(client: TestClient, world: World, b_headers: dict[str, str]) -> None:
    agents = client.get("/v1/agents", headers=b_headers).json()["data"]
    sessions = client.get("/v1/sessions", headers=b_headers).json()["data"]
    assert [a["id"] for a in agents] == [world.b_agent["id"]]
    assert [s["id"] for s in sessions] == [world.b_session["id"]]


def test_b_filtering_sessions_by_an_agent_of_a_finds_nothing(
    client: TestClient, world: World, b_headers: dict[str, str]
) -> None:
    r = client.get("/v1/sessions", params={"agent_id": world.agent["id"]}, headers=b_headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"data": [], "next_cursor": None}


def test_b_paging_with_a_cursor_made_from_an_id_of_a_sees_only_b(
    client: TestClient, world: World, b_headers: dict[str, str]
) -> None:
    """A cursor is only a position; one built from A's newest id must not open A's rows."""
    newest = str(world.a.create_agent()["id"])
    past_newest = newest[:-16] + "f" * 16  # a well-formed id just after A's newest agent
    r = client.get("/v1/agents", params={"cursor": encode_cursor(past_newest)}, headers=b_headers)
    assert r.status_code == 200, r.text
    assert [a["id"] for a in r.json()["data"]] == [world.b_agent["id"]]


def test_b_cannot_start_a_session_on_an_agent_of_a(client: TestClient, world: World, b_headers: dict[str, str]) -> None:
    a_sessions_before = world.a_get("/v1/sessions").json()

    r = client.post("/v1/sessions", json={"agent_id": world.agent["id"]}, headers=b_headers)

    err = assert_not_found(r)
    assert err["details"] == {"field": "agent_id"}
    assert world.a_get("/v1/sessions").json() == a_sessions_before
    b_sessions = client.get("/v1/sessions", headers=b_headers).json()["data"]
    assert [s["id"] for s in b_sessions] == [world.b_session["id"]]


def test_b_cannot_name_an_agent_of_a_as_a_sub_agent_on_create(
    client: TestClient, world: World, b_headers: dict[str, str]
) -> None:
    r = client.post("/v1/agents", json={"name": "boss", "subagents": [world.agent["id"]]}, headers=b_headers)

    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "VALIDATION_FAILED"
    assert [f["field"] for f in err["details"]["fields"]] == ["subagents"]
    assert world.agent["id"] in err["details"]["fields"][0]["message"]
    assert [a["name"] for a in client.get("/v1/agents", headers=b_headers).json()["data"]] == ["shared-name"]


def test_b_cannot_name_an_agent_of_a_as_a_sub_agent_on_patch(
    client: TestClient, world: World, b_headers: dict[str, str]
) -> None:
    path = f"/v1/agents/{world.b_agent['id']}"
    r = client.patch(path, json={"subagents": [world.agent["id"]]}, headers=b_headers)

    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "VALIDATION_FAILED"
    assert world.agent["id"] in err["message"]
    assert client.get(path, headers=b_headers).json() == world.b_agent


def test_b_viewer_gets_the_same_403_for_an_agent_of_a_as_for_a_missing_one(client: TestClient, world: World) -> None:
    """The role is checked before the id is looked up, so a too-low role learns nothing about A."""
    viewer = {"Authorization": f"Bearer {mint_jwt(world.b.id, role='viewer')}"}
    r = client.delete(f"/v1/agents/{world.agent['id']}", headers=viewer)
    assert r.status_code == 403, r.text
    assert r.json()["error"]["code"] == "FORBIDDEN"
    # the same answer as for an agent id that exists nowhere
    r2 = client.delete(f"/v1/agents/{ids.new_id('agent')}", headers=viewer)
    assert (r2.status_code, r2.json()["error"]) == (r.status_code, r.json()["error"])
    assert world.a_get(f"/v1/agents/{world.agent['id']}").status_code == 200
