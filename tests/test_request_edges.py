"""Two quiet edges: a PATCH that changes nothing makes no new agent version, and a client that
hangs up mid-body is answered quietly (a 400, an INFO line) instead of an error with a traceback."""

from __future__ import annotations

import logging
from typing import Any

import anyio
import orjson
import pytest


def _versions(client, org, agent_id: str) -> list[int]:
    r = client.get(f"/v1/agents/{agent_id}/versions", headers=org.headers)
    return [v["version"] for v in r.json()["data"]]


@pytest.mark.parametrize("body", [{}, "same-values", "same-name-only"])
def test_a_patch_that_changes_nothing_keeps_the_version(client, org, body):
    agent = org.create_agent(instructions="Be brief.", skills=["remember"])
    if body == "same-values":
        body = {"instructions": "Be brief.", "skills": ["remember"], "mode": "agent"}
    elif body == "same-name-only":
        body = {"name": agent["name"]}
    r = client.patch(f"/v1/agents/{agent['id']}", json=body, headers=org.headers)
    assert r.status_code == 200, r.text
    assert r.json()["version"] == 1 and r.json()["updated_at"] == agent["updated_at"]
    assert _versions(client, org, str(agent["id"])) == [1]


def test_an_empty_body_without_content_type_keeps_the_version_too(client, org):
    agent = org.create_agent()
    r = client.request("PATCH", f"/v1/agents/{agent['id']}", content=b"", headers=org.headers)
    assert r.status_code == 200 and r.json()["version"] == 1


def test_a_patch_that_changes_something_still_bumps_the_version(client, org):
    agent = org.create_agent(instructions="Be brief.")
    r = client.patch(f"/v1/agents/{agent['id']}", json={"instructions": "Be thorough."}, headers=org.headers)
    assert r.json()["version"] == 2
    assert _versions(client, org, str(agent["id"])) == [2, 1]


def test_a_client_disconnecting_mid_body_is_not_logged_as_an_error(client, org, caplog):
    """Drive the ASGI app directly: the body's first half arrives, then the client is gone."""
    body = orjson.dumps({"name": "half-sent", "instructions": "x" * 2000})
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": body[:100], "more_body": True},
        {"type": "http.disconnect"},
    ]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/agents", "raw_path": b"/v1/agents", "root_path": "", "query_string": b"",
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), (b"authorization", f"Bearer {org.key}".encode())],
        "client": ("127.0.0.1", 50000), "server": ("testserver", 80),
        "state": client.app_state.copy(),  # what the lifespan yielded, as a server passes it on
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await anyio.sleep_forever()  # a gone client sends nothing more
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def drive() -> None:
        await client.app(scope, receive, send)

    with caplog.at_level(logging.DEBUG):
        client.portal.call(drive)
    assert sent[0]["type"] == "http.response.start" and sent[0]["status"] == 400
    assert orjson.loads(sent[1]["body"])["error"]["code"] == "BAD_REQUEST"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info], caplog.records
    assert any("disconnected" in r.getMessage() for r in caplog.records)
    names = [a["name"] for a in client.get("/v1/agents", headers=org.headers).json()["data"]]
    assert "half-sent" not in names
