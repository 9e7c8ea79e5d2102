"""Reading server-sent events in tests, through the real HTTP stack."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.testclient import TestClient

from core.events import TERMINAL_TYPES


def read_events(
    client: TestClient, path: str, headers: dict[str, str], *, last_event_id: int | None = None,
    limit: int | None = None, method: str = "GET", json: Any = None, status: int = 200,
    response_headers: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Events of an SSE response until it ends (or `limit` events arrived); also checks that each
    event's `id:` and `event:` fields agree with its data. `response_headers`, when given, gets
    the response's headers."""
    request_headers = dict(headers)
    if last_event_id is not None:
        request_headers["Last-Event-ID"] = str(last_event_id)
    if method != "GET":
        request_headers.setdefault("Accept", "text/event-stream")
    found: list[dict[str, Any]] = []
    with client.stream(method, path, headers=request_headers, json=json) as response:
        assert response.status_code == status, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        if response_headers is not None:
            response_headers.update(response.headers)
        fields: dict[str, str] = {}
        for line in response.iter_lines():
            if line == "":
                if "data" in fields:
                    event = orjson.loads(fields["data"])
                    assert fields["id"] == str(event["seq"]) and fields["event"] == event["type"]
                    found.append(event)
                    if limit is not None and len(found) >= limit:
                        break
                fields = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value[1:] if value.startswith(" ") else value
    return found


def run_events(client: TestClient, headers: dict[str, str], run_id: str, **kwargs: Any) -> list[dict[str, Any]]:
    """A run's stream, through `GET /v1/runs/{id}/events` (see `read_events`)."""
    return read_events(client, f"/v1/runs/{run_id}/events", headers, **kwargs)


def assert_complete(events: list[dict[str, Any]], run_id: str) -> None:
    """One run's whole stream: gap-free seqs, all of this run, exactly one terminal event, last."""
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gap or repeat in {seqs}"
    assert {e["run_id"] for e in events} == {run_id}
    assert [e["type"] for e in events if e["type"] in TERMINAL_TYPES] == [events[-1]["type"]]
