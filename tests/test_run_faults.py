"""How a run's execution treats failures that are not the run's fault: a bug in our own code ends
the run `failed` `INTERNAL` at once (never retried as if Postgres were down), while Postgres
going away mid-step is waited out and the step re-run, so the run still succeeds."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from agentos.stack.process import ServerProcess
from agentos.stack.redis import EmbeddedRedis
from agentos.stack.worker import worker_process
from api.app import create_app
from core.infra import INFRA_ERRORS, is_infra_error
from core.settings import Settings
from core.store import agents, runs
from core.tenancy import tenant_tx
from runtime.celery_app import AgentTask
from runtime.executor import execute_run
from runtime.services import Services
from tests.helpers import Org, RsaKeys, make_settings, new_org
from tests.sse import read_events
from tests.tcp_proxy import TcpProxy


class ExplodingGraph:
    """The real graph, except that running it hits a bug."""

    def __init__(self, graph: Any) -> None:
        self._graph = graph

    async def aget_state(self, config: Any) -> Any:
        return await self._graph.aget_state(config)

    async def ainvoke(self, *args: Any, **kwargs: Any) -> Any:
        raise ZeroDivisionError("a bug in a node")


async def _queued_run(svc: Services, org: Org, session: dict[str, Any]) -> str:
    """A queued run stored without being sent to any worker (the suite's worker may be running)."""
    async with tenant_tx(svc.pool, org.id) as conn:
        await runs.lock_session(conn, str(session["id"]))
        agent = await agents.get(conn, str(session["agent_id"]))
        assert agent is not None
        created = await runs.create(conn, session_id=str(session["id"]), text="hello", multitask="enqueue",
                                    metadata={}, idempotency_key=None, request_hash="-", created_by=None)
    return created.run["id"]


def test_a_bug_inside_the_graph_fails_the_run_internal_on_its_first_attempt(
    settings: Settings, org: Org, client: TestClient, caplog: pytest.LogCaptureFixture
):
    session = org.create_session(str(org.create_agent()["id"]))

    async def go() -> tuple[str, Any]:
        svc = await Services.open(settings)
        try:
            run_id = await _queued_run(svc, org, session)
            exploding = dataclasses.replace(svc, graph=ExplodingGraph(svc.graph))
            delivery = await execute_run(exploding, run_id, org.id)
            return run_id, delivery
        finally:
            await svc.close()

    with caplog.at_level(logging.ERROR, logger="agentos.worker"):
        run_id, delivery = asyncio.run(go())
    assert delivery.outcome == "failed" and delivery.retry_after_s is None
    run = client.get(f"/v1/runs/{run_id}", headers=org.headers).json()
    assert run["status"] == "failed" and run["attempt"] == 1
    assert run["error"]["code"] == "INTERNAL" and "ZeroDivisionError" in run["error"]["message"]
    logged = [r for r in caplog.records if r.exc_info and r.exc_info[0] is ZeroDivisionError]
    assert logged, "the bug is logged with its traceback"


def test_only_infrastructure_errors_are_retried_by_the_tasks():
    assert set(AgentTask.autoretry_for) == set(INFRA_ERRORS)
    assert not any(issubclass(ZeroDivisionError, kind) or issubclass(KeyError, kind) for kind in INFRA_ERRORS)
    # Not all of OSError: a run's deadline is a TimeoutError, and a missing file is a bug.
    assert not is_infra_error(TimeoutError()) and not is_infra_error(FileNotFoundError())
    assert is_infra_error(ConnectionRefusedError())
    try:
        try:
            raise ConnectionResetError("postgres went away")
        except ConnectionResetError as exc:
            raise RuntimeError("a library wrapped it") from exc
    except RuntimeError as wrapped:
        assert is_infra_error(wrapped)


def _through(proxy: TcpProxy, database_url: str) -> str:
    parts = urlsplit(database_url)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{proxy.port}"
    return urlunsplit(parts._replace(netloc=netloc))


@pytest.mark.timeout(150)
def test_a_postgres_outage_mid_run_is_waited_out_and_the_run_succeeds(
    stack: StackUrls, rsa_keys: RsaKeys, tmp_path: Path
):
    """Regression: an 8-second Postgres outage failed an in-flight run `INTERNAL` (the LangGraph
    checkpoint write raised OperationalError). The worker reaches Postgres through a proxy that
    the test takes down; the API and the rest of the suite are untouched. A Redis of its own
    keeps the suite's worker from taking the run."""
    port = urlsplit(stack.database_url).port
    assert port is not None
    redis = EmbeddedRedis(tmp_path, durable=False)
    redis.start()
    settings = make_settings(stack, rsa_keys, redis={"url": redis.url})
    with TcpProxy(port) as proxy:
        worker = worker_process(
            tmp_path / "worker.log", database_url=_through(proxy, stack.database_url), redis_url=redis.url,
            workspace_root=tmp_path / "ws", concurrency=1,
            extra_env={"AGENTOS_ENV": "test", "AGENTOS_WORKER__LEASE_S": "3", "AGENTOS_WORKER__HEARTBEAT_S": "0.5",
                       "AGENTOS_DATABASE__CONNECT_TIMEOUT_S": "2"},
        )
        worker.start()
        try:
            worker.wait_until(lambda: " ready." in worker.log_tail(200), timeout_s=60)
            with TestClient(create_app(settings)) as client:
                org = new_org(client)
                _outage_mid_run(client, org, proxy, worker)
        finally:
            worker.stop()
            redis.stop()


def _outage_mid_run(client: TestClient, org: Org, proxy: TcpProxy, worker: ServerProcess) -> None:
    agent = org.create_agent(skills=["file_manager"], confirm="none")
    session = org.create_session(str(agent["id"]))
    script = 'call: file_manager {"action": "write", "path": "once.txt", "content": "1"}\n' \
             "wait: 5\n" \
             'call: file_manager {"action": "list"}'
    r = client.post(f"/v1/sessions/{session['id']}/runs", json={"input": script}, headers=org.headers)
    assert r.status_code == 202, r.text
    run_id = r.json()["id"]
    # The write happened and the model sits in `wait: 5`: Postgres goes away for 8 s, so the
    # step ends (and writes its checkpoint) while it is away.
    first = read_events(client, f"/v1/runs/{run_id}/events", org.headers, limit=8)
    assert [e["type"] for e in first][-2:] == ["tool.result", "step.started"], first
    proxy.down()
    made = client.get(f"/v1/runs/{run_id}/tool-calls", headers=org.headers).json()["data"]
    assert [c["args"]["action"] for c in made] == ["write"], "the step ended before the outage began"
    time.sleep(8)
    proxy.up()
    final = client.get(f"/v1/runs/{run_id}/wait?timeout=60", headers=org.headers).json()
    assert final["status"] == "succeeded", (final, worker.log_tail(40))
    assert final["attempt"] == 1, "waited out in the same delivery, not failed and retried"
    events = read_events(client, f"/v1/runs/{run_id}/events", org.headers)
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "no gap"
    types = [e["type"] for e in events]
    assert [t for t in types if t in ("run.succeeded", "run.failed", "run.timed_out")] == ["run.succeeded"]
    calls = [e["data"]["args"]["action"] for e in events if e["type"] == "tool.call"]
    assert calls.count("write") == 1, calls
    assert "a step failed for lack of Postgres/Redis" in worker.log_tail(400)
