"""One job per call, outside Celery: what the Modal functions of infra/modal/app.py run
(`AGENTOS_DISPATCH=modal`). Each call executes the same `execute_run` (or `knowledge.ingest`)
a Celery task does, on the process's `WorkerRuntime`, opened once per container and reused by
later calls.

What Celery's task base gives its tasks is done here: a run held by another call's live lease
is looked at again when that lease would lapse (a crashed container's run is taken over), and
an embedding that failed is retried after its backoff. Postgres or Redis being away raises, so
Modal's own retries (declared on the function) deliver the call again; past them, the watchdog
re-sends the run.
"""

from __future__ import annotations

import logging
import time

from memory import knowledge
from runtime.executor import execute_run
from runtime.services import RuntimeHolder

log = logging.getLogger("agentos.worker")


def deliver_run(holder: RuntimeHolder, run_id: str, org_id: str, *, max_wait_s: float = 600.0) -> str:
    """Execute the run (or learn that it needs nothing from this call); what happened."""
    runtime = holder.get()
    give_up = time.monotonic() + max_wait_s
    while True:
        delivery = runtime.run(execute_run(runtime.services, run_id, org_id))
        log.info("run %s: %s", run_id, delivery.outcome)
        if delivery.retry_after_s is None:
            return delivery.outcome
        if time.monotonic() + delivery.retry_after_s > give_up:  # the watchdog takes it from here
            return f"{delivery.outcome}; stopped waiting after {max_wait_s:.0f} s"
        time.sleep(delivery.retry_after_s)


def ingest_document(holder: RuntimeHolder, document_id: str, org_id: str, *, max_wait_s: float = 1800.0) -> str:
    """Chunk and embed a knowledge-base document, retrying a failed embedding after its backoff."""
    runtime = holder.get()
    give_up = time.monotonic() + max_wait_s
    while True:
        services = runtime.services
        outcome = runtime.run(knowledge.ingest(services.pool, services.settings, org_id, document_id))
        log.info("document %s: %s (attempt %d)", document_id, outcome.status, outcome.attempts)
        if outcome.retry_after_s is None or time.monotonic() + outcome.retry_after_s > give_up:
            return str(outcome.status)
        time.sleep(outcome.retry_after_s)
