"""Webhooks, their secrets and their deliveries (`/v1/webhooks`)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from api.schemas.base import Out


class Webhook(Out):
    id: str
    url: str
    events: list[str]
    description: str
    enabled: bool
    disabled_reason: str | None
    failing_since: datetime | None = Field(description="Since when no attempt succeeded; null: the last one did.")
    previous_secret_until: datetime | None = Field(description="Until when the previous secret still signs.")
    created_by: str | None
    created_at: datetime
    updated_at: datetime
    secret: str | None = Field(default=None, description="On `POST` only: the signing secret (`whsec_…`), "
                                                          "shown this once.")


class WebhookSecret(Out):
    id: str
    secret: str = Field(description="The new signing secret (`whsec_…`), shown this once.")
    previous_secret_valid_until: datetime | None


class WebhookAttempt(Out):
    attempt: int
    status: int | None = Field(description="The receiver's HTTP status; null: no answer.")
    error: str | None
    duration_ms: int
    at: datetime


class WebhookDelivery(Out):
    id: str = Field(description="The `webhook-id` header of every attempt.")
    webhook_id: str
    event_type: str
    session_id: str
    seq: int
    run_id: str | None
    status: Literal["pending", "delivered", "failed"]
    attempts: int
    next_attempt_at: datetime
    last_status: int | None
    last_error: str | None
    delivered_at: datetime | None
    created_at: datetime
    attempt_log: list[WebhookAttempt] | None = None
