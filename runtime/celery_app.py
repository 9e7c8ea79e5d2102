"""`create_celery(settings)`: the worker's Celery app and its thin tasks.

The run task carries ids only and hands them to `runtime.executor.execute_run`; the run's lease in
Postgres (not the broker) decides who executes it, so a redelivered message is harmless. The
ingestion task hands a knowledge-base document to `memory.knowledge.ingest` (safe to repeat) and
retries it with backoff while its embedding fails. The webhook task makes one attempt at one
delivery (`core.webhooks.deliver`) on the `agentos.webhooks` queue, and waits out a short backoff
as its own countdown.

Retries are declared on `AgentTask`: a delivery that fails because Postgres, Redis or the
broker is away is retried with exponential backoff and jitter; anything else is a bug, which
`execute_run` ends as `failed` `INTERNAL` at once rather than retrying.
"""

from __future__ import annotations

import logging
import os
from typing import Any, ClassVar

from celery import Celery, Task
from celery.signals import worker_init, worker_process_init, worker_process_shutdown, worker_shutting_down

from core import jobs, org_export, webhooks
from core.infra import INFRA_ERRORS, InfraUnavailable, is_infra_error
from core.settings import Settings
from core.telemetry import metrics, scope, tracing
from memory import knowledge
from runtime import liveness
from runtime.drain import Drain
from runtime.executor import execute_run
from runtime.services import RuntimeHolder, Services, WorkerRuntime

log = logging.getLogger("agentos.worker")

# Celery's loggers of two INFO lines per task ("Task … received", "Task … succeeded in …s"),
# written by default. Quieted to WARNING unless the worker logs at DEBUG: each run already has its
# own line ("run …: succeeded", with its org and trace ids), and failures are logged at ERROR.
TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


class AgentTask(Task):  # type: ignore[misc]  # celery ships no type hints
    """The base of AgentOS's tasks: retries limited to infrastructure failures, and the
    process's `WorkerRuntime` (Celery's `DatabaseTask` pattern: per-process resources on the
    task class, made on first use, so never before a prefork fork)."""

    autoretry_for = INFRA_ERRORS
    retry_backoff = 1  # seconds, doubling per retry ...
    retry_backoff_max = 30  # ... up to this
    retry_jitter = True
    # About a quarter of an hour of outage, then the watchdog takes over. Retries the task asks
    # for itself (a run held by another worker's lease, an embedding backoff) are not failures
    # and are not limited.
    retry_kwargs: ClassVar[dict[str, Any]] = {"max_retries": 30}
    max_retries = None
    holder: ClassVar[RuntimeHolder]

    @property
    def runtime(self) -> WorkerRuntime:
        return self.holder.get()

    def call_infra(self, what: str, fn: Any, *args: Any) -> Any:
        """Run `fn(services, *args)` on the runtime's loop. An infrastructure error wrapped by
        a library is re-raised as `InfraUnavailable` so `autoretry_for` sees it."""
        runtime = self.runtime
        try:
            return runtime.run(fn(runtime.services, *args))
        except Exception as exc:
            if is_infra_error(exc):
                log.warning("%s: Postgres/Redis unreachable (%s: %s); retrying", what, type(exc).__name__, exc)
                if not isinstance(exc, INFRA_ERRORS):
                    raise InfraUnavailable(str(exc)) from exc
            raise


def create_celery(settings: Settings) -> Celery:
    app = Celery("agentos", set_as_current=False)
    app.conf.update(jobs.worker_config(settings))
    liveness.install(app, settings)  # the consumer proves it consumes (runtime/liveness.py)
    drain = Drain()  # made here, before the pool forks, so the children share it

    def _shutting_down(how: str = "Warm", **_: Any) -> None:
        # Sent in the main process from Celery's signal handler: only a store to shared memory.
        drain.begin(settings.worker.shutdown_grace_s if how == "Warm" else 0.0)

    worker_shutting_down.connect(_shutting_down, weak=False)
    worker_init.connect(_quiet_task_logs, weak=False)

    class Bound(AgentTask):
        holder = RuntimeHolder(settings, drain)

    @app.task(name=jobs.EXECUTE_RUN, base=Bound, bind=True, ignore_result=True)  # type: ignore[untyped-decorator]
    def execute_run_task(task: AgentTask, run_id: str, org_id: str) -> str:
        job = jobs.RunJob(run_id=run_id, org_id=org_id)
        traceparent = _traceparent(task.request) if tracing.ON else None
        delivery = task.call_infra(f"run {job.run_id}", execute_run, job.run_id, job.org_id, traceparent)
        bound = scope.bind(org_id=job.org_id, run_id=job.run_id, trace_id=delivery.trace_id)
        try:
            log.info("run %s: %s", job.run_id, delivery.outcome)
        finally:
            scope.reset(bound)
        if delivery.retry_after_s is not None:  # held by another worker's lease: not a failure
            raise task.retry(countdown=delivery.retry_after_s)
        return str(delivery.outcome)

    @app.task(name=jobs.INGEST_DOCUMENT, base=Bound, bind=True, ignore_result=True)  # type: ignore[untyped-decorator]
    def ingest_document_task(task: AgentTask, document_id: str, org_id: str) -> str:
        job = jobs.IngestJob(document_id=document_id, org_id=org_id)

        async def ingest(services: Services, org: str, document: str) -> knowledge.IngestOutcome:
            return await knowledge.ingest(services.pool, services.settings, org, document)

        outcome = task.call_infra(f"document {job.document_id}", ingest, job.org_id, job.document_id)
        log.info("document %s: %s (attempt %d, %d chunks)", job.document_id, outcome.status, outcome.attempts,
                 outcome.chunks)
        if outcome.retry_after_s is not None:  # the embedding failed; the attempt is counted
            raise task.retry(countdown=outcome.retry_after_s)
        return str(outcome.status)

    @app.task(name=jobs.EXPORT_ORG, base=Bound, bind=True, ignore_result=True)  # type: ignore[untyped-decorator]
    def export_org_task(task: AgentTask, export_id: str, org_id: str) -> str:
        job = jobs.ExportJob(export_id=export_id, org_id=org_id)

        async def build(services: Services, org: str, export: str) -> str:
            # A beat every third of the watchdog's wait: it sends the export again only when
            # three beats in a row are missing (the worker stopped).
            return await org_export.build(services.pool, services.storage, org, export,
                                          beat_s=min(org_export.BEAT_S, services.settings.worker.requeue_after_s / 3))

        status = str(task.call_infra(f"export {job.export_id}", build, job.org_id, job.export_id))
        log.info("export %s of org %s: %s", job.export_id, job.org_id, status)
        return status

    def _process_init(**_: Any) -> None:
        # Each prefork child after the fork: the exporter's thread and the instrumented
        # connections must be its own (its pools open on its first task, after this).
        tracing.setup(settings.telemetry, "worker")
        metrics.configure(settings.telemetry)

    @app.task(name=jobs.DELIVER_WEBHOOK, base=Bound, bind=True, ignore_result=True)  # type: ignore[untyped-decorator]
    def deliver_webhook_task(task: AgentTask, delivery_id: str, org_id: str) -> str:
        job = jobs.WebhookJob(delivery_id=delivery_id, org_id=org_id)

        async def attempt(services: Services, org: str, delivery: str) -> webhooks.Attempt:
            return await webhooks.deliver(services.infra, org, delivery)

        result = task.call_infra(f"webhook delivery {job.delivery_id}", attempt, job.org_id, job.delivery_id)
        log.info("webhook delivery %s: %s", job.delivery_id, result.outcome)
        # A short wait is this message's countdown; a longer one is left to the watchdog's scan,
        # since a message held past the broker's visibility timeout would be delivered twice.
        if result.retry_after_s is not None and result.retry_after_s <= settings.webhooks.max_countdown_s:
            raise task.retry(countdown=result.retry_after_s)
        return str(result.outcome)

    def _shutdown(**_: Any) -> None:
        try:
            Bound.holder.close()
        finally:
            tracing.shutdown()
            metrics.child_exited(os.getpid())

    worker_process_init.connect(_process_init, weak=False)
    worker_process_shutdown.connect(_shutdown, weak=False)
    return app


def _quiet_task_logs(**_: Any) -> None:
    """Before the consumer starts (Celery reads the levels when it builds a task's strategy and
    tracer), in the main process, so prefork children inherit it."""
    if not logging.getLogger("celery").isEnabledFor(logging.DEBUG):
        for name in TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


def _traceparent(request: Any) -> str | None:
    """The `traceparent` the sender put in the task's headers (Celery exposes custom headers on
    the request, or under `headers` depending on the protocol)."""
    value = request.get("traceparent") if hasattr(request, "get") else None
    if value is None:
        value = (getattr(request, "headers", None) or {}).get("traceparent")
    return value if isinstance(value, str) else None


def worker_argv(settings: Settings, *, concurrency: int | None = None, pool: str = "prefork",
                loglevel: str = "INFO", queues: list[str] | None = None) -> list[str]:
    """`celery worker`'s arguments for `run_worker` (and `bench/celery_overhead.py`, which runs the
    same worker with a no-op task added)."""
    return [
        "worker", f"--loglevel={loglevel}", f"--concurrency={concurrency or settings.worker.concurrency}",
        f"--pool={pool}", f"--queues={','.join(queues or settings.worker.queues)}", "--without-gossip",
        "--without-mingle", "--without-heartbeat",
    ]


def run_worker(settings: Settings, *, concurrency: int | None = None, pool: str = "prefork",
               loglevel: str = "INFO", queues: list[str] | None = None) -> None:
    """Run a worker in this process until it is stopped (SIGTERM / Ctrl-C), consuming `queues`
    (default `AGENTOS_WORKER__QUEUES`). With `AGENTOS_TELEMETRY__METRICS_PORT` this (parent)
    process serves `/metrics` for all its prefork children, which write their values to files
    (prometheus-client's multiprocess mode)."""
    side, made_dir = None, None
    if settings.telemetry.metrics_port is not None:
        if pool == "prefork":
            given = metrics.multiprocess_dir()
            path = metrics.use_multiprocess(given)
            made_dir = None if given else path
        side = metrics.serve(settings.telemetry)
    if pool != "prefork":  # no fork: this process executes the runs itself
        tracing.setup(settings.telemetry, "worker")
        metrics.configure(settings.telemetry)
    models = settings.models
    if models.openai_api_key or models.openai_base_url or models.anthropic_api_key:
        # The platform's provider models are configured, so runs will use them: load their SDKs
        # now, before the pool forks, so children share them instead of each paying ~2 s on its
        # first such run. Without them (offline-only workers, an org's own provider now and
        # then) the worker starts without (`orchestrator/models/sdk_models.py`).
        import orchestrator.models.sdk_models  # noqa: F401
    app = create_celery(settings)
    try:
        app.worker_main(worker_argv(settings, concurrency=concurrency, pool=pool, loglevel=loglevel, queues=queues))
    finally:
        if pool == "solo":
            app.tasks[jobs.EXECUTE_RUN].holder.close()
        if side is not None:
            side.close()
        if made_dir is not None:  # ours, not the operator's
            metrics.remove_dir(made_dir)
        tracing.shutdown()
