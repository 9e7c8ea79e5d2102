"""Job names and payloads: the contract between whoever enqueues (the API, the runtime) and
the workers that execute. Enqueuers send by task **name**, so the API never imports the
runtime (or langchain).

`JobQueue` is a small client. With `AGENTOS_DISPATCH=celery` (the default) it is a Celery app
with no tasks, used only to send; with `modal` it spawns one Modal function call per job
(`core.modal_dispatch`). Sending is blocking network IO, so async callers go through
`enqueue_run`, which runs it in a thread, or take the run's message as Redis commands
(`run_commands`, built on the loop with no IO) and send them in a pipeline of their own.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from celery import Celery
from opentelemetry.trace import SpanKind
from pydantic import BaseModel

from core import redis_transport
from core.redis_transport import Command, NeedsBroker
from core.settings import Settings
from core.telemetry import names, tracing

log = logging.getLogger("agentos.jobs")

EXECUTE_RUN = "agentos.execute_run"
# Chunk and embed one knowledge-base document (memory.knowledge.ingest).
INGEST_DOCUMENT = "agentos.ingest_document"
RUNS_QUEUE = "agentos.runs"
# Make one attempt at one webhook delivery (core.webhooks.deliver). Its own queue, consumed by
# workers of its own, so a slow receiver never holds a slot a run could use.
DELIVER_WEBHOOK = "agentos.deliver_webhook"
WEBHOOKS_QUEUE = "agentos.webhooks"


# Build an org's export archive (core.org_export.build).
EXPORT_ORG = "agentos.export_org"


class ExportJob(BaseModel):
    """The whole payload of an `EXPORT_ORG` task: ids only."""

    export_id: str
    org_id: str


class RunJob(BaseModel):
    """The whole payload of an `EXECUTE_RUN` task: ids only; the worker loads the rest."""

    run_id: str
    org_id: str


class IngestJob(BaseModel):
    """The whole payload of an `INGEST_DOCUMENT` task: ids only; the worker loads the document."""

    document_id: str
    org_id: str


class WebhookJob(BaseModel):
    """The whole payload of a `DELIVER_WEBHOOK` task: ids only."""

    delivery_id: str
    org_id: str


def celery_config(settings: Settings) -> dict[str, Any]:
    """Broker settings shared by senders and workers, so both see the same queue."""
    config: dict[str, Any] = {
        "broker_url": settings.redis.url,
        "task_default_queue": RUNS_QUEUE,
        "task_serializer": "json",
        "accept_content": ["json"],
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": settings.redis.socket_timeout_s,
        "broker_transport_options": {
            "socket_timeout": settings.redis.socket_timeout_s,
            "socket_connect_timeout": settings.redis.socket_timeout_s,
            # A run is protected by its lease in Postgres, not by the broker; the visibility
            # timeout only decides when a message of a dead worker is redelivered.
            "visibility_timeout": settings.worker.visibility_timeout_s,
            # How often workers look for messages past that timeout (kombu's default is ~100 s).
            "unacked_restore_interval": max(1, min(10, settings.worker.visibility_timeout_s // 2)),
            "unacked_restore_throttle": 1 if settings.worker.visibility_timeout_s < 600 else 10,
        },
        "task_publish_retry": True,
        "task_publish_retry_policy": {"max_retries": 3, "interval_start": 0.1, "interval_step": 0.2},
    }
    # One Redis client per channel, not per command. Only for plain redis://: naming a transport
    # replaces the URL's scheme, and kombu turns TLS on from a rediss:// scheme, so a TLS broker
    # keeps kombu's own transport (and its TLS) until the TLS settings are passed explicitly.
    if settings.redis.url.split("://", 1)[0] == "redis":
        config["broker_transport"] = redis_transport.TRANSPORT
    return config


def worker_config(settings: Settings) -> dict[str, Any]:
    """The worker's Celery settings (`runtime.celery_app`): the broker's (`celery_config`, shared
    with the senders) and what makes a delivery survive a worker's death."""
    return {
        **celery_config(settings),
        "task_acks_late": True,  # a message is acked only after the run's delivery ends ...
        "task_reject_on_worker_lost": True,  # ... and requeued if the worker process dies
        "worker_prefetch_multiplier": 1,
        "worker_concurrency": settings.worker.concurrency,
        "worker_hijack_root_logger": False,
        "task_ignore_result": True,
        "worker_send_task_events": False,
        "worker_enable_remote_control": False,
        # A run outlives a broker outage (Postgres holds it; its lease guards the redelivery):
        # never cancel it on a lost connection (Celery 6 makes True the default).
        "worker_cancel_long_running_tasks_on_connection_loss": False,
    }


class JobQueue:
    """Sends jobs to the workers by name: Celery's queue, or Modal (`settings.dispatch`)."""

    def __init__(self, settings: Settings) -> None:
        self._app = Celery("agentos-sender", set_as_current=False)
        self._app.conf.update(celery_config(settings))
        self._modal = None
        if settings.dispatch == "modal":
            from core.modal_dispatch import ModalSender

            self._modal = ModalSender(settings.modal)
        # Whether `run_commands` can be used: our transport (plain redis://), Celery dispatch.
        self._capturable = self._modal is None and settings.redis.url.split("://", 1)[0] == "redis"
        # The producer `run_commands` publishes through, on the event loop only: connected and
        # its queue declared in a thread (`_prime`), so that a captured publish does no IO.
        self._loop_producer: Any = None
        self._priming: asyncio.Future[None] | None = None

    def send_run(self, job: RunJob, producer: Any = None) -> None:
        if self._modal is not None:
            self._modal.send(EXECUTE_RUN, job.model_dump())
            return
        if not tracing.ON:
            self._app.send_task(EXECUTE_RUN, kwargs=job.model_dump(), queue=RUNS_QUEUE, producer=producer)
            return
        # The worker's span continues this one: W3C `traceparent` in the task's headers.
        with tracing.span(names.RUN_SEND, {names.MESSAGING_SYSTEM: "celery", names.MESSAGING_DESTINATION: RUNS_QUEUE,
                                           names.MESSAGING_OPERATION: "send", names.RUN_ID: job.run_id,
                                           names.ORG_ID: job.org_id}, kind=SpanKind.PRODUCER):
            self._app.send_task(EXECUTE_RUN, kwargs=job.model_dump(), queue=RUNS_QUEUE, headers=tracing.inject(),
                                producer=producer)

    def run_commands(self, run_id: str, org_id: str) -> list[Command] | None:
        """The Redis commands that queue this run for the workers (Celery's own message, `LPUSH`ed
        as kombu would), built here with no IO, for the caller to send in a pipeline of its own:
        one round trip fewer and no thread for the API's POST. None when that cannot be done
        (Modal dispatch, a TLS broker, or the sender not connected yet, which it then does in a
        thread): send with `enqueue_run` instead. Call it on the event loop."""
        producer = self._loop_producer
        if producer is None:
            self.prime_soon()
            return None
        try:
            with redis_transport.capturing() as commands:
                self.send_run(RunJob(run_id=run_id, org_id=org_id), producer)
        except NeedsBroker:
            # Its connection or declaration is gone (a reconnect): prime it again meanwhile.
            self._loop_producer = None
            self.prime_soon()
            return None
        return commands if commands else None

    @property
    def sends_on_loop(self) -> bool:
        """Whether `run_commands` answers commands now (the sender is connected)."""
        return self._loop_producer is not None

    def prime_soon(self) -> None:
        """Connect `run_commands`'s sender in a thread, unless that is done or under way (the API
        calls it at start-up, and `run_commands` whenever it finds the sender gone)."""
        if not self._capturable or self._priming is not None:
            return
        self._priming = asyncio.get_running_loop().run_in_executor(None, self._prime)
        self._priming.add_done_callback(self._primed)

    def _prime(self) -> None:
        producer = self._app.amqp.Producer(self._app.connection_for_write())
        producer.connection.ensure_connection(max_retries=1)
        producer.maybe_declare(self._app.amqp.queues[RUNS_QUEUE])
        with redis_transport.capturing() as commands:  # a dry run (no span): proves the publish needs no IO now
            self._app.send_task(EXECUTE_RUN, kwargs=RunJob(run_id="run_prime", org_id="org_prime").model_dump(),
                                queue=RUNS_QUEUE, producer=producer)
        if [name for name, _ in commands] != ["lpush"]:
            raise RuntimeError(f"a captured run message gave {commands!r}, not one LPUSH")
        self._loop_producer = producer

    def _primed(self, done: asyncio.Future[None]) -> None:
        self._priming = None
        if not done.cancelled() and done.exception() is not None:
            log.info("runs are sent from a thread until the broker answers: %s", done.exception())

    async def enqueue_run(self, run_id: str, org_id: str) -> None:
        await asyncio.to_thread(self.send_run, RunJob(run_id=run_id, org_id=org_id))

    def send_ingest(self, job: IngestJob) -> None:
        if self._modal is not None:
            self._modal.send(INGEST_DOCUMENT, job.model_dump())
            return
        self._app.send_task(INGEST_DOCUMENT, kwargs=job.model_dump(), queue=RUNS_QUEUE)

    async def enqueue_ingest(self, document_id: str, org_id: str) -> None:
        await asyncio.to_thread(self.send_ingest, IngestJob(document_id=document_id, org_id=org_id))

    def send_webhook(self, job: WebhookJob, countdown_s: float | None = None) -> None:
        self._app.send_task(DELIVER_WEBHOOK, kwargs=job.model_dump(), queue=WEBHOOKS_QUEUE, countdown=countdown_s)

    async def enqueue_webhook(self, delivery_id: str, org_id: str) -> None:
        await asyncio.to_thread(self.send_webhook, WebhookJob(delivery_id=delivery_id, org_id=org_id))

    def send_export(self, job: ExportJob) -> None:
        # Celery only: with AGENTOS_DISPATCH=modal exports still need a Celery worker (not ported yet).
        self._app.send_task(EXPORT_ORG, kwargs=job.model_dump(), queue=RUNS_QUEUE)

    async def enqueue_export(self, export_id: str, org_id: str) -> None:
        await asyncio.to_thread(self.send_export, ExportJob(export_id=export_id, org_id=org_id))

    def close(self) -> None:
        if self._loop_producer is not None:
            self._loop_producer.connection.release()
        self._app.close()
