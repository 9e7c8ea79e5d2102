"""Many idle SSE streams on one API process (a real uvicorn server) share the process's event hub:
Redis connections stay bounded, nothing logs "Too many connections", and an event published
while they idle reaches every one of them. The figures for 2,000 streams are in bench/sse.py."""

from __future__ import annotations

import asyncio
import logging
import resource
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from agentos.stack.local import StackUrls
from agentos.stack.redis import EmbeddedRedis
from api.app import create_app
from core import event_hub
from tests.helpers import ADMIN_TOKEN, RsaKeys, Served, make_settings, serving, until

STREAMS = 300
SESSIONS = 100
# The API's own Redis client (auth rate checks, publishing) is a bounded pool besides the hub's
# connections; the test gives it this many, far fewer than the streams: were a stream to hold a
# pool connection while idle, the later streams could not open (the pool blocks) and the test
# would time out. Idle streams are the hub's alone.
OTHER_CONNECTIONS = 20


def _raise_open_files(needed: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard) if hard != resource.RLIM_INFINITY else needed,
                                                    hard))


def _api_connections(client: redis.Redis) -> list[dict[str, Any]]:
    me = client.client_id()
    return [c for c in client.client_list() if int(c["id"]) != me]


def _followers(served: Served) -> int:
    try:
        return int(served.state["api"].events.followers)
    except (KeyError, AttributeError, RuntimeError):  # not started yet, or counted while it changed
        return -1


async def _idle_then_one_event(base: str, key: str, sessions: list[str], served: Served,
                               inspect: redis.Redis) -> tuple[list[dict[str, Any]], list[str]]:
    """Open STREAMS streams over `sessions`, let them idle, count Redis connections, then start a
    run in each session: every stream must receive that run's `run.queued`."""
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=STREAMS + 20, max_keepalive_connections=STREAMS + 20)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client, AsyncExitStack() as stack:
        opening = asyncio.Semaphore(50)

        async def open_stream(session_id: str) -> Any:
            async with opening:
                response = await stack.enter_async_context(
                    client.stream("GET", f"/v1/sessions/{session_id}/events", headers=headers))
                assert response.status_code == 200, await response.aread()
                return response

        targets = [sessions[i % len(sessions)] for i in range(STREAMS)]
        responses = await asyncio.gather(*(open_stream(s) for s in targets))
        await asyncio.to_thread(until, lambda: _followers(served) == STREAMS)
        assert _followers(served) == STREAMS
        idle = _api_connections(inspect)

        async def first_event(response: Any) -> str:
            async for line in response.aiter_lines():
                if line.startswith("data:"):
                    return str(orjson.loads(line[5:])["type"])
            return "ended"

        readers = [asyncio.create_task(first_event(r)) for r in responses]
        try:
            for session_id in sessions:
                r = await client.post(f"/v1/sessions/{session_id}/runs", json={"input": "hi"}, headers=headers)
                assert r.status_code == 202, r.text
            kinds = await asyncio.gather(*readers)
        finally:
            for reader in readers:
                reader.cancel()
            await asyncio.gather(*readers, return_exceptions=True)
    return idle, kinds


@pytest.mark.timeout(180)
def test_hundreds_of_idle_streams_use_a_bounded_number_of_redis_connections(
    stack: StackUrls, rsa_keys: RsaKeys, tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    _raise_open_files(4 * STREAMS + 256)
    own_redis = EmbeddedRedis(tmp_path, durable=False)  # so every other client on it is the API
    own_redis.start()
    inspect = redis.Redis.from_url(own_redis.url)
    try:
        app = create_app(make_settings(stack, rsa_keys,
                                       redis={"url": own_redis.url, "max_connections": OTHER_CONNECTIONS},
                                       limits={"max_active_runs": 10 * SESSIONS}))
        with caplog.at_level(logging.INFO), serving(app) as served:
            base = served.url
            with httpx.Client(base_url=base, timeout=30) as http:
                r = http.post("/v1/orgs", json={"name": "many streams"},
                              headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
                key = r.json()["api_key"]["key"]
                headers = {"Authorization": f"Bearer {key}"}
                agent = http.post("/v1/agents", json={"name": "idle", "instructions": "-"}, headers=headers).json()
                sessions = [http.post("/v1/sessions", json={"agent_id": agent["id"]}, headers=headers).json()["id"]
                            for _ in range(SESSIONS)]
            idle, kinds = asyncio.run(_idle_then_one_event(base, key, sessions, served, inspect))
        hub = [c for c in idle if c.get("name") == event_hub.CLIENT_NAME]
        assert 1 <= len(hub) <= event_hub.CONNECTIONS, hub
        assert len(idle) <= event_hub.CONNECTIONS + OTHER_CONNECTIONS, [(c.get("name"), c.get("cmd")) for c in idle]
        assert kinds == ["run.queued"] * STREAMS
        # What the API process logged (asyncio's own reports of clients that other tests left to
        # the garbage collector are not this test's business).
        ours = [r for r in caplog.records if r.name.startswith(("agentos", "uvicorn", "redis"))]
        noisy = [r for r in ours if r.levelno >= logging.ERROR or "Too many connections" in r.getMessage()
                 or (r.name == "agentos.events" and r.levelno >= logging.WARNING)]
        noisy += [r for r in caplog.records if "Too many connections" in r.getMessage() and r not in noisy]
        assert noisy == [], [r.getMessage() for r in noisy[:5]]
    finally:
        inspect.close()
        own_redis.stop()
