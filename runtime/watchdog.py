"""The watchdog: finds runs that nobody is going to move forward, and moves them.

A worker that dies mid-run leaves its run `running` under a lease that nobody renews; Celery
redelivers the message when only the worker's child process died, but not when the whole
worker (or its host) is gone: the message then sits unacknowledged until the broker's
visibility timeout (an hour). A run can also stay `queued` because its message was lost (the
broker was down when it was sent). One pass of the watchdog (`sweep`):

- a `running` run whose lease lapsed is
  - ended `cancelled` if a cancel was requested (the worker that would have honoured it is
    gone, and a cancelled run is never claimed again),
  - ended `timed_out` (`TIMED_OUT`) if its deadline passed,
  - ended `failed` (`ATTEMPTS_EXHAUSTED`) if this is its `max_attempts`-th lapse (a resume after
    a human's decision is a new claim, not a lapse),
  - otherwise sent to the workers again: the claim takes over the lapsed lease and the run
    resumes from its last checkpoint;
- a `queued` run that is first in its session's line and has waited more than
  `requeue_after_s` (since it was created, or for a run re-queued after a human's decision,
  since its latest event) is sent again;
- a webhook delivery due for `webhooks.requeue_after_s` already (its message was lost, or its
  wait was too long for a countdown) is sent again;
- a knowledge-base document still `pending` that no attempt touched for `requeue_after_s` plus
  the longest ingestion backoff (`memory.ingest_retry_max_s`) is sent again (its message was lost);
- an org export still `queued` after `requeue_after_s` (never started: its message was lost), or
  `running` without a beat for `requeue_after_s` (its worker stopped), is sent again.

Sending twice is harmless: the claim in Postgres decides who executes. The scan is read-only
and crosses orgs (`watchdog_scan_tx`); every change happens in the run's own `tenant_tx`,
after locking its session and the run and checking again that the run still needs it (a
worker may have claimed or finished it since the scan). Each ending goes through
`core.run_signals.run_ended`, as a worker's and a cancel's do.

`run_watchdog` loops `sweep` until SIGTERM/SIGINT: `agentos watchdog`, and a child process of
`agentos dev`. Several watchdogs may run at once; they only duplicate harmless sends.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from core import org_export, webhooks
from core.infra import Infra
from core.run_signals import run_ended, send_run
from core.settings import Settings
from core.store import runs
from core.store.runs import RunStatus
from core.telemetry import metrics
from core.tenancy import AsyncPool, tenant_tx, watchdog_scan_tx
from memory import knowledge
from runtime import maintenance

log = logging.getLogger("agentos.watchdog")

# At most this many runs of each kind are looked at per pass; the rest wait for the next one.
BATCH = 500

# Running runs whose lease lapsed, oldest lapse first (index runs_lease_idx).
LAPSED_SQL = """
SELECT id, org_id, session_id
FROM runs
WHERE status = 'running' AND lease_expires_at < now()
ORDER BY lease_expires_at
LIMIT %(limit)s
"""
# Queued runs first in their session's line that have waited long enough to suspect their
# message was lost (index runs_watchdog_idx).
UNSENT_SQL = """
SELECT r.id, r.org_id, r.session_id, r.attempt
FROM runs r
WHERE r.status = 'queued' AND r.created_at < now() - %(after)s AND r.cancel_requested_at IS NULL
  AND NOT EXISTS (SELECT 1 FROM runs e WHERE e.session_id = r.session_id AND e.queue_seq < r.queue_seq
                  AND e.status IN ('queued', 'running', 'awaiting_confirmation'))
ORDER BY r.created_at
LIMIT %(limit)s
"""
# A queued run that already ran (attempt > 0) was re-queued after a human's decision; its
# `created_at` says nothing about when, its latest event does (index run_events_run_idx).
QUIET_SINCE_SQL = "SELECT ts < now() - %s AS quiet FROM run_events WHERE run_id = %s ORDER BY seq DESC LIMIT 1"
# Locks in the order every other writer takes them (session row, then run row), so the watchdog
# never deadlocks with a claim or a finishing worker.
LOCK_RUN_SQL = """
SELECT status, attempt, lapses, lease_expires_at < now() AS lapsed, deadline_at < now() AS past_deadline,
       cancel_requested_at IS NOT NULL AS cancel_requested
FROM runs WHERE id = %s FOR UPDATE
"""

# What to do with a running run whose lease lapsed.
REQUEUE = "requeue"
CANCEL = "cancelled"
TIME_OUT = "timed_out"
EXHAUSTED = "exhausted"


@dataclass
class SweepReport:
    """What one pass did, by run id."""

    requeued: list[str] = field(default_factory=list)  # lapsed leases: sent to the workers again
    resent: list[str] = field(default_factory=list)  # queued, message presumed lost: sent again
    timed_out: list[str] = field(default_factory=list)
    exhausted: list[str] = field(default_factory=list)  # failed ATTEMPTS_EXHAUSTED
    cancelled: list[str] = field(default_factory=list)
    documents_resent: list[str] = field(default_factory=list)  # knowledge documents left pending: sent again
    exports_resent: list[str] = field(default_factory=list)  # org exports left queued or left running: sent again
    webhooks_resent: list[str] = field(default_factory=list)  # webhook deliveries due a while: sent again
    skipped: int = 0  # changed between the scan and the action (claimed, finished, held again)
    errors: int = 0

    @property
    def acted(self) -> int:
        return (len(self.requeued) + len(self.resent) + len(self.timed_out) + len(self.exhausted)
                + len(self.cancelled) + len(self.documents_resent) + len(self.exports_resent)
                + len(self.webhooks_resent))

    def summary(self) -> str:
        counts = [
            (len(self.requeued), "sent again (lease lapsed)"), (len(self.resent), "sent again (queued, unclaimed)"),
            (len(self.timed_out), "timed out"), (len(self.exhausted), "failed (attempts exhausted)"),
            (len(self.cancelled), "cancelled"), (len(self.documents_resent), "document(s) sent again"),
            (len(self.exports_resent), "export(s) sent again"),
            (len(self.webhooks_resent), "webhook delivery(ies) sent again"),
            (self.skipped, "changed meanwhile"), (self.errors, "error(s)"),
        ]
        return ", ".join(f"{n} {what}" for n, what in counts if n) or "nothing to do"


class SendMemo:
    """The runs one watchdog process already sent, so a run that waits for a free worker is not
    sent again on every pass: the same (run, attempt) is sent again only after `hold_s`, doubling
    each time (up to 32x)."""

    def __init__(self, hold_s: float) -> None:
        self.hold_s = hold_s
        self._sent: dict[tuple[str, int], tuple[float, int]] = {}  # -> (next allowed, times sent)

    def due(self, run_id: str, attempt: int) -> bool:
        entry = self._sent.get((run_id, attempt))
        return entry is None or time.monotonic() >= entry[0]

    def sent(self, run_id: str, attempt: int) -> None:
        times = self._sent.get((run_id, attempt), (0.0, 0))[1] + 1
        self._sent[(run_id, attempt)] = (time.monotonic() + self.hold_s * 2 ** min(times - 1, 5), times)

    def forget_stale(self) -> None:
        now = time.monotonic()
        horizon = self.hold_s * 2**5
        for key, (allowed, _) in list(self._sent.items()):
            if now - allowed > horizon:
                del self._sent[key]


def _verdict(run: dict[str, Any], max_attempts: int) -> str | None:
    """What a run whose lease lapsed needs (None: it is no longer running with a lapsed lease)."""
    if run["status"] != RunStatus.RUNNING or not run["lapsed"]:
        return None
    if run["cancel_requested"]:
        return CANCEL
    if run["past_deadline"]:
        return TIME_OUT
    if run["lapses"] + 1 >= max_attempts:  # this lapse is the last one allowed
        return EXHAUSTED
    return REQUEUE


def _ending(verdict: str, lapses: int, max_attempts: int) -> tuple[RunStatus, dict[str, Any] | None]:
    if verdict == TIME_OUT:
        return RunStatus.TIMED_OUT, {"code": "TIMED_OUT", "message": (
            "The run's time limit passed while its worker was gone (it stopped renewing its lease).")}
    if verdict == EXHAUSTED:
        return RunStatus.FAILED, {"code": "ATTEMPTS_EXHAUSTED", "message": (
            f"The run was given up: its worker stopped {lapses} times before finishing it "
            f"(AGENTOS_WORKER__MAX_ATTEMPTS is {max_attempts}). Something in the run may be crashing or "
            "stalling workers; see the worker logs.")}
    return RunStatus.CANCELLED, None


async def _send_each(
    rows: list[dict[str, Any]], version: str, send: Callable[[dict[str, Any]], Awaitable[bool]], sent: list[str],
    report: SweepReport, memo: SendMemo | None, what: str,
) -> None:
    """Send each row that is due (per `memo`, keyed by id and `row[version]`); `send` may
    decline (False). One row's failure is counted and the others still go."""
    for row in rows:
        if memo is not None and not memo.due(row["id"], row[version]):
            continue
        try:
            if not await send(row):
                continue
        except Exception as exc:
            report.errors += 1
            log.warning("watchdog: could not send %s %s: %s", what, row["id"], exc)
            continue
        if memo is not None:
            memo.sent(row["id"], row[version])
        sent.append(row["id"])


async def sweep(infra: Infra, *, memo: SendMemo | None = None) -> SweepReport:
    """One pass over lapsed leases and unsent queued runs (at most `BATCH` of each). Without a
    `memo` every candidate is sent; `run_watchdog` keeps one across passes."""
    report = SweepReport()
    settings = infra.settings
    async with watchdog_scan_tx(infra.pool) as conn:
        lapsed = list(await (await conn.execute(LAPSED_SQL, {"limit": BATCH})).fetchall())
        unsent = list(await (await conn.execute(UNSENT_SQL, {
            "after": timedelta(seconds=settings.worker.requeue_after_s), "limit": BATCH,
        })).fetchall())
        # A document being retried is touched at each attempt: wait out the longest backoff too.
        stale_documents = await knowledge.stale_pending(conn, timedelta(
            seconds=settings.worker.requeue_after_s + settings.memory.ingest_retry_max_s), BATCH)
        stale_exports = await org_export.stale(conn, timedelta(seconds=settings.worker.requeue_after_s), BATCH)
    for run in lapsed:
        try:
            await _recover(infra, run, report, memo)
        except Exception as exc:  # one run's trouble must not stop the pass
            report.errors += 1
            log.warning("watchdog: run %s (org %s) could not be recovered: %s", run["id"], run["org_id"], exc)
    async def resend(run: dict[str, Any]) -> bool:
        if run["attempt"] > 0 and not await _quiet(infra.pool, run, settings.worker.requeue_after_s):
            return False
        await send_run(infra, run["org_id"], run["id"])
        return True

    async def send_document(doc: dict[str, Any]) -> bool:
        await infra.jobs.enqueue_ingest(doc["id"], doc["org_id"])
        return True

    await _send_each(unsent, "attempt", resend, report.resent, report, memo, "queued run")
    await _send_each(stale_documents, "attempts", send_document, report.documents_resent, report, memo,
                     "pending document")

    async def send_export(export: dict[str, Any]) -> bool:
        await infra.jobs.enqueue_export(export["id"], export["org_id"])
        return True

    await _send_each(stale_exports, "attempts", send_export, report.exports_resent, report, memo, "export")

    async def send_delivery(delivery: dict[str, Any]) -> bool:
        await infra.jobs.enqueue_webhook(delivery["id"], delivery["org_id"])
        return True

    await _send_each(await webhooks.due_for_resend(infra, BATCH), "attempts", send_delivery, report.webhooks_resent,
                     report, memo, "webhook delivery")
    if memo is not None:
        memo.forget_stale()
    return report


async def _quiet(pool: AsyncPool, run: dict[str, Any], after_s: float) -> bool:
    async with tenant_tx(pool, run["org_id"]) as conn:
        row = await (await conn.execute(QUIET_SINCE_SQL, (timedelta(seconds=after_s), run["id"]))).fetchone()
    return row is None or bool(row["quiet"])


async def _recover(infra: Infra, run: dict[str, Any], report: SweepReport, memo: SendMemo | None) -> None:
    run_id, org_id, session_id = run["id"], run["org_id"], run["session_id"]
    max_attempts = infra.settings.worker.max_attempts
    done: runs.Finished | None = None
    async with tenant_tx(infra.pool, org_id) as conn:
        await runs.lock_any_session(conn, session_id)
        current = await (await conn.execute(LOCK_RUN_SQL, (run_id,))).fetchone()
        verdict = _verdict(current, max_attempts) if current is not None else None
        attempt = int(current["attempt"]) if current is not None else 0
        if verdict is not None and verdict != REQUEUE:
            status, error = _ending(verdict, int(current["lapses"]) + 1 if current else 0, max_attempts)
            # Still running under a lapsed lease, and both rows are locked: nobody can claim or
            # finish it between the check above and this.
            done = await runs.finish(conn, run_id, session_id, status, owner=None, error=error)
    if verdict is None or (verdict != REQUEUE and done is None):
        report.skipped += 1
        return
    if verdict == REQUEUE:
        if memo is not None and not memo.due(run_id, attempt):
            return
        await send_run(infra, org_id, run_id)
        if memo is not None:
            memo.sent(run_id, attempt)
        report.requeued.append(run_id)
        return
    assert done is not None
    {CANCEL: report.cancelled, TIME_OUT: report.timed_out, EXHAUSTED: report.exhausted}[verdict].append(run_id)
    await run_ended(infra, org_id, done)  # a next run it could not send stays queued: UNSENT_SQL finds it


async def sweep_once(settings: Settings) -> SweepReport:
    """One pass with connections of its own (`agentos watchdog --once`)."""
    infra = await Infra.open(settings, name="agentos-watchdog", pool_min=1, pool_max=1)
    try:
        return await sweep(infra)
    finally:
        await infra.close()


def run_watchdog(settings: Settings, interval_s: float | None = None) -> None:
    """Sweep every `interval_s` (default `AGENTOS_WORKER__WATCHDOG_INTERVAL_S`) until SIGTERM or
    SIGINT. A pass that fails (Postgres or Redis away) is logged and tried again next time. With
    `AGENTOS_TELEMETRY__METRICS_PORT` it serves `/metrics` there (the runs it ended)."""
    side = metrics.serve(settings.telemetry)
    try:
        asyncio.run(_loop(settings, interval_s or settings.worker.watchdog_interval_s))
    finally:
        if side is not None:
            side.close()


async def _loop(settings: Settings, interval_s: float) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # No connection is required at start: the loop waits for Postgres instead of exiting.
    # Three connections: the sweep's, and a maintenance job's advisory lock plus its work.
    infra = await Infra.open(settings, name="agentos-watchdog", pool_min=0, pool_max=3)
    memo = SendMemo(settings.worker.requeue_after_s)
    clock = maintenance.MaintenanceClock()
    log.info("watchdog ready. Sweeping every %.1f s (max attempts %d, queued runs resent after %.0f s)",
             interval_s, settings.worker.max_attempts, settings.worker.requeue_after_s)
    failing = False
    housekeeping: asyncio.Task[list[str]] | None = None
    try:
        while not stop.is_set():
            try:
                report = await sweep(infra, memo=memo)
            except Exception as exc:
                if not failing:  # once per outage, not once per pass
                    log.warning("watchdog pass failed (will keep trying): %s", exc)
                failing = True
            else:
                if failing:
                    log.info("watchdog passes succeed again")
                failing = False
                if report.acted or report.errors:
                    log.info("pass: %s", report.summary())
            # Housekeeping after the sweep, each job on its own interval (runtime/maintenance.py),
            # in the background: a job may take minutes (an index build) and sweeps go on meanwhile.
            if housekeeping is None or housekeeping.done():
                housekeeping = asyncio.create_task(maintenance.run_due(infra, clock))
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval_s)
    finally:
        if housekeeping is not None and not housekeeping.done():
            housekeeping.cancel()  # an index build cut short is redone by the next watchdog
            with suppress(asyncio.CancelledError):
                await housekeeping
        await infra.close()
        log.info("watchdog stopped")
