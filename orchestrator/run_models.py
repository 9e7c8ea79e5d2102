"""The chat model a run calls for a model spec: a built-in provider's (platform credentials from
the environment) or the org's own provider's (`<provider name>:<model>`, its key from the org
secrets store), resolved once per run and kept in `RunContext.model_cache`."""

from __future__ import annotations

from typing import Any

from core.agent_config import BUILTIN_PROVIDERS
from core.providers import ProviderAccess, ProviderError, check_base_url, load
from core.secrets import Keyring
from orchestrator.context import RunContext
from orchestrator.models import ModelConfigError, ProviderCallFailed, describe_provider_error, provider_model
from orchestrator.models import resolve_model as resolve_builtin


def _provider_name(spec: str) -> str:
    return spec.partition(":")[0].strip().lower()


async def _build(ctx: RunContext, spec: str) -> Any:
    provider, _, name = spec.partition(":")
    provider = provider.strip().lower()
    if provider in BUILTIN_PROVIDERS:
        return resolve_builtin(spec, ctx.models)
    if ctx.infra is None:
        raise ModelConfigError(f"model {spec!r} names the provider {provider!r}, but this worker cannot read org "
                               "providers")
    settings = ctx.infra.settings
    try:
        access = await load(ctx.pool, Keyring.from_settings(settings.secrets), ctx.org_id, provider)
    except ProviderError as exc:
        raise ModelConfigError(f"model {spec!r}: {exc}") from None
    # Checked here for a readable refusal; every connection is checked again (core.outbound).
    reason = await check_base_url(settings.outbound, list(access.allow), access.base_url)
    if reason is not None:
        raise ModelConfigError(f"model {spec!r}: the base_url of the model provider {provider!r} is refused: "
                               f"{reason}")
    ctx.provider_access[provider] = access
    return provider_model(access, name.strip(), ctx.models, settings.outbound)


async def model_for(ctx: RunContext, spec: str) -> Any:
    """The chat model for `spec` in this run (ModelConfigError when it cannot be built)."""
    if spec not in ctx.model_cache:
        ctx.model_cache[spec] = await _build(ctx, spec)
    return ctx.model_cache[spec]


def readable(ctx: RunContext, spec: str, exc: BaseException, attempts: int) -> BaseException:
    """The error to report for a failed call of `spec`: for an org's provider, one already worded
    (named, and free of its key); a built-in provider's error as it is."""
    access: ProviderAccess | None = ctx.provider_access.get(_provider_name(spec))
    if access is not None:
        return ProviderCallFailed(describe_provider_error(exc, access, attempts=attempts))
    return exc
