"""Reading server-sent events in tests, through the real HTTP stack."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.testclient import TestClient


def read_events(
    client: TestClient, path: str, headers: dict[str, str], *, last_event_id: int | None = None,
    limit: int | None = None,
) -> list[dict[str, Any]]:
    """Events of an SSE response until it ends (or `limit` events arrived); also checks that each
    event's `id:` and `event:` fields agree with its data."""
    request_headers = dict(headers)
    if last_event_id is not None:
        request_headers["Last-Event-ID"] = str(last_event_id)
    found: list[dict[str, Any]] = []
    with client.stream("GET", path, headers=request_headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
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
