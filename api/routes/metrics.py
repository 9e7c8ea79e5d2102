"""`GET /metrics`: the Prometheus text format, for a scraper holding
`AGENTOS_TELEMETRY__METRICS_TOKEN` (`Authorization: Bearer <token>`), or for any scraper on the
private side port `AGENTOS_TELEMETRY__METRICS_PORT` when no token is set (`agentos api` listens
there too). Without either the route answers 404: metrics are never public by default.

The queue gauges are read at scrape time, across orgs, through the watchdog's read-only view of
`runs` (`core.tenancy.watchdog_scan_tx`): queued runs and the age of the oldest (the signal to
scale workers on), running runs, runs awaiting a human; and the broker's list length from Redis.
Every API process reports the same values: aggregate them with `max`, not `sum`.
"""

from __future__ import annotations

import logging
from typing import Any

from prometheus_client import Gauge
from starlette.requests import Request
from starlette.responses import Response

from api.endpoint import Call, endpoint, resource
from api.state import state_of
from core.errors import ApiError
from core.jobs import RUNS_QUEUE
from core.telemetry import metrics
from core.tenancy import watchdog_scan_tx

log = logging.getLogger("agentos.api")

QUEUE_SQL = """
SELECT status, count(*) AS n, coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest_s
FROM runs WHERE status IN ('queued', 'running', 'awaiting_confirmation') GROUP BY status
"""


class QueueGauges:
    def __init__(self) -> None:
        mode: Any = "mostrecent"
        self.depth = Gauge("agentos_queue_depth", "Runs queued (not yet claimed by a worker).",
                           multiprocess_mode=mode)
        self.oldest = Gauge("agentos_queue_oldest_age_seconds", "Age of the oldest queued run (since its creation).",
                            multiprocess_mode=mode)
        self.active = Gauge("agentos_runs_active", "Runs executing on a worker now.", multiprocess_mode=mode)
        self.approvals = Gauge("agentos_approvals_waiting", "Runs waiting for a human's decision.",
                               multiprocess_mode=mode)
        self.broker = Gauge("agentos_broker_queue_length", "Messages waiting in the broker's runs queue.",
                            multiprocess_mode=mode)


_gauges: QueueGauges | None = None


def _queue_gauges() -> QueueGauges:
    global _gauges
    if _gauges is None:
        _gauges = QueueGauges()
    return _gauges


async def _read_queue(request: Request) -> None:
    infra = state_of(request).infra
    gauges = _queue_gauges()
    try:
        async with watchdog_scan_tx(infra.pool) as conn:
            rows = await (await conn.execute(QUEUE_SQL)).fetchall()
        by_status = {row["status"]: row for row in rows}
        queued = by_status.get("queued")
        gauges.depth.set(queued["n"] if queued else 0)
        gauges.oldest.set(queued["oldest_s"] if queued else 0)
        gauges.active.set(by_status["running"]["n"] if "running" in by_status else 0)
        gauges.approvals.set(by_status["awaiting_confirmation"]["n"] if "awaiting_confirmation" in by_status else 0)
    except Exception as exc:  # a scrape still answers; the gauges keep their last values
        log.warning("metrics: could not read the run queue from Postgres: %s", exc)
    try:
        gauges.broker.set(await infra.redis.llen(RUNS_QUEUE))
    except Exception as exc:
        log.warning("metrics: could not read the broker queue from Redis: %s", exc)


@endpoint("Prometheus metrics (text format), for a scraper with the metrics token.", role=None, download=True,
          errors=("NOT_FOUND", "UNAUTHENTICATED"))
async def get_metrics(call: Call[Any]) -> Response:
    request = call.request
    telemetry = call.settings.telemetry
    secret = telemetry.metrics_token.get_secret_value() if telemetry.metrics_token else ""
    server = request.scope.get("server") or (None, None)
    side_port = telemetry.metrics_port is not None and server[1] == telemetry.metrics_port
    if not secret and not side_port:
        raise ApiError("NOT_FOUND", "Metrics are off here: set AGENTOS_TELEMETRY__METRICS_TOKEN (or "
                                    "AGENTOS_TELEMETRY__METRICS_PORT for a private port) to serve them.")
    if not metrics.authorized(request.headers.get("authorization"), secret):
        raise ApiError("UNAUTHENTICATED", "Send the metrics token: Authorization: Bearer <token>.")
    await _read_queue(request)
    return Response(metrics.exposition(), media_type=metrics.CONTENT_TYPE)


routes = [resource("/metrics", GET=get_metrics)]
