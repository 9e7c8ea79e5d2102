"""Model providers per org (`/v1/providers`): never their key."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from api.schemas.base import Out
from core.store.providers import ProviderKind


class Provider(Out):
    id: str = Field(examples=["prv_01a2b3c4d5e6f708192a3b4c5d6e"])
    name: str = Field(description="What an agent's `model` names: `<name>:<model>`.")
    kind: ProviderKind
    base_url: str | None
    api_version: str | None = Field(description="azure_openai only: the API version of its requests.")
    default_model: str | None
    headers: dict[str, Any] = Field(description="Extra request headers; `{\"secret\": name}` values come from "
                                                "the org secrets store.")
    api_key_secret: str | None = Field(description="The org secret holding the API key (its value is never shown).")
    created_by: str | None
    created_at: datetime
    updated_at: datetime


class ProviderTest(Out):
    ok: bool
    latency_ms: int
    error: str | None = Field(description="Why not: bad key, unreachable, model unknown, …")


class ProviderModel(Out):
    id: str
    created: int | None
    owned_by: str | None


class ProviderModels(Out):
    data: list[ProviderModel]
    cached: bool = Field(description="Whether the list came from the cache (AGENTOS_MODELS__PROVIDER_MODELS_TTL_S).")
