"""Webhooks: an admin registers an URL for run events; deliveries are signed the Standard
Webhooks way (docs/integrations.md). The signing secret is shown once (at creation and at
rotation) and kept in the org secrets store; the URL passes the outbound SSRF guard at creation
and again at every delivery."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from starlette.responses import Response

from api.deferred import HEADER as DEFERRED
from api.deferred import send_or_defer
from api.endpoint import Call, NoBody, Param, endpoint, resource, validation_failed
from api.schemas.base import page_of
from api.schemas.webhooks import Webhook, WebhookDelivery, WebhookSecret
from core import webhook_signing
from core.errors import ApiError
from core.events import WEBHOOK_EVENT_TYPES
from core.pagination import page
from core.secrets import Keyring, SecretError, read_secret_in, store_secret
from core.store import audit
from core.store import secrets as secret_store
from core.store import webhooks as store
from core.tenancy import tenant_tx
from core.webhooks import check_url, org_allowlist

EventName = Literal["run.succeeded", "run.failed", "run.cancelled", "run.timed_out"]
assert set(EventName.__args__) == WEBHOOK_EVENT_TYPES  # type: ignore[attr-defined]


def _secret(value: SecretStr | None) -> SecretStr | None:
    if value is not None:
        webhook_signing.secret_key(value.get_secret_value())  # ValueError: pydantic's 422, never quoting it
    return value


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str = Field(min_length=8, max_length=2048)
    events: list[EventName] = Field(min_length=1, max_length=len(WEBHOOK_EVENT_TYPES))
    description: str = Field(default="", max_length=500)
    # `whsec_` + base64 of 24-64 bytes; generated when absent. Shown in no response but this one.
    secret: SecretStr | None = None

    _check_secret = field_validator("secret")(_secret)


class WebhookPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str | None = Field(default=None, min_length=8, max_length=2048)
    events: list[EventName] | None = Field(default=None, min_length=1, max_length=len(WEBHOOK_EVENT_TYPES))
    description: str | None = Field(default=None, max_length=500)
    enabled: bool | None = None


class RotateSecret(BaseModel):
    model_config = ConfigDict(extra="forbid")
    secret: SecretStr | None = None

    _check_secret = field_validator("secret")(_secret)


def _public(row: store.WebhookRow) -> dict[str, Any]:
    return dict(row)


def _not_found(webhook_id: str) -> ApiError:
    return ApiError("NOT_FOUND", f"No webhook with id {webhook_id!r} in this organisation.")


async def _check_url(call: Call[Any], url: str) -> None:
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        allow = await org_allowlist(conn)
    reason = await check_url(call.settings, allow, url)
    if reason is not None:
        raise ApiError("WEBHOOK_URL_REFUSED", f"The webhook URL is refused: {reason}", details={"field": "url"})


@endpoint("Register a webhook for run events; the answer holds its signing secret, shown this once.",
          role="admin", body=WebhookCreate, status=201, response=Webhook)
async def create_webhook(call: Call[WebhookCreate]) -> Response:
    body, principal = call.body, call.principal
    await _check_url(call, body.url)
    secret = body.secret.get_secret_value() if body.secret else webhook_signing.new_secret()
    keyring = Keyring.from_settings(call.settings.secrets)
    async with tenant_tx(call.pool, principal.org_id) as conn:
        if await store.count(conn) >= call.settings.webhooks.max_per_org:
            raise ApiError("QUOTA_EXCEEDED", f"This organisation has {call.settings.webhooks.max_per_org} webhooks, "
                           "the most allowed (AGENTOS_WEBHOOKS__MAX_PER_ORG); delete one first.")
        row = await store.create(conn, body.url, sorted(set(body.events)), body.description, principal.user_id)
        await store_secret(conn, keyring, principal.org_id, store.secret_name(row["id"]), secret, principal.user_id)
        await audit.record(conn, principal.actor, "webhook.create", "webhook", row["id"],
                           {"url": body.url, "events": row["events"]})
    return call.reply({**_public(row), "secret": secret}, status=201)


@endpoint("List the org's webhooks, newest first.", role="admin", paginated=True, response=page_of(Webhook))
async def list_webhooks(call: Call[Any]) -> Response:
    cursor, limit = call.page_params()
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        rows = await store.list_webhooks(conn, cursor, limit)
    data, next_cursor = page(rows, limit)
    return call.page([_public(r) for r in data], next_cursor)


@endpoint("Read one webhook (never its secret).", role="admin", response=Webhook)
async def get_webhook(call: Call[Any]) -> Response:
    webhook_id = call.path_id("webhook_id", "webhook")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await store.get(conn, webhook_id)
    if row is None:
        raise _not_found(webhook_id)
    return call.reply(_public(row))


@endpoint("Change a webhook's URL, events, description, or enable it again.", role="admin", body=WebhookPatch,
          response=Webhook)
async def patch_webhook(call: Call[WebhookPatch]) -> Response:
    webhook_id, body = call.path_id("webhook_id", "webhook"), call.body
    if body.url is not None:
        await _check_url(call, body.url)
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await store.update(conn, webhook_id, url=body.url,
                                 events=sorted(set(body.events)) if body.events is not None else None,
                                 description=body.description, enabled=body.enabled)
        if row is None:
            raise _not_found(webhook_id)
        await audit.record(conn, call.principal.actor, "webhook.update", "webhook", webhook_id,
                           body.model_dump(mode="json", exclude_unset=True))
    return call.reply(_public(row))


@endpoint("Delete a webhook, its deliveries and its secrets.", role="admin", status=204)
async def delete_webhook(call: Call[Any]) -> Response:
    webhook_id = call.path_id("webhook_id", "webhook")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        if not await store.delete(conn, webhook_id):
            raise _not_found(webhook_id)
        for previous in (False, True):
            await secret_store.delete(conn, store.secret_name(webhook_id, previous=previous))
        await audit.record(conn, call.principal.actor, "webhook.delete", "webhook", webhook_id)
    return Response(status_code=204)


@endpoint("Replace the signing secret; the old one keeps signing (a second signature) for the grace period "
          "(AGENTOS_WEBHOOKS__ROTATION_GRACE_S). The answer holds the new secret, shown this once.", role="admin",
          body=RotateSecret, response=WebhookSecret)
async def rotate_secret(call: Call[RotateSecret]) -> Response:
    webhook_id, principal = call.path_id("webhook_id", "webhook"), call.principal
    secret = call.body.secret.get_secret_value() if call.body.secret else webhook_signing.new_secret()
    keyring = Keyring.from_settings(call.settings.secrets)
    grace = call.settings.webhooks.rotation_grace_s
    until = datetime.now(UTC) + timedelta(seconds=grace) if grace > 0 else None
    org_id = principal.org_id
    async with tenant_tx(call.pool, org_id) as conn:
        row = await store.rotated(conn, webhook_id, until)  # locks the webhook: one rotation at a time
        if row is None:
            raise _not_found(webhook_id)
        try:
            old: str | None = await read_secret_in(conn, keyring, org_id, store.secret_name(webhook_id))
        except SecretError:  # missing or unreadable: nothing to keep in grace
            old = None
        if old is not None and until is not None:
            await store_secret(conn, keyring, org_id, store.secret_name(webhook_id, previous=True), old,
                               principal.user_id)
        await store_secret(conn, keyring, org_id, store.secret_name(webhook_id), secret, principal.user_id)
        await audit.record(conn, principal.actor, "webhook.rotate_secret", "webhook", webhook_id,
                           {"previous_valid_until": until.isoformat() if until else None})
    return call.reply({"id": webhook_id, "secret": secret, "previous_secret_valid_until": until})


@endpoint("List a webhook's deliveries, newest first, each with its attempts (?status=pending|delivered|failed).",
          role="admin", paginated=True, response=page_of(WebhookDelivery),
          params=(Param("status", {"type": "string", "enum": ["pending", "delivered", "failed"]}),))
async def list_deliveries(call: Call[Any]) -> Response:
    webhook_id = call.path_id("webhook_id", "webhook")
    cursor, limit = call.page_params()
    status = call.request.query_params.get("status")
    if status is not None and status not in ("pending", "delivered", "failed"):
        raise validation_failed([{"field": "status", "message": "is one of pending, delivered, failed"}])
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        if await store.get(conn, webhook_id) is None:
            raise _not_found(webhook_id)
        rows = await store.list_deliveries(conn, webhook_id, cursor, limit, status)
    data, next_cursor = page(rows, limit)
    return call.page(data, next_cursor)


@endpoint("Send a delivery again now, with the same webhook-id (whatever its state).", role="admin", body=NoBody,
          status=202, response=WebhookDelivery, errors=("WEBHOOK_DISABLED",), headers=(DEFERRED,))
async def retry_delivery(call: Call[NoBody]) -> Response:
    webhook_id = call.path_id("webhook_id", "webhook")
    delivery_id = call.path_id("delivery_id", "webhook_delivery")
    org_id = call.principal.org_id
    async with tenant_tx(call.pool, org_id) as conn:
        hook = await store.get(conn, webhook_id)
        if hook is None:
            raise _not_found(webhook_id)
        if not hook["enabled"]:
            raise ApiError("WEBHOOK_DISABLED", f"The webhook {webhook_id} is disabled ({hook['disabled_reason']}); "
                           "enable it with PATCH enabled: true, then retry.")
        row = await store.retry_now(conn, webhook_id, delivery_id)
        if row is None:
            raise ApiError("NOT_FOUND", f"No delivery with id {delivery_id!r} for this webhook.")
        await audit.record(conn, call.principal.actor, "webhook.retry_delivery", "webhook", webhook_id,
                           {"delivery_id": delivery_id})
    deferral = await send_or_defer(call.infra.jobs.enqueue_webhook(delivery_id, org_id),
                                   f"webhook delivery {delivery_id}")
    return call.reply(row, status=202, headers=deferral)


routes = [
    resource("/v1/webhooks", GET=list_webhooks, POST=create_webhook),
    resource("/v1/webhooks/{webhook_id}", GET=get_webhook, PATCH=patch_webhook, DELETE=delete_webhook),
    resource("/v1/webhooks/{webhook_id}/rotate-secret", POST=rotate_secret),
    resource("/v1/webhooks/{webhook_id}/deliveries", GET=list_deliveries),
    resource("/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/retry", POST=retry_delivery),
]
