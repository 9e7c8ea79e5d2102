"""Prometheus metrics (prometheus-client), made once per process on first use.

Who records what: the API counts runs created, HTTP requests and open SSE streams, and at scrape
time reads the queue from Postgres and Redis (`QueueCollector` in `api/routes/metrics.py`);
whoever ends a run (worker, cancel, watchdog) counts it finished with its duration; workers
count model tokens and latency, skill calls and errors, sandbox executions.

Prefork workers use the client's multiprocess mode: the parent calls `use_multiprocess()` before
it forks (each child then writes its values to files in `PROMETHEUS_MULTIPROC_DIR`) and serves
the sum of all children on a side port (`serve`). The metrics are made lazily (`get()`) so that
children make theirs after the fork, with the multiprocess value class.

No label carries an org id unless `AGENTOS_TELEMETRY__METRICS_ORG_LABEL` is true.
"""

from __future__ import annotations

import hmac
import logging
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

from core.settings import TelemetrySettings

log = logging.getLogger("agentos.telemetry")

# Runs take seconds to minutes; model calls and skills, milliseconds to a minute.
RUN_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
CALL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """Every metric of AgentOS. `org` is True when metrics may carry the org id as a label."""

    def __init__(self, org_label: bool = False) -> None:
        self.org_label = org_label
        org = ("org_id",) if org_label else ()
        self.runs_created = Counter("agentos_runs_created", "Runs created (POST), by agent.", ("agent_id", *org))
        self.runs_finished = Counter("agentos_runs_finished", "Runs that ended, by terminal status and agent.",
                                     ("status", "agent_id", *org))
        self.run_duration = Histogram("agentos_run_duration_seconds", "From a run's creation to its end.",
                                      ("status",), buckets=RUN_BUCKETS)
        self.time_to_first_event = Histogram(
            "agentos_run_time_to_first_event_seconds",
            "From a run's creation to `run.started`, the first event after `run.queued` (its wait for a worker).",
            buckets=RUN_BUCKETS)
        self.model_tokens = Counter("agentos_model_tokens", "Model tokens, by provider, model and direction.",
                                    ("provider", "model", "direction", *org))
        self.model_calls = Counter("agentos_model_calls", "Model calls, by provider, model and outcome.",
                                   ("provider", "model", "outcome"))
        self.model_latency = Histogram("agentos_model_call_duration_seconds", "Model calls, whole response.",
                                       ("provider", "model"), buckets=CALL_BUCKETS)
        self.skill_calls = Counter("agentos_skill_calls", "Skill calls, by skill.", ("skill",))
        self.skill_errors = Counter("agentos_skill_errors", "Skill calls that failed, by skill.", ("skill",))
        self.skill_latency = Histogram("agentos_skill_call_duration_seconds", "Skill calls.", ("skill",),
                                       buckets=CALL_BUCKETS)
        self.sandbox_executions = Counter("agentos_sandbox_executions", "Sandbox executions, by outcome.",
                                          ("outcome",))
        self.http_requests = Counter("agentos_http_requests", "HTTP requests, by method, route template and status.",
                                     ("method", "route", "status"))
        self.http_latency = Histogram("agentos_http_request_duration_seconds", "HTTP requests, until the response "
                                      "started.", ("method", "route"), buckets=HTTP_BUCKETS)
        self.sse_open = Gauge("agentos_sse_connections", "SSE streams open.", multiprocess_mode="livesum")

    def org(self, org_id: str) -> tuple[str, ...]:
        """The org label value(s) to append, if org labels are allowed."""
        return (org_id,) if self.org_label else ()


_metrics: Metrics | None = None
_lock = threading.Lock()


def configure(settings: TelemetrySettings) -> Metrics:
    """Make this process's metrics with its settings (entry points call this once)."""
    global _metrics
    with _lock:
        if _metrics is None:
            _metrics = Metrics(org_label=settings.metrics_org_label)
        return _metrics


def get() -> Metrics:
    """This process's metrics (made with default settings if no entry point configured them)."""
    return _metrics if _metrics is not None else configure(TelemetrySettings())


# --- multiprocess mode (prefork workers) -------------------------------------------------------


def use_multiprocess(directory: str | None = None) -> str:
    """Before forking: children write their values under `directory` (default:
    `PROMETHEUS_MULTIPROC_DIR`, else a fresh temporary directory), emptied first. Returns it."""
    path = directory or os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="agentos-metrics-")
    Path(path).mkdir(parents=True, exist_ok=True)
    for stale in Path(path).glob("*.db"):  # a previous worker's values are not ours
        stale.unlink(missing_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    # The client picks its value class when it is imported; metrics made from now on use files.
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]
    return path


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def child_exited(pid: int) -> None:
    """A prefork child stopped: its live gauges no longer count."""
    if multiprocess_dir():
        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


def exposition(registry: CollectorRegistry | None = None) -> bytes:
    """The text format of this process's metrics, or of all children in multiprocess mode."""
    if registry is None:
        if multiprocess_dir():
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        else:
            from prometheus_client import REGISTRY

            registry = REGISTRY
    return generate_latest(registry)


CONTENT_TYPE = CONTENT_TYPE_LATEST


def authorized(header: str | None, token: str | None) -> bool:
    """Whether an `Authorization` header carries the metrics token (any request, when none is set)."""
    if not token:
        return True
    return header is not None and hmac.compare_digest(header.encode(), f"Bearer {token}".encode())


@dataclass
class SideServer:
    """`/metrics` on a side port, in a daemon thread (a worker's parent, the watchdog)."""

    server: ThreadingHTTPServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve(settings: TelemetrySettings) -> SideServer | None:
    """Serve `/metrics` on `metrics_host:metrics_port` (None when no port is set)."""
    if settings.metrics_port is None:
        return None
    token = settings.metrics_token.get_secret_value() if settings.metrics_token else None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the standard library's name)
            if self.path.split("?")[0] != "/metrics":
                self.send_error(404)
                return
            if not authorized(self.headers.get("Authorization"), token):
                self.send_error(401)
                return
            body = exposition()
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the standard library's name)
            return None  # a scrape every few seconds is not news

    server = ThreadingHTTPServer((settings.metrics_host, settings.metrics_port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="agentos-metrics", daemon=True)
    thread.start()
    log.info("metrics on http://%s:%d/metrics", settings.metrics_host, server.server_address[1])
    return SideServer(server, thread)
