"""Model providers per org: an admin registers an OpenAI, Anthropic, OpenAI-compatible or Azure
OpenAI endpoint with its key; agents name it in their `model` (`<name>:<model>`). The key goes to
the org secrets store and is never returned; the base URL passes the outbound SSRF guard with the
org's allowlist at creation and again at every connection (core.providers)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from starlette.responses import Response

from api.endpoint import Call, NoBody, Param, endpoint, resource
from api.schemas.base import page_of
from api.schemas.providers import Provider, ProviderModels, ProviderTest
from core.agent_config import BUILTIN_PROVIDERS, PROVIDER_NAME_PATTERN
from core.errors import ApiError
from core.ids import new_id
from core.pagination import page
from core.providers import ProviderError, access_in, cached_models, check_base_url, forget_models, probe
from core.secrets import Keyring, check_name, store_secret
from core.store import audit
from core.store import providers as store
from core.store import secrets as secret_store
from core.store.providers import ProviderKind, ProviderRow
from core.tenancy import tenant_tx
from core.webhooks import org_allowlist

MAX_PROVIDERS = 50
HeaderValue = str | dict[str, str]


def _headers(value: dict[str, HeaderValue] | None) -> dict[str, HeaderValue] | None:
    for name, item in (value or {}).items():
        if not name or len(name) > 100 or not all(33 <= ord(c) < 127 and c != ":" for c in name):
            raise ValueError(f"{name!r} is not a valid header name")
        if isinstance(item, dict) and (set(item) != {"secret"}):
            raise ValueError(f"header {name!r}: a value is a string or {{\"secret\": \"<name>\"}}")
        if name.lower() in ("authorization", "x-api-key", "api-key"):
            raise ValueError(f"header {name!r} carries the key: give it as api_key or api_key_secret")
    return value


def _base_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("http://", "https://")):
        raise ValueError("base_url is an http(s) URL")
    return value.rstrip("/") if value else value


class ProviderCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=PROVIDER_NAME_PATTERN, description="Lower-case; what agents' `model` names.")
    kind: ProviderKind
    base_url: str | None = Field(default=None, max_length=2048)
    api_version: str | None = Field(default=None, max_length=40)
    api_key: SecretStr | None = Field(default=None, description="Stored in the org secrets store; never shown.")
    api_key_secret: str | None = Field(default=None, max_length=128, description="An existing org secret's name.")
    default_model: str | None = Field(default=None, max_length=200)
    headers: dict[str, HeaderValue] = Field(default_factory=dict, max_length=20)

    _check_headers = field_validator("headers")(_headers)
    _check_url = field_validator("base_url")(_base_url)

    @field_validator("name")
    @classmethod
    def _not_builtin(cls, value: str) -> str:
        if value in BUILTIN_PROVIDERS:
            raise ValueError(f"{value!r} is a built-in provider; choose another name, e.g. 'my{value}'")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> ProviderCreate:
        if self.api_key is not None and self.api_key_secret is not None:
            raise ValueError("give api_key or api_key_secret, not both")
        if self.kind in ("openai_compatible", "azure_openai") and not self.base_url:
            raise ValueError(f"a {self.kind} provider needs a base_url")
        if self.kind != "openai_compatible" and self.api_key is None and self.api_key_secret is None:
            raise ValueError(f"a {self.kind} provider needs api_key or api_key_secret")
        return self


class ProviderPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_url: str | None = Field(default=None, max_length=2048)
    api_version: str | None = Field(default=None, max_length=40)
    api_key: SecretStr | None = None
    api_key_secret: str | None = Field(default=None, max_length=128)
    default_model: str | None = Field(default=None, max_length=200)
    headers: dict[str, HeaderValue] | None = Field(default=None, max_length=20)

    _check_headers = field_validator("headers")(_headers)
    _check_url = field_validator("base_url")(_base_url)

    @model_validator(mode="after")
    def _one_key(self) -> ProviderPatch:
        if self.api_key is not None and self.api_key_secret is not None:
            raise ValueError("give api_key or api_key_secret, not both")
        return self


def _public(row: ProviderRow) -> dict[str, Any]:
    body = {k: v for k, v in row.items() if k != "owns_secret"}
    if row["owns_secret"]:  # the org did not name this secret: it is ours, an implementation detail
        body["api_key_secret"] = None
    return body


def _not_found(provider_id: str) -> ApiError:
    return ApiError("NOT_FOUND", f"No model provider with id {provider_id!r} in this organisation.")


async def _check_url(call: Call[Any], url: str | None) -> None:
    if url is None:
        return
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        allow = await org_allowlist(conn)
    reason = await check_base_url(call.settings.outbound, allow, url)
    if reason is not None:
        raise ApiError("PROVIDER_URL_REFUSED", f"The provider's base_url is refused: {reason}",
                       details={"field": "base_url"})


async def _check_secret(conn: Any, name: str | None) -> None:
    if name is None:
        return
    try:
        check_name(name)
    except ValueError as exc:
        raise ApiError("VALIDATION_FAILED", str(exc), details={"fields": [
            {"field": "api_key_secret", "message": str(exc)}]}) from None
    if await secret_store.get_sealed(conn, name) is None:
        message = f"no secret named {name!r} in this organisation (store it with PUT /v1/secrets/{name})"
        raise ApiError("VALIDATION_FAILED", message, details={"fields": [
            {"field": "api_key_secret", "message": message}]})


@endpoint("Register a model provider; its key goes to the org secrets store and is never shown.", role="admin",
          body=ProviderCreate, status=201, response=Provider, errors=("PROVIDER_URL_REFUSED", "CONFLICT"))
async def create_provider(call: Call[ProviderCreate]) -> Response:
    body, principal = call.body, call.principal
    await _check_url(call, body.base_url)
    keyring = Keyring.from_settings(call.settings.secrets)
    provider_id = new_id("provider")
    async with tenant_tx(call.pool, principal.org_id) as conn:
        if await store.count(conn) >= MAX_PROVIDERS:
            raise ApiError("QUOTA_EXCEEDED", f"This organisation has {MAX_PROVIDERS} model providers, the most "
                           "allowed; delete one first.")
        await _check_secret(conn, body.api_key_secret)
        secret = store.secret_name(provider_id) if body.api_key is not None else body.api_key_secret
        row = await store.create(conn, {
            "id": provider_id, "name": body.name, "kind": body.kind, "base_url": body.base_url,
            "api_version": body.api_version, "default_model": body.default_model, "headers": body.headers,
            "api_key_secret": secret, "owns_secret": body.api_key is not None, "created_by": principal.user_id})
        if row is None:
            raise ApiError("CONFLICT", f"A model provider named {body.name!r} already exists in this organisation.")
        if body.api_key is not None:
            await store_secret(conn, keyring, principal.org_id, store.secret_name(provider_id),
                               body.api_key.get_secret_value(), principal.user_id)
        await audit.record(conn, principal.actor, "provider.create", "provider", provider_id,
                           {"name": body.name, "kind": body.kind, "base_url": body.base_url})
    return call.reply(_public(row), status=201)


@endpoint("List the org's model providers, newest first.", role="viewer", paginated=True,
          response=page_of(Provider))
async def list_providers(call: Call[Any]) -> Response:
    cursor, limit = call.page_params()
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        rows = await store.list_providers(conn, cursor, limit)
    data, next_cursor = page(rows, limit)
    return call.page([_public(r) for r in data], next_cursor)


@endpoint("Read one model provider (never its key).", role="viewer", response=Provider)
async def get_provider(call: Call[Any]) -> Response:
    provider_id = call.path_id("provider_id", "provider")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await store.get(conn, provider_id)
    if row is None:
        raise _not_found(provider_id)
    return call.reply(_public(row))


@endpoint("Change a model provider's base URL, key, default model or headers (its name and kind stay).",
          role="admin", body=ProviderPatch, response=Provider, errors=("PROVIDER_URL_REFUSED",))
async def patch_provider(call: Call[ProviderPatch]) -> Response:
    provider_id, body, principal = call.path_id("provider_id", "provider"), call.body, call.principal
    await _check_url(call, body.base_url)
    # null means "leave it" for the key fields; a kind that needs a base_url keeps one.
    changes: dict[str, Any] = {k: v for k, v in body.model_dump(exclude_unset=True, exclude={"api_key"}).items()
                               if v is not None or k not in ("api_key_secret", "base_url")}
    keyring = Keyring.from_settings(call.settings.secrets)
    async with tenant_tx(call.pool, principal.org_id) as conn:
        current = await store.get(conn, provider_id)
        if current is None:
            raise _not_found(provider_id)
        await _check_secret(conn, body.api_key_secret)
        if body.api_key is not None:
            await store_secret(conn, keyring, principal.org_id, store.secret_name(provider_id),
                               body.api_key.get_secret_value(), principal.user_id)
            changes |= {"api_key_secret": store.secret_name(provider_id), "owns_secret": True}
        elif body.api_key_secret is not None:
            changes["owns_secret"] = False
            if current["owns_secret"]:  # the key we kept is replaced by the org's own secret
                await secret_store.delete(conn, store.secret_name(provider_id))
        row = await store.update(conn, provider_id, changes)
        assert row is not None
        await audit.record(conn, principal.actor, "provider.update", "provider", provider_id,
                           {**body.model_dump(mode="json", exclude_unset=True, exclude={"api_key"}),
                            **({"api_key": "replaced"} if body.api_key is not None else {})})
    await forget_models(call.infra.redis, provider_id)
    return call.reply(_public(row))


@endpoint("Delete a model provider (and the key stored for it); agents naming it fail their next run with "
          "MODEL_CONFIG.", role="admin", status=204)
async def delete_provider(call: Call[Any]) -> Response:
    provider_id = call.path_id("provider_id", "provider")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await store.delete(conn, provider_id)
        if row is None:
            raise _not_found(provider_id)
        if row["owns_secret"]:
            await secret_store.delete(conn, store.secret_name(provider_id))
        await audit.record(conn, call.principal.actor, "provider.delete", "provider", provider_id,
                           {"name": row["name"]})
    await forget_models(call.infra.redis, provider_id)
    return Response(status_code=204)


async def _access(call: Call[Any], provider_id: str) -> Any:
    keyring = Keyring.from_settings(call.settings.secrets)
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await store.get(conn, provider_id)
        if row is None:
            raise _not_found(provider_id)
        return await access_in(conn, keyring, call.principal.org_id, row)


@endpoint("Test the connection with a cheap real call (the model list): ok, or why not (bad key, unreachable, "
          "model unknown).", role="admin", body=NoBody, response=ProviderTest)
async def test_provider(call: Call[NoBody]) -> Response:
    provider_id = call.path_id("provider_id", "provider")
    try:
        access = await _access(call, provider_id)
    except ProviderError as exc:
        return call.reply({"ok": False, "latency_ms": 0, "error": str(exc)})
    result = await probe(access, call.settings.outbound)
    return call.reply({"ok": result.ok, "latency_ms": result.latency_ms, "error": result.error})


@endpoint("The provider's models, as it lists them (cached for AGENTOS_MODELS__PROVIDER_MODELS_TTL_S; "
          "?refresh=true asks the provider again).", role="viewer", response=ProviderModels,
          errors=("PROVIDER_FAILED",), params=(Param("refresh", {"type": "boolean"}),))
async def list_models(call: Call[Any]) -> Response:
    provider_id = call.path_id("provider_id", "provider")
    refresh = call.request.query_params.get("refresh", "").lower() in ("1", "true")
    try:
        access = await _access(call, provider_id)
        models, cached = await cached_models(call.infra.redis, access, call.settings, refresh=refresh)
    except ProviderError as exc:
        raise ApiError("PROVIDER_FAILED", f"The provider did not list its models: {exc}") from None
    return call.reply({"data": models, "cached": cached})


routes = [
    resource("/v1/providers", GET=list_providers, POST=create_provider),
    resource("/v1/providers/{provider_id}", GET=get_provider, PATCH=patch_provider, DELETE=delete_provider),
    resource("/v1/providers/{provider_id}/test", POST=test_provider),
    resource("/v1/providers/{provider_id}/models", GET=list_models),
]
