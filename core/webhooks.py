"""Webhook deliveries: one attempt (`deliver`), telling the workers about new deliveries
(`announce`), the watchdog's re-send of due ones (`resend_due`), and the SSRF check of a URL at
creation (`check_url`).

A delivery is stored with its event (`core.events.append`), so a committed event never misses it.
Delivery is at least once: an attempt claims the delivery under a short lease (a duplicate
message finds it held or not yet due and does nothing), posts the signed payload through the
outbound guard (which checks the address again at connect time: DNS rebinding), and records
the attempt. A failure waits `retry_base_s` doubling up to `retry_max_s`; after `max_age_s`
since the event the delivery is given up. A webhook none of whose attempts succeeded for
`disable_after_days` is disabled, with an audit entry.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from core import webhook_signing
from core.infra import Infra
from core.outbound import AddressGuard, Outbound, OutboundError, Resolver, system_resolver
from core.secrets import Keyring, SecretError, SecretNotFound, read_secret_in
from core.settings import Settings, WebhookSettings
from core.store import audit
from core.store import webhooks as store
from core.store.orgs import GET_ORG_SETTINGS_SQL
from core.tenancy import tenant_tx, watchdog_scan_tx

log = logging.getLogger("agentos.webhooks")

Outcome = Literal["delivered", "retry", "failed", "skipped"]
# How long an attempt holds its delivery beyond the request's own time limit.
LEASE_SLACK_S = 30.0


@dataclass(frozen=True)
class Attempt:
    """What one call of `deliver` did; `retry_after_s` when the delivery waits for another try."""

    outcome: Outcome
    retry_after_s: float | None = None


def backoff_s(settings: WebhookSettings, attempts: int) -> float:
    """The wait after the `attempts`-th failed attempt: doubling, capped, with ±20 % jitter so
    that many deliveries failing together do not retry together."""
    base = min(settings.retry_base_s * 2 ** min(attempts - 1, 30), settings.retry_max_s)
    return float(base * (0.8 + 0.4 * random.random()))


async def org_allowlist(conn: AsyncConnection[DictRow]) -> list[str]:
    """What the guard allows for this org beyond the operator's list: the operator's per-org
    `outbound_allow` and the org admin's private networks (`outbound_allow_private`)."""
    row = await (await conn.execute(GET_ORG_SETTINGS_SQL)).fetchone()
    org = dict(row["settings"] or {}) if row else {}
    allow: list[str] = []
    for key in ("outbound_allow", "outbound_allow_private"):
        value = org.get(key) or []
        if isinstance(value, list):
            allow.extend(str(v) for v in value)
    return allow


async def check_url(settings: Settings, allow: Sequence[str], url: str,
                    resolver: Resolver = system_resolver) -> str | None:
    """Why `url` may not receive webhooks (a readable sentence), or None if the guard admits it now.
    Delivery checks again at every connection: an address that changes later is refused then."""
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        return f"{url!r} is not a valid URL."
    if parsed.scheme not in ("http", "https") or not parsed.host:
        return f"{url!r}: a webhook URL is http(s)://host[:port]/path."
    guard = AddressGuard.from_settings(settings.outbound, allow=allow, resolver=resolver)
    try:
        await guard.resolve(parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80))
    except OutboundError as exc:
        return str(exc)
    return None


async def _secrets(conn: AsyncConnection[DictRow], keyring: Keyring, org_id: str, claimed: store.Claimed) -> list[str]:
    """The secrets that sign this attempt: the current one, and the previous one in its grace."""
    webhook_id = claimed["webhook_id"]
    secrets = [await read_secret_in(conn, keyring, org_id, store.secret_name(webhook_id))]
    if claimed["previous_valid"]:
        try:
            secrets.append(await read_secret_in(conn, keyring, org_id, store.secret_name(webhook_id, previous=True)))
        except SecretNotFound:
            pass
    return secrets


async def deliver(infra: Infra, org_id: str, delivery_id: str, *, resolver: Resolver = system_resolver) -> Attempt:
    """Make one attempt at a delivery, if it is pending, due and not held by another attempt."""
    settings = infra.settings.webhooks
    keyring = Keyring.from_settings(infra.settings.secrets)
    async with tenant_tx(infra.pool, org_id) as conn:
        claimed = await store.claim(conn, delivery_id, timedelta(seconds=settings.timeout_s + LEASE_SLACK_S))
        if claimed is None:
            return Attempt("skipped")
        if not claimed["enabled"]:
            await store.give_up(conn, delivery_id, None, "the webhook is disabled")
            return Attempt("failed")
        allow = await org_allowlist(conn)
        try:
            secrets: list[str] | None = await _secrets(conn, keyring, org_id, claimed)
            problem = None
        except SecretError as exc:
            secrets, problem = None, f"the webhook's signing secret cannot be used: {exc}"
    status: int | None = None
    started = time.monotonic()
    if secrets is not None:
        status, problem = await _post(infra, claimed, secrets, allow, resolver)
    duration_ms = int((time.monotonic() - started) * 1000)
    return await _record(infra, org_id, claimed, status, problem, duration_ms)


async def _post(infra: Infra, claimed: store.Claimed, secrets: list[str], allow: list[str],
                resolver: Resolver) -> tuple[int | None, str | None]:
    """(the receiver's HTTP status, why the attempt failed or None)."""
    settings = infra.settings.webhooks
    body = orjson.dumps(claimed["payload"])
    headers = webhook_signing.headers(secrets, claimed["id"], int(time.time()), body)
    headers["Content-Type"] = "application/json"
    try:
        async with Outbound(infra.settings.outbound, allow=allow, resolver=resolver) as http:
            # Redirects are not followed (Standard Webhooks): a 3xx is a failure the owner fixes.
            response = await http.request("POST", claimed["url"], content=body, headers=headers,
                                          timeout_s=settings.timeout_s, max_bytes=settings.max_response_bytes,
                                          follow_redirects=False)
    except OutboundError as exc:
        return None, str(exc)
    if response.ok:
        return response.status, None
    return response.status, f"the receiver answered HTTP {response.status}"


async def _record(infra: Infra, org_id: str, claimed: store.Claimed, status: int | None, problem: str | None,
                  duration_ms: int) -> Attempt:
    try:
        return await _record_in(infra, org_id, claimed, status, problem, duration_ms)
    except psycopg.errors.ForeignKeyViolation:  # the webhook was deleted during the attempt
        log.info("webhook delivery %s of org %s: its webhook was deleted meanwhile", claimed["id"], org_id)
        return Attempt("skipped")


async def _record_in(infra: Infra, org_id: str, claimed: store.Claimed, status: int | None, problem: str | None,
                     duration_ms: int) -> Attempt:
    settings = infra.settings.webhooks
    delivery_id, webhook_id, attempt = claimed["id"], claimed["webhook_id"], claimed["attempts"]
    async with tenant_tx(infra.pool, org_id) as conn:
        await store.record_attempt(conn, delivery_id, attempt, status, problem, duration_ms)
        if problem is None:
            assert status is not None
            await store.delivered(conn, delivery_id, webhook_id, status)
            return Attempt("delivered")
        wait = backoff_s(settings, attempt)
        deadline = claimed["created_at"] + timedelta(seconds=settings.max_age_s)
        if datetime.now(UTC) + timedelta(seconds=wait) > deadline:
            await store.give_up(conn, delivery_id, status, f"{problem} (given up after {attempt} attempts)")
            result = Attempt("failed")
        else:
            await store.retry_later(conn, delivery_id, timedelta(seconds=wait), status, problem)
            result = Attempt("retry", wait)
        since = await store.failed(conn, webhook_id, timedelta(days=settings.disable_after_days))
        if since is not None:
            reason = (f"no delivery succeeded since {since.astimezone(UTC).isoformat(timespec='seconds')} "
                      f"(AGENTOS_WEBHOOKS__DISABLE_AFTER_DAYS is {settings.disable_after_days:g}); last error: "
                      f"{problem}")
            if await store.disable(conn, webhook_id, reason):
                await audit.record(conn, "system", "webhook.disable", "webhook", webhook_id,
                                   {"failing_since": since.isoformat(), "last_error": problem})
                log.warning("webhook %s of org %s disabled: %s", webhook_id, org_id, reason)
                result = Attempt("failed")
    return result


async def announce(infra: Infra, org_id: str, session_id: str, delivery_ids: list[str]) -> None:
    """Send these just-committed deliveries (their ids as the insert returned them) to the
    webhook workers. Never raises: a delivery not sent now is sent by the watchdog once due."""
    try:
        for delivery_id in delivery_ids:
            await infra.jobs.enqueue_webhook(delivery_id, org_id)
    except Exception as exc:
        log.warning("webhook deliveries of session %s not sent to the workers (the watchdog will): %s",
                    session_id, exc)


async def due_for_resend(infra: Infra, limit: int) -> list[dict[str, Any]]:
    """Pending deliveries across orgs, due for `requeue_after_s` already: their message was lost
    or their wait was longer than a countdown (read-only scan; each attempt claims in its org)."""
    after = timedelta(seconds=infra.settings.webhooks.requeue_after_s)
    async with watchdog_scan_tx(infra.pool) as conn:
        return await store.scan_due(conn, after, limit)
