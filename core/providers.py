"""Model providers per org: what a run or a check needs to call one (its key read from the org
secrets store, its headers' secret references resolved), the connection test and the model list.

An agent names a provider in its `model` as `<provider name>:<model>`; the worker builds the
chat model from a `ProviderAccess` (orchestrator.models.providers.provider_model). Every request
goes through the outbound SSRF guard with the org's allowlist (core.outbound). The key leaves
this module only inside `ProviderAccess.api_key`, whose repr hides it; errors never quote it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, TypedDict

import httpx
import redis.asyncio as aioredis
from psycopg import AsyncConnection
from psycopg.rows import DictRow

from core.outbound import AddressGuard, Outbound, OutboundError, OutboundRefused, Resolver, system_resolver
from core.secrets import Keyring, SecretError, is_secret_ref, read_secret_in
from core.settings import OutboundSettings, Settings
from core.store import providers as store
from core.store.providers import ProviderKind, ProviderRow
from core.tenancy import AsyncPool, tenant_tx
from core.webhooks import org_allowlist

# Where each kind answers when the provider names no base URL.
DEFAULT_BASE_URLS: dict[str, str] = {"openai": "https://api.openai.com/v1", "anthropic": "https://api.anthropic.com"}
ANTHROPIC_VERSION = "2023-06-01"
DEFAULT_AZURE_API_VERSION = "2024-10-21"
MODELS_CACHE_KEY = "agentos:provider-models:{}"


class ProviderError(Exception):
    """A provider cannot be used as configured; the message names it and says why (never a key)."""


class ProviderNotFound(ProviderError):
    def __init__(self, name: str) -> None:
        super().__init__(f"the model provider {name!r} does not exist in this organisation (it may have been "
                         "deleted); create it with POST /v1/providers or change the agent's model")
        self.name = name


@dataclass(frozen=True)
class ProviderAccess:
    """One provider, ready to call."""

    id: str
    name: str
    kind: ProviderKind
    base_url: str
    api_version: str | None
    default_model: str | None
    headers: dict[str, str] = field(repr=False)
    api_key: str | None = field(repr=False)
    allow: tuple[str, ...] = ()  # the org's outbound allowlist


class ModelInfo(TypedDict):
    id: str
    created: int | None
    owned_by: str | None


@dataclass(frozen=True)
class Probe:
    """The answer of `POST /v1/providers/{id}/test`."""

    ok: bool
    latency_ms: int
    error: str | None = None
    models: list[ModelInfo] | None = None


def base_url_of(row: ProviderRow) -> str:
    url = row["base_url"] or DEFAULT_BASE_URLS.get(row["kind"])
    if url is None:
        raise ProviderError(f"the model provider {row['name']!r} ({row['kind']}) needs a base_url")
    return url.rstrip("/")


async def check_base_url(settings: OutboundSettings, allow: list[str], url: str,
                         resolver: Resolver = system_resolver) -> str | None:
    """Why the guard refuses `url` for this org now (a sentence), or None."""
    parsed = httpx.URL(url)
    try:
        await AddressGuard.from_settings(settings, allow=allow, resolver=resolver).resolve(
            parsed.host, parsed.port or (443 if parsed.scheme == "https" else 80))
    except OutboundError as exc:
        return str(exc)
    return None


async def access_in(conn: AsyncConnection[DictRow], keyring: Keyring, org_id: str, row: ProviderRow) -> ProviderAccess:
    """`row` with its key read and its headers' `{"secret": name}` values resolved, inside the
    caller's `tenant_tx` for `org_id`."""
    key: str | None = None
    try:
        if row["api_key_secret"]:
            key = await read_secret_in(conn, keyring, org_id, row["api_key_secret"])
        headers: dict[str, Any] = {}
        for name, value in (row["headers"] or {}).items():
            if is_secret_ref(value):
                value = await read_secret_in(conn, keyring, org_id, value["secret"])
            elif not isinstance(value, str):
                raise ProviderError(f"the model provider {row['name']!r} has a header {name!r} that is neither "
                                    "text nor a secret reference; set its headers again (PATCH)")
            headers[name] = value
    except SecretError as exc:
        raise ProviderError(f"the model provider {row['name']!r} cannot read its credentials: {exc}") from None
    return ProviderAccess(
        id=row["id"], name=row["name"], kind=row["kind"], base_url=base_url_of(row), api_version=row["api_version"],
        default_model=row["default_model"], headers=headers, api_key=key, allow=tuple(await org_allowlist(conn)),
    )


async def load(pool: AsyncPool, keyring: Keyring, org_id: str, name: str) -> ProviderAccess:
    """The org's provider called `name`, ready to call (ProviderNotFound, ProviderError)."""
    async with tenant_tx(pool, org_id) as conn:
        row = await store.by_name(conn, name)
        if row is None:
            raise ProviderNotFound(name)
        return await access_in(conn, keyring, org_id, row)


# --- talking to a provider ------------------------------------------------------------------------


def _auth_headers(access: ProviderAccess) -> dict[str, str]:
    headers = dict(access.headers)
    if access.kind == "anthropic":
        headers.setdefault("anthropic-version", ANTHROPIC_VERSION)
        if access.api_key:
            headers["x-api-key"] = access.api_key
    elif access.kind == "azure_openai":
        if access.api_key:
            headers["api-key"] = access.api_key
    elif access.api_key:
        headers["Authorization"] = f"Bearer {access.api_key}"
    return headers


def _models_url(access: ProviderAccess) -> tuple[str, dict[str, str | int]]:
    if access.kind == "anthropic":
        return f"{access.base_url}/v1/models", {"limit": 1000}
    if access.kind == "azure_openai":
        return f"{access.base_url}/openai/models", {"api-version": access.api_version or DEFAULT_AZURE_API_VERSION}
    return f"{access.base_url}/models", {}


def _reason(status: int, body: str) -> str:
    """A readable account of a provider's error answer."""
    try:
        detail: Any = json.loads(body)
    except ValueError:
        detail = None
    message = ""
    if isinstance(detail, dict):
        inner = detail.get("error", detail)
        if isinstance(inner, dict):
            message = str(inner.get("message") or "")
        elif isinstance(inner, str):
            message = inner
    if status in (401, 403):
        what = "authentication failed" if status == 401 else "permission denied"
        return f"{what} ({status}): the provider refused the API key; check the key (api_key or api_key_secret)"
    if status == 404:
        return "not found (404): check base_url (and for azure_openai the deployment and api_version)"
    if status == 429:
        return "rate limited (429): the provider asks to slow down; try again later"
    if status >= 500:
        return f"server error ({status}): the provider failed; try again later"
    return f"request rejected ({status})" + (f": {message[:200]}" if message else "")


async def _get(access: ProviderAccess, settings: OutboundSettings, url: str, params: dict[str, str | int],
               retries: int, resolver: Resolver) -> tuple[int, str, Any]:
    async with Outbound(settings, allow=access.allow, resolver=resolver) as client:
        response = await client.request("GET", url, headers=_auth_headers(access), params=params, retries=retries)
    text = response.text()
    try:
        body = response.json() if response.ok else None
    except ValueError:
        body = None
    return response.status, text, body


def _redact(text: str, access: ProviderAccess) -> str:
    """`text` without the provider's key or header values (a provider may echo them)."""
    for value in (access.api_key, *access.headers.values()):
        if value and len(value) >= 4:
            text = text.replace(value, "[redacted]")
    return text


async def fetch_models(access: ProviderAccess, settings: OutboundSettings, *, retries: int = 1,
                       resolver: Resolver = system_resolver) -> list[ModelInfo]:
    """The provider's models, as it lists them (ProviderError with a readable reason)."""
    url, params = _models_url(access)
    try:
        status, text, body = await _get(access, settings, url, params, retries, resolver)
    except OutboundRefused as exc:
        raise ProviderError(f"base_url refused: {exc}") from None
    except OutboundError as exc:
        raise ProviderError(f"unreachable: {_redact(str(exc), access)}") from None
    if not 200 <= status < 300:
        raise ProviderError(_redact(_reason(status, text), access))
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, list):
        raise ProviderError(f"unexpected answer from {url}: no `data` list of models")
    models: list[ModelInfo] = []
    for item in data:
        if isinstance(item, dict) and isinstance(item.get("id"), str):
            created = item.get("created")
            owned = item.get("owned_by")
            models.append(ModelInfo(id=item["id"], created=created if isinstance(created, int) else None,
                                    owned_by=owned if isinstance(owned, str) else None))
    return sorted(models, key=lambda m: m["id"])


async def _azure_deployment(access: ProviderAccess, settings: OutboundSettings, resolver: Resolver) -> str | None:
    """Why the azure deployment `default_model` cannot answer (None: it does), by a 1-token call."""
    url = f"{access.base_url}/openai/deployments/{access.default_model}/chat/completions"
    async with Outbound(settings, allow=access.allow, resolver=resolver) as client:
        response = await client.request(
            "POST", url, headers=_auth_headers(access), retries=1,
            params={"api-version": access.api_version or DEFAULT_AZURE_API_VERSION},
            json={"messages": [{"role": "user", "content": "ping"}], "max_tokens": 1})
    if response.status == 404:
        return f"model unknown: the deployment {access.default_model!r} does not exist"
    return None if response.ok else _redact(_reason(response.status, response.text()), access)


async def probe(access: ProviderAccess, settings: OutboundSettings, *,
                resolver: Resolver = system_resolver) -> Probe:
    """A cheap real call: list the models (and check `default_model` is one of them)."""
    started = time.monotonic()

    def took() -> int:
        return int((time.monotonic() - started) * 1000)

    try:
        models = await fetch_models(access, settings, resolver=resolver)
        if access.default_model:
            if access.kind == "azure_openai":  # deployments are not models: ask the deployment itself
                why = await _azure_deployment(access, settings, resolver)
                if why is not None:
                    return Probe(False, took(), why)
            elif access.default_model not in {m["id"] for m in models}:
                return Probe(False, took(), f"model unknown: {access.default_model!r} is not among the provider's "
                                            f"{len(models)} models")
    except ProviderError as exc:
        return Probe(False, took(), str(exc))
    except OutboundError as exc:
        return Probe(False, took(), f"unreachable: {_redact(str(exc), access)}")
    return Probe(True, took(), None, models)


async def cached_models(redis: aioredis.Redis, access: ProviderAccess, settings: Settings, *,
                        refresh: bool = False) -> tuple[list[ModelInfo], bool]:
    """(the provider's models, whether they came from the cache): kept in Redis for
    `models.provider_models_ttl_s`, so listing does not call the provider each time."""
    key = MODELS_CACHE_KEY.format(access.id)
    if not refresh:
        cached = await redis.get(key)
        if cached is not None:
            return list(json.loads(cached)), True
    models = await fetch_models(access, settings.outbound)
    await redis.set(key, json.dumps(models), ex=max(1, int(settings.models.provider_models_ttl_s)))
    return models, False


async def forget_models(redis: aioredis.Redis, provider_id: str) -> None:
    await redis.delete(MODELS_CACHE_KEY.format(provider_id))
