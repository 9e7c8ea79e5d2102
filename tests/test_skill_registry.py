"""The skill registry: built-ins and an org's own skills with their schemas, versions written by
PATCH and kept, agents that follow the latest or pin one, and runs that keep the versions they
started with."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from starlette.testclient import TestClient

from core.db import open_pool
from core.settings import Settings
from core.skill_names import BUILTIN_SKILLS
from core.store import runs
from core.tenancy import tenant_tx
from tests.helpers import Org, Worker, error_of, start_run, stored_run, wait
from tests.sse import read_events

LOOKUP = {
    "name": "lookup",
    "description": "Look a customer up by id.",
    "parameters": {"type": "object", "properties": {"id": {"type": "integer"}}, "required": ["id"],
                   "additionalProperties": False},
    "url": "http://127.0.0.1:9/lookup",
    "headers": {"X-Team": "support", "Authorization": {"secret": "crm_token"}},
    "signing_secret": {"secret": "lookup_signing"},
}


def _create(org: Org, **fields: Any) -> dict[str, Any]:
    r = org.client.post("/v1/skills", json=LOOKUP | fields, headers=org.headers)
    assert r.status_code == 201, r.text
    return dict(r.json())


def test_the_catalogue_lists_builtins_and_the_orgs_skills_with_schemas(org: Org, client: TestClient):
    created = _create(org)
    assert (created["name"], created["version"], created["kind"], created["method"]) == ("lookup", 1, "http", "POST")
    listed = client.get("/v1/skills", headers=org.headers).json()["data"]
    names = [s["name"] for s in listed]
    assert names[:-1] == sorted(BUILTIN_SKILLS) and names[-1] == "lookup"
    file_manager = next(s for s in listed if s["name"] == "file_manager")
    assert file_manager["kind"] == "builtin" and file_manager["sensitive"] == "by_arguments"
    assert file_manager["parameters"]["properties"]["action"]["enum"] == ["list", "read", "write"]
    assert listed[-1]["parameters"] == LOOKUP["parameters"]
    assert listed[-1]["headers"] == {"X-Team": "support", "Authorization": {"secret": "crm_token"}}
    assert client.get("/v1/skills/recall", headers=org.headers).json()["kind"] == "builtin"


def test_patch_writes_a_new_version_and_keeps_the_old_one(org: Org, client: TestClient):
    _create(org)
    r = client.patch("/v1/skills/lookup", json={"description": "Find a customer."}, headers=org.headers)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 2 and r.json()["url"] == LOOKUP["url"]
    same = client.patch("/v1/skills/lookup", json={"description": "Find a customer."}, headers=org.headers)
    assert same.json()["version"] == 2  # nothing changed: no new version
    versions = client.get("/v1/skills/lookup/versions", headers=org.headers).json()["data"]
    assert [(v["version"], v["description"]) for v in versions] == [(2, "Find a customer."),
                                                                      (1, "Look a customer up by id.")]
    one = client.get("/v1/skills/lookup/versions/1", headers=org.headers)
    assert one.status_code == 200 and one.json()["description"] == "Look a customer up by id."
    error_of(client.get("/v1/skills/lookup/versions/3", headers=org.headers), 404, "NOT_FOUND")
    bad = client.patch("/v1/skills/lookup", json={"parameters": {"type": "array"}}, headers=org.headers)
    error_of(bad, 422, "VALIDATION_FAILED")
    assert client.get("/v1/skills/lookup", headers=org.headers).json()["version"] == 2


def test_a_deleted_name_made_again_goes_on_from_its_last_version(org: Org, client: TestClient):
    _create(org)
    client.patch("/v1/skills/lookup", json={"timeout_s": 3}, headers=org.headers)
    assert client.delete("/v1/skills/lookup", headers=org.headers).status_code == 204
    error_of(client.get("/v1/skills/lookup", headers=org.headers), 404, "NOT_FOUND")
    assert _create(org)["version"] == 3  # so "lookup@1" keeps meaning what it meant


def test_definitions_are_checked(org: Org, client: TestClient):
    for fields, where in [
        ({"name": "file_manager"}, "name"),
        ({"name": "mcp_github_search"}, "name"),
        ({"name": "Has-Dash"}, "name"),
        ({"parameters": {"type": "object", "properties": {"x": {"type": "nonsense"}}}}, "parameters"),
        ({"url": "ftp://example.com/x"}, "url"),
        ({"headers": {"Webhook-Signature": "forged"}}, "headers"),
        ({"headers": {"X-Key": {"secret": ""}}}, "headers"),
    ]:
        error = error_of(client.post("/v1/skills", json=LOOKUP | fields, headers=org.headers), 422,
                         "VALIDATION_FAILED")
        assert error["details"]["fields"][0]["field"].startswith(where), error
    _create(org)
    error_of(client.post("/v1/skills", json=LOOKUP, headers=org.headers), 409, "CONFLICT")
    error_of(client.patch("/v1/skills/file_manager", json={"description": "x"}, headers=org.headers), 409,
             "CONFLICT")
    member = {"Authorization": f"Bearer {org.key_with_role('member')}"}
    error_of(client.post("/v1/skills", json=LOOKUP | {"name": "other"}, headers=member), 403, "FORBIDDEN")
    assert client.get("/v1/skills/lookup", headers=member).status_code == 200


def test_another_orgs_skills_are_not_found(org: Org, other_org: Org, client: TestClient):
    _create(org)
    for method, path in [("GET", "/v1/skills/lookup"), ("PATCH", "/v1/skills/lookup"),
                         ("DELETE", "/v1/skills/lookup"), ("GET", "/v1/skills/lookup/versions"),
                         ("GET", "/v1/skills/lookup/versions/1")]:
        body = {"description": "mine now"} if method == "PATCH" else None
        error_of(client.request(method, path, json=body, headers=other_org.headers), 404, "NOT_FOUND")
    listed = client.get("/v1/skills", headers=other_org.headers).json()["data"]
    assert [s["name"] for s in listed] == sorted(BUILTIN_SKILLS)
    r = client.post("/v1/agents", json={"name": "thief", "skills": ["lookup"]}, headers=other_org.headers)
    error_of(r, 422, "VALIDATION_FAILED")
    assert client.get("/v1/skills/lookup", headers=org.headers).json()["version"] == 1


def test_agents_name_skills_that_exist_and_pin_versions_they_have(org: Org, client: TestClient):
    _create(org)
    for skills, message in [(["nope"], "unknown skill 'nope'"), (["lookup@2"], "is at version 1"),
                            (["file_manager@1"], "no versions"), (["lookup", "lookup@1"], "listed twice"),
                            (["look up"], "not a skill reference")]:
        r = client.post("/v1/agents", json={"name": "a", "skills": skills}, headers=org.headers)
        assert message in error_of(r, 422, "VALIDATION_FAILED")["message"], r.text
    agent = org.create_agent(skills=["lookup@1", "file_manager"])
    assert agent["skills"] == ["lookup@1", "file_manager"]


def _tool_calls(org: Org, run_id: str) -> list[dict[str, Any]]:
    events = read_events(org.client, f"/v1/runs/{run_id}/events", org.headers)
    return [e["data"] for e in events if e["type"] == "tool.call"]


def _when_running(org: Org, run_id: str) -> None:
    deadline = time.monotonic() + 30
    while org.client.get(f"/v1/runs/{run_id}", headers=org.headers).json()["status"] != "running":
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.05)


def test_a_run_keeps_the_versions_it_started_with_and_a_pin_holds(org: Org, client: TestClient, worker: Worker):
    _create(org)
    follower = org.create_agent(skills=["lookup"], confirm="none")
    pinned = org.create_agent(skills=["lookup@1"], confirm="none")
    session = org.create_session(str(follower["id"]))
    script = 'wait: 1.5\ncall: lookup {"id": 7}'
    before = start_run(org, str(session["id"]), script)
    _when_running(org, before["id"])
    r = client.patch("/v1/skills/lookup", json={"description": "Find a customer (v2)."}, headers=org.headers)
    assert r.json()["version"] == 2
    ended = wait(org, before["id"])
    assert ended["status"] == "succeeded" and ended["skill_versions"] == {"lookup": 1}
    [call] = _tool_calls(org, before["id"])
    assert (call["name"], call["skill_version"]) == ("lookup", 1)
    # The call itself fails (nothing listens on that port), and the model read why.
    assert "lookup failed" in ended["output"]["text"]

    after = wait(org, start_run(org, str(session["id"]), script)["id"])
    assert after["skill_versions"] == {"lookup": 2}
    assert _tool_calls(org, after["id"])[0]["skill_version"] == 2

    pinned_session = org.create_session(str(pinned["id"]))
    held = wait(org, start_run(org, str(pinned_session["id"]), script)["id"])
    assert _tool_calls(org, held["id"])[0]["skill_version"] == 1


def test_a_runs_resolution_is_recorded_once_and_read_back_by_later_attempts(org: Org, client: TestClient,
                                                                              settings: Settings):
    """What a run taken over after a crash does: it resolves again, and gets its first answer."""
    _create(org)
    agent = org.create_agent(skills=["lookup"])
    session = org.create_session(str(agent["id"]))

    run_id = stored_run(settings, org.id, str(agent["id"]), str(session["id"]))

    async def claim(owner: str) -> dict[str, int]:
        """Claim the run as a worker does (a zero lease: it lapses at once, as a crashed worker's)."""
        pool = await open_pool(settings.database)
        try:
            async with tenant_tx(pool, org.id) as conn:
                claimed = await runs.claim(conn, run_id, owner, 0, 60)
                assert isinstance(claimed, runs.Claimed)
                return dict(claimed.run["skill_versions"] or {})
        finally:
            await pool.close()

    assert asyncio.run(claim("first-worker")) == {"lookup": 1}
    client.patch("/v1/skills/lookup", json={"description": "Changed."}, headers=org.headers)
    assert asyncio.run(claim("second-worker")) == {"lookup": 1}
    assert client.get(f"/v1/runs/{run_id}", headers=org.headers).json()["skill_versions"] == {"lookup": 1}
