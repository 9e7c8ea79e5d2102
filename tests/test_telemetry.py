"""Telemetry across real processes: an `agentos api` process and an `agentos worker` process
(prefork) export spans over OTLP/HTTP to a stub collector on 127.0.0.1, serve `/metrics`, and log
JSON lines. They share the test Postgres and use a Redis of their own, so no other test's worker
takes their runs and the broker's queue is theirs alone."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agentos.stack.local import StackUrls
from agentos.stack.process import ServerProcess, free_port
from agentos.stack.redis import EmbeddedRedis
from tests.helpers import ADMIN_TOKEN, api_process, open_loopback, running_worker
from tests.openai_server import OpenAIServer
from tests.otlp_collector import CollectedSpan, OtlpCollector

METRICS_TOKEN = "test-metrics-token-" + secrets.token_hex(8)
SECRET_WORDS = "zebra-marmalade-" + secrets.token_hex(4)  # message content that must not leak


@dataclass
class Traced:
    api_url: str
    collector: OtlpCollector
    base: Path
    worker: ServerProcess  # prefork, 2 slots; its parent serves /metrics on `metrics_port`
    metrics_port: int

    @property
    def worker_log(self) -> Path:
        return self.base / "worker" / "worker.log"

    def restart_worker(self) -> None:
        ready = self.worker.log_tail(10_000).count(" ready.")
        self.worker.start()
        self.worker.wait_until(lambda: self.worker.log_tail(10_000).count(" ready.") > ready, timeout_s=90)


@pytest.fixture(scope="module")
def traced(stack: StackUrls, openai_server: OpenAIServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    base = tmp_path_factory.mktemp("telemetry")
    (base / "worker").mkdir()
    redis = EmbeddedRedis(base / "redis", durable=False)
    redis.start()
    collector = OtlpCollector().start()
    own = StackUrls(database_url=stack.database_url, redis_url=redis.url)
    port, metrics_port = free_port(), free_port()
    env = {"AGENTOS_TELEMETRY__OTLP_ENDPOINT": collector.url, "OTEL_BSP_SCHEDULE_DELAY": "100",
           "AGENTOS_TELEMETRY__METRICS_TOKEN": METRICS_TOKEN}
    api = api_process(base / "api.log", own, port, extra_env=env)
    api.start()
    try:
        url = f"http://127.0.0.1:{port}"
        api.wait_until(lambda: _ready(url), timeout_s=60)
        worker_env = env | {"AGENTOS_TELEMETRY__METRICS_PORT": str(metrics_port)}
        with running_worker(own, openai_server, base / "worker", extra_env=worker_env) as worker:
            yield Traced(url, collector, base, worker.process, metrics_port)
    finally:
        api.stop()
        collector.stop()
        redis.stop()


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


@dataclass
class Tenant:
    http: httpx.Client
    org_id: str
    session_id: str


def _tenant(traced: Traced) -> Tenant:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    r = httpx.post(f"{traced.api_url}/v1/orgs", json={"name": f"telemetry {secrets.token_hex(4)}"}, headers=admin)
    assert r.status_code == 201, r.text
    body = r.json()
    http = httpx.Client(base_url=traced.api_url, headers={"Authorization": f"Bearer {body['api_key']['key']}"},
                        timeout=60)
    agent = http.post("/v1/agents", json={"name": "traced", "model": "offline:default", "skills": ["file_manager"],
                                          "confirm": "none"})
    assert agent.status_code == 201, agent.text
    session = http.post("/v1/sessions", json={"agent_id": agent.json()["id"]})
    assert session.status_code == 201, session.text
    return Tenant(http, body["org"]["id"], session.json()["id"])


def _wait(tenant: Tenant, run_id: str) -> dict[str, Any]:
    r = tenant.http.get(f"/v1/runs/{run_id}/wait?timeout=50")
    assert r.status_code == 200, r.text
    return dict(r.json())


def _until_waiting(tenant: Tenant, run_id: str) -> None:
    deadline = time.monotonic() + 50
    while tenant.http.get(f"/v1/runs/{run_id}").json()["status"] != "awaiting_confirmation":
        assert time.monotonic() < deadline, "the run never waited for a human"
        time.sleep(0.1)


def _by_id(spans: list[CollectedSpan]) -> dict[str, CollectedSpan]:
    return {s.span_id: s for s in spans}


def _ancestors(span: CollectedSpan, by_id: dict[str, CollectedSpan]) -> list[str]:
    names = []
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        names.append(span.name)
    return names


def test_one_trace_from_the_post_to_respond(traced: Traced) -> None:
    tenant = _tenant(traced)
    caller_trace, caller_span = secrets.token_hex(16), secrets.token_hex(8)
    r = tenant.http.post(f"/v1/sessions/{tenant.session_id}/runs",
                         json={"input": f'call: file_manager {{"action": "list"}}\n{SECRET_WORDS}'},
                         headers={"traceparent": f"00-{caller_trace}-{caller_span}-01"})
    assert r.status_code == 202, r.text
    run = r.json()
    # The caller's trace is honoured: the run's trace id is the real one, in body and header.
    assert run["trace_id"] == caller_trace
    assert r.headers["AgentOS-Trace-Id"] == caller_trace
    assert _wait(tenant, run["id"])["status"] == "succeeded"
    # The delivery's span ends last (its children end first): once it is in, the trace is whole.
    spans = traced.collector.wait_for(caller_trace, "process agentos.runs")

    by_id = _by_id(spans)
    named = {s.name: s for s in spans}
    server = named["POST /v1/sessions/{session_id}/runs"]
    assert server.kind == "SERVER" and server.parent_span_id == caller_span and server.service == "agentos-api"
    producer = named["send agentos.runs"]
    assert producer.kind == "PRODUCER" and server.name in _ancestors(producer, by_id)
    consumer = named["process agentos.runs"]
    assert consumer.kind == "CONSUMER" and consumer.parent_span_id == producer.span_id
    assert consumer.service == "agentos-worker"
    for step in ("think", "act", "respond"):
        span = named[f"agentos.step {step}"]
        assert consumer.name in _ancestors(span, by_id), (step, _ancestors(span, by_id))

    chats = [s for s in spans if s.name == "chat default"]
    assert len(chats) == 2  # the tool call, then the answer
    for chat in chats:
        assert chat.kind == "CLIENT" and by_id[chat.parent_span_id].name == "agentos.step think"
        assert chat.attributes["gen_ai.system"] == "offline"
        assert chat.attributes["gen_ai.request.model"] == "default"
        assert chat.attributes["gen_ai.usage.input_tokens"] > 0
        assert chat.attributes["gen_ai.usage.output_tokens"] > 0
    tool = named["execute_tool file_manager"]
    assert by_id[tool.parent_span_id].name == "agentos.step act"
    assert tool.attributes["gen_ai.tool.name"] == "file_manager"

    # Postgres and Redis spans of the contrib instrumentations, inside the run's trace.
    systems = {s.attributes.get("db.system") or s.attributes.get("db.system.name") for s in spans}
    assert {"postgresql", "redis"} <= systems, systems

    # Every span of the worker's delivery names the org and run; from the moment the run's row
    # is read, also its session and agent (ours and the libraries' spans alike).
    ours = [consumer, *chats, tool, *(s for s in spans if s.name.startswith("agentos.step"))]
    claimed = [s for s in spans if s.service == "agentos-worker" and s.attributes.get("agentos.session_id")]
    assert len(claimed) > len(ours)  # Postgres and Redis spans of the run's steps too
    for span in spans:
        if span.service == "agentos-worker":
            assert span.attributes.get("agentos.run_id") == run["id"], span
            assert span.attributes.get("agentos.org_id") == tenant.org_id, span
    for span in [*ours, *claimed]:
        assert span.attributes.get("agentos.session_id") == tenant.session_id, span
        assert span.attributes.get("agentos.agent_id") == run["agent_id"], span
    for span in (server, producer):
        assert span.attributes["agentos.run_id"] == run["id"] and span.attributes["agentos.org_id"] == tenant.org_id

    # No message content anywhere.
    assert SECRET_WORDS not in json.dumps([s.attributes for s in spans], default=str)

    # (c) JSON logs of both processes carry the run's trace id and run id.
    assert _logged(traced.base / "api.log", run["id"], caller_trace)
    assert _logged(traced.worker_log, run["id"], caller_trace)
    assert SECRET_WORDS not in traced.worker_log.read_text()
    assert SECRET_WORDS not in (traced.base / "api.log").read_text()


def test_an_org_providers_key_is_in_no_span(traced: Traced, stack: StackUrls) -> None:
    """A run on an org's own provider, once refused (wrong key: the provider's error passes
    through the model-call span) and once answered: its key is in nothing exported."""
    tenant = _tenant(traced)
    open_loopback(stack, tenant.org_id)
    key = "org-provider-key-" + secrets.token_hex(8)
    with OpenAIServer() as server:
        server.api_key = key
        for given, status in ((key[::-1], "failed"), (key, "succeeded")):
            provider = tenant.http.post("/v1/providers", json={
                "name": f"own{status[:4]}", "kind": "openai_compatible", "base_url": server.base_url, "api_key": given})
            assert provider.status_code == 201, provider.text
            agent = tenant.http.post("/v1/agents", json={"name": f"own-{status}",
                                                         "model": f"own{status[:4]}:test-model"})
            assert agent.status_code == 201, agent.text
            session = tenant.http.post("/v1/sessions", json={"agent_id": agent.json()["id"]}).json()
            run = tenant.http.post(f"/v1/sessions/{session['id']}/runs", json={"input": "hello"}).json()
            assert _wait(tenant, run["id"])["status"] == status
            spans = traced.collector.wait_for(run["trace_id"], "process agentos.runs")
            assert any(s.name.startswith("chat ") for s in spans)
    exported = b"".join(traced.collector.raw)
    assert run["id"].encode() in exported  # the scan sees what the spans carry
    assert key.encode() not in exported and key[::-1].encode() not in exported
    assert key not in traced.worker_log.read_text() and key not in (traced.base / "api.log").read_text()


def _logged(path: Path, run_id: str, trace_id: str) -> bool:
    for line in path.read_text().splitlines():
        if not line.startswith("{"):
            continue
        record = json.loads(line)
        assert {"timestamp", "level", "logger", "message"} <= set(record)
        if record.get("run_id") == run_id and record.get("trace_id") == trace_id and record.get("org_id"):
            return True
    return False


def test_a_resumed_run_continues_its_trace(traced: Traced) -> None:
    tenant = _tenant(traced)
    agent = tenant.http.post("/v1/agents", json={"name": "asks", "model": "offline:default",
                                                 "skills": ["file_manager"], "confirm": ["file_manager"]})
    session = tenant.http.post("/v1/sessions", json={"agent_id": agent.json()["id"]}).json()
    run = tenant.http.post(f"/v1/sessions/{session['id']}/runs",
                           json={"input": 'call: file_manager {"action": "list"}'}).json()
    _until_waiting(tenant, run["id"])
    pending = tenant.http.get("/v1/tool-calls?status=pending").json()["data"]
    approved = tenant.http.post(f"/v1/tool-calls/{pending[0]['id']}/approve", json={})
    assert approved.status_code == 200, approved.text
    assert _wait(tenant, run["id"])["status"] == "succeeded"
    spans = traced.collector.wait_for(run["trace_id"], "agentos.run.resumed")  # ends after its steps
    resumed = [s for s in spans if s.name == "agentos.run.resumed"]
    assert len(resumed) == 1
    # Its parent is the POST's span; its link is the approving request's delivery.
    post = next(s for s in spans if s.name == "POST /v1/sessions/{session_id}/runs")
    assert resumed[0].parent_span_id == post.span_id
    assert resumed[0].links and resumed[0].links[0][0] != run["trace_id"]
    respond = next(s for s in spans if s.name == "agentos.step respond")
    assert "agentos.run.resumed" in _ancestors(respond, _by_id(spans))


def _scrape(url: str, token: str | None = METRICS_TOKEN) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    r = httpx.get(url, headers=headers, timeout=10)
    assert r.status_code == 200, r.text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(r.text):
        for sample in family.samples:
            key = sample.name + (json.dumps(sample.labels, sort_keys=True) if sample.labels else "")
            samples[key] = sample.value
    return samples


def _total(samples: dict[str, float], name: str, **labels: str) -> float:
    out = 0.0
    for key, value in samples.items():
        base, _, raw = key.partition("{")
        if base != name:
            continue
        got = json.loads("{" + raw) if raw else {}
        if all(got.get(k) == v for k, v in labels.items()):
            out += value
    return out


def test_metrics_is_not_public(traced: Traced) -> None:
    assert httpx.get(f"{traced.api_url}/metrics").status_code == 401
    assert httpx.get(f"{traced.api_url}/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_queue_depth_rises_while_workers_are_stopped_and_falls_after(traced: Traced) -> None:
    tenant = _tenant(traced)
    sessions = [tenant.http.post("/v1/sessions", json={"agent_id": _agent_of(tenant)}).json()["id"]
                for _ in range(3)]
    worker_before = _scrape(f"http://127.0.0.1:{traced.metrics_port}/metrics")
    traced.worker.stop()
    before = _scrape(f"{traced.api_url}/metrics")
    runs = [tenant.http.post(f"/v1/sessions/{s}/runs", json={"input": "hello"}).json() for s in sessions]
    waiting = _scrape(f"{traced.api_url}/metrics")
    assert _total(waiting, "agentos_queue_depth") >= _total(before, "agentos_queue_depth") + 3
    assert _total(waiting, "agentos_broker_queue_length") == 3  # this Redis is the test's own
    assert _total(waiting, "agentos_queue_oldest_age_seconds") > 0
    assert _total(waiting, "agentos_runs_created_total") >= _total(before, "agentos_runs_created_total") + 3
    assert _total(waiting, "agentos_http_requests_total", method="POST", route="/v1/sessions/{session_id}/runs",
                  status="202") >= 3

    traced.restart_worker()
    for run in runs:
        assert _wait(tenant, run["id"])["status"] == "succeeded"
    after = _scrape(f"{traced.api_url}/metrics")
    worker = _scrape(f"http://127.0.0.1:{traced.metrics_port}/metrics")
    assert _total(after, "agentos_queue_depth") <= _total(before, "agentos_queue_depth")
    assert _total(after, "agentos_broker_queue_length") == 0
    # The (restarted) worker's parent serves what its prefork children counted.
    assert worker_before and _total(worker, "agentos_runs_finished_total", status="succeeded") >= 3
    assert _total(worker, "agentos_model_tokens_total", provider="offline", direction="input") > 0
    assert _total(worker, "agentos_model_call_duration_seconds_count", provider="offline") >= 3
    assert _total(worker, "agentos_run_time_to_first_event_seconds_count") >= 3
    assert not any("org_id" in key for key in {**after, **worker})  # no org label unless allowed


def _agent_of(tenant: Tenant) -> str:
    return str(tenant.http.get(f"/v1/sessions/{tenant.session_id}").json()["agent_id"])


def test_worker_metrics_count_skill_calls(traced: Traced) -> None:
    tenant = _tenant(traced)
    url = f"http://127.0.0.1:{traced.metrics_port}/metrics"
    before = _scrape(url)
    run = tenant.http.post(f"/v1/sessions/{tenant.session_id}/runs",
                           json={"input": 'call: file_manager {"action": "read", "path": "missing.txt"}'}).json()
    assert _wait(tenant, run["id"])["status"] == "succeeded"
    after = _scrape(url)
    for name in ("agentos_skill_calls_total", "agentos_skill_errors_total"):
        assert _total(after, name, skill="file_manager") == _total(before, name, skill="file_manager") + 1




def test_tracing_is_off_and_free_unless_configured(client: Any) -> None:
    """The in-process test API has no OTLP endpoint: no SDK provider, no spans, no headers injected."""
    from opentelemetry import trace
    from opentelemetry.trace import ProxyTracerProvider

    from core.telemetry import tracing

    assert client.get("/healthz").status_code == 200
    assert tracing.ON is False
    assert isinstance(trace.get_tracer_provider(), ProxyTracerProvider)
    assert tracing.inject() == {} and tracing.current_span() is None
    with tracing.span("anything") as span:
        assert span is None


def test_the_sample_dashboard_names_only_metrics_that_exist(client: Any) -> None:
    import re

    from prometheus_client import REGISTRY

    from api.routes import metrics as metrics_route
    from core.telemetry import metrics

    metrics.get()
    metrics_route._queue_gauges()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}
    defined = {family.name + suffix for family in REGISTRY.collect() if family.name.startswith("agentos_")
               for suffix in suffixes.get(family.type, ("",))}
    dashboard = (Path(__file__).parent.parent / "docs" / "grafana" / "agentos.json").read_text()
    used = set(re.findall(r"agentos_[a-z_]+", dashboard))
    assert used and used <= defined, used - defined


def test_the_api_serves_metrics_on_a_private_port_without_a_token(stack: StackUrls, tmp_path: Path) -> None:
    """No token, a metrics port: `/metrics` answers there (for scrapers that send no header, e.g.
    a platform's built-in one) and stays 404 on the public port."""
    port, metrics_port = free_port(), free_port()
    api = api_process(tmp_path / "api.log", stack, port,
                      extra_env={"AGENTOS_TELEMETRY__METRICS_PORT": str(metrics_port)})
    api.start()
    try:
        url = f"http://127.0.0.1:{port}"
        api.wait_until(lambda: _ready(url), timeout_s=60)
        assert httpx.get(f"{url}/metrics").status_code == 404
        samples = _scrape(f"http://127.0.0.1:{metrics_port}/metrics", token=None)
        assert "agentos_queue_depth" in samples
    finally:
        api.stop()
