"""A quiet stream still sends a comment line every `events.keepalive_s`, so proxies keep it open."""

from __future__ import annotations

import time

from starlette.testclient import TestClient

from api.app import create_app
from tests.helpers import make_settings, new_org


def test_an_idle_session_stream_sends_keepalive_comments(stack, rsa_keys):
    settings = make_settings(stack, rsa_keys, events={"keepalive_s": 0.2})
    with TestClient(create_app(settings)) as client:
        org = new_org(client)
        session = org.create_session(str(org.create_agent()["id"]))
        started = time.monotonic()
        comments = []
        with client.stream("GET", f"/v1/sessions/{session['id']}/events", headers=org.headers) as response:
            assert response.status_code == 200
            for line in response.iter_lines():
                if line.startswith(":"):
                    comments.append(line)
                if len(comments) == 2:
                    break
        assert len(comments) == 2 and time.monotonic() - started < 5
