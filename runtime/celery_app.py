"""`create_celery(settings)`: the worker's Celery app and its thin tasks.

The run task carries ids only and hands them to `runtime.executor.execute_run`; the run's lease in
Postgres (not the broker) decides who executes it, so a redelivered message is harmless. The
ingestion task hands a knowledge-base document to `memory.knowledge.ingest` (safe to repeat) and
retries it with backoff while its embedding fails.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery, Task
from celery.signals import worker_process_shutdown

from core import jobs
from core.settings import Settings
from memory import knowledge
from runtime import liveness
from runtime.executor import execute_run
from runtime.services import RuntimeHolder

log = logging.getLogger("agentos.worker")

# How often a delivery that failed for lack of Postgres or Redis is retried (backoff up to 30 s).
INFRA_RETRIES = 30


def create_celery(settings: Settings) -> Celery:
    app = Celery("agentos", set_as_current=False)
    app.conf.update(
        jobs.celery_config(settings),
        task_acks_late=True,  # a message is acked only after the run's delivery ends ...
        task_reject_on_worker_lost=True,  # ... and requeued if the worker process dies
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.worker.concurrency,
        worker_hijack_root_logger=False,
        task_ignore_result=True,
        worker_send_task_events=False,
        worker_enable_remote_control=False,
        # A run outlives a broker outage (Postgres holds it; its lease guards the redelivery):
        # never cancel it on a lost connection (Celery 6 makes True the default).
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    liveness.install(app, settings)  # the consumer proves it consumes (runtime/liveness.py)
    holder = RuntimeHolder(settings)

    @app.task(name=jobs.EXECUTE_RUN, bind=True, ignore_result=True, max_retries=None)  # type: ignore[untyped-decorator]
    def execute_run_task(task: Task, run_id: str, org_id: str) -> str:
        job = jobs.RunJob(run_id=run_id, org_id=org_id)
        try:
            runtime = holder.get()
            delivery = runtime.run(execute_run(runtime.services, job.run_id, job.org_id))
        except Exception as exc:  # Postgres or Redis unreachable: the run is intact; try again later
            retries = task.request.retries or 0
            if retries >= INFRA_RETRIES:
                raise
            log.warning("run %s: delivery failed (%s); retrying", job.run_id, exc)
            raise task.retry(countdown=min(2.0**retries, 30.0), exc=exc) from exc
        log.info("run %s: %s", job.run_id, delivery.outcome)
        if delivery.retry_after_s is not None:
            raise task.retry(countdown=delivery.retry_after_s)
        return delivery.outcome

    @app.task(name=jobs.INGEST_DOCUMENT, bind=True, ignore_result=True, max_retries=None)  # type: ignore[untyped-decorator]
    def ingest_document_task(task: Task, document_id: str, org_id: str) -> str:
        job = jobs.IngestJob(document_id=document_id, org_id=org_id)
        try:
            runtime = holder.get()
            services = runtime.services
            outcome = runtime.run(knowledge.ingest(services.pool, services.settings, job.org_id, job.document_id))
        except Exception as exc:  # Postgres unreachable: the document stays pending; try again later
            retries = task.request.retries or 0
            if retries >= INFRA_RETRIES:
                raise
            log.warning("document %s: ingestion failed (%s); retrying", job.document_id, exc)
            raise task.retry(countdown=min(2.0**retries, 30.0), exc=exc) from exc
        log.info("document %s: %s (attempt %d, %d chunks)", job.document_id, outcome.status, outcome.attempts,
                 outcome.chunks)
        if outcome.retry_after_s is not None:  # the embedding failed; the attempt is counted
            raise task.retry(countdown=outcome.retry_after_s)
        return outcome.status

    def _shutdown(**_: Any) -> None:
        holder.close()

    worker_process_shutdown.connect(_shutdown, weak=False)
    app.agentos_holder = holder
    return app


def run_worker(settings: Settings, *, concurrency: int | None = None, pool: str = "prefork",
               loglevel: str = "INFO") -> None:
    """Run a worker in this process until it is stopped (SIGTERM / Ctrl-C)."""
    app = create_celery(settings)
    argv = [
        "worker", f"--loglevel={loglevel}", f"--concurrency={concurrency or settings.worker.concurrency}",
        f"--pool={pool}", f"--queues={jobs.RUNS_QUEUE}", "--without-gossip", "--without-mingle",
        "--without-heartbeat",
    ]
    try:
        app.worker_main(argv)
    finally:
        if pool == "solo":
            app.agentos_holder.close()
