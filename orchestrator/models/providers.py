"""Build chat models from `provider:model` specs, and retry the transient failures of their calls."""

from __future__ import annotations

import asyncio
import random
import re
import sys
from collections.abc import Awaitable, Callable
from types import ModuleType
from typing import Any, TypeVar

import httpx
import httpx2
from langchain_core.exceptions import ModelError
from langchain_core.language_models import BaseChatModel

from core.agent_config import MODEL_PROVIDERS
from core.providers import ProviderAccess
from core.settings import ModelSettings, OutboundSettings
from orchestrator.models.offline import OfflineChatModel, OfflineModelError

T = TypeVar("T")

OPENAI_KEY_ENV = "AGENTOS_MODELS__OPENAI_API_KEY"
ANTHROPIC_KEY_ENV = "AGENTOS_MODELS__ANTHROPIC_API_KEY"
_RETRY_STATUSES = {408, 409, 429}
_SECRET = re.compile(r"\b(?:sk|pk|rk)-[A-Za-z0-9_\-*.]{4,}|(?i:bearer\s+\S+)")


class ModelConfigError(ValueError):
    """A model spec or provider configuration that cannot work."""


class ProviderCallFailed(Exception):
    """A call to an org's own provider failed; the message is already readable and free of its key."""


def resolve_model(spec: str, settings: ModelSettings) -> BaseChatModel:
    """The chat model for `spec` (`offline:<name>`, `openai:<model>`, `anthropic:<model>`).

    Build one per run: its async HTTP client belongs to the event loop that first uses it.
    Release it with `aclose_model`. Provider clients never retry; use `with_retries`.
    """
    provider, sep, name = spec.partition(":")
    provider, name = provider.strip().lower(), name.strip()
    if not sep or not name:
        raise ModelConfigError(f"model {spec!r} must look like 'provider:model', e.g. 'offline:default'")
    if provider == "offline":
        return OfflineChatModel(model_name=name)
    if provider == "openai":
        return _openai(name, settings)
    if provider == "anthropic":
        return _anthropic(name, settings)
    raise ModelConfigError(f"unknown model provider {provider!r} in {spec!r}; use one of {', '.join(MODEL_PROVIDERS)}")


def require_credentials(spec: str, settings: ModelSettings) -> None:
    """ModelConfigError when an `openai:` or `anthropic:` spec has no credentials to call with
    (also checked by `agentos memory reembed` for embedding specs, with the same message)."""
    provider, _, name = spec.partition(":")
    provider, name = provider.strip().lower(), name.strip()
    if provider == "openai" and settings.openai_api_key is None and not settings.openai_base_url:
        raise ModelConfigError(
            f"openai:{name} needs an API key: set {OPENAI_KEY_ENV} "
            "(or AGENTOS_MODELS__OPENAI_BASE_URL for a local OpenAI-compatible server)"
        )
    if provider == "anthropic" and settings.anthropic_api_key is None:
        raise ModelConfigError(f"anthropic:{name} needs an API key: set {ANTHROPIC_KEY_ENV}")


def _openai(name: str, settings: ModelSettings) -> BaseChatModel:
    require_credentials(f"openai:{name}", settings)
    from orchestrator.models import sdk_models  # lazy: see its docstring

    return sdk_models.openai_model(name, settings)


def _anthropic(name: str, settings: ModelSettings) -> BaseChatModel:
    require_credentials(f"anthropic:{name}", settings)
    from orchestrator.models import sdk_models  # lazy: see its docstring

    return sdk_models.anthropic_model(name, settings)


def provider_model(access: ProviderAccess, name: str, settings: ModelSettings,
                   outbound: OutboundSettings) -> BaseChatModel:
    """The chat model `name` of an org's own provider: its key and headers, and an HTTP client whose
    every connection passes the outbound guard with the org's allowlist. Never retries by itself."""
    from orchestrator.models import sdk_models  # lazy: see its docstring

    return sdk_models.provider_model(access, name, settings, outbound)


async def aclose_model(model: BaseChatModel) -> None:
    """Close the async HTTP client `resolve_model` gave `model` (a no-op for the offline model)."""
    sdk_models = sys.modules.get("orchestrator.models.sdk_models")
    if sdk_models is not None:  # not loaded: no SDK model was ever made
        await sdk_models.aclose_model(model)


def _sdk(name: str) -> ModuleType | None:
    """The provider SDK `name` if this process loaded it. The SDKs are imported on first use
    (`sdk_models`), and an error of theirs cannot exist before: not loaded means not theirs."""
    return sys.modules.get(name)


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the same model call may succeed (network, timeout, 429, 5xx)."""
    if isinstance(exc, ModelError):
        return exc.is_retryable
    for sdk in filter(None, (_sdk("openai"), _sdk("anthropic"))):
        if isinstance(exc, sdk.APIConnectionError):
            return True
        if isinstance(exc, sdk.APIStatusError):
            status: int = exc.status_code
            return status in _RETRY_STATUSES or status >= 500
    return isinstance(exc, httpx.TransportError | httpx2.TransportError | ConnectionError)


def retry_after_s(exc: BaseException) -> float | None:
    """The delay a provider asked for with its answer's Retry-After (seconds), if any."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


async def with_retries(
    fn: Callable[[], Awaitable[T]],
    *,
    attempts: int,
    base_delay_s: float,
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    max_delay_s: float = 30.0,
) -> T:
    """Await `fn()` up to `attempts` times, backing off exponentially with jitter on transient errors,
    or as long as the provider's Retry-After asks.

    `on_retry(attempt, error, delay_s)` runs before each pause; `attempt` counts from 1.
    A non-transient error, or the last one, is raised as it is; so is an error whose Retry-After
    is longer than `max_delay_s` (waiting that long is beyond the retry budget).
    """
    attempt = 0
    while True:
        attempt += 1
        try:
            return await fn()
        except Exception as exc:
            if attempt >= attempts or not is_transient(exc):
                raise
            asked = retry_after_s(exc)
            if asked is not None and asked > max_delay_s:
                raise
            delay = asked if asked is not None else min(
                max_delay_s, base_delay_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            await asyncio.sleep(delay)


def _provider(exc: BaseException) -> str:
    openai, anthropic = _sdk("openai"), _sdk("anthropic")
    if openai is not None and isinstance(exc, openai.OpenAIError):
        return "openai"
    if anthropic is not None and isinstance(exc, anthropic.AnthropicError):
        return "anthropic"
    return "model provider"


def _detail(exc: BaseException) -> str:
    body: Any = getattr(exc, "body", None)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body = body["error"]
    message = body.get("message") if isinstance(body, dict) else None
    text = str(message or getattr(exc, "message", None) or exc or type(exc).__name__)
    text = _SECRET.sub("[redacted]", " ".join(text.split()))
    return text if len(text) <= 300 else text[:299] + "…"


def describe_provider_error(exc: BaseException, access: ProviderAccess, *, attempts: int | None = None) -> str:
    """`describe_error` for a call to an org's own provider: named, pointing at its settings rather
    than the platform's environment, and without its key or header values."""
    status: int | None = getattr(exc, "status_code", None)
    if status == 401:
        text = (f"model provider {access.name!r}: authentication failed (401): check its API key "
                f"(PATCH /v1/providers/{access.id})")
    else:
        text = f"model provider {access.name!r}: " + describe_error(exc, attempts=attempts).split(": ", 1)[-1]
    for secret in (access.api_key, *access.headers.values()):
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text


def describe_error(exc: BaseException, *, attempts: int | None = None) -> str:
    """A readable one-line account of a failed model call, for the user; never includes a key.

    Pass `attempts` (how many calls were made) to mention it for transient failures.
    """
    if isinstance(exc, ProviderCallFailed):
        return str(exc)
    if isinstance(exc, ModelConfigError | OfflineModelError):
        prefix = "offline model failed: " if isinstance(exc, OfflineModelError) else ""
        return prefix + _detail(exc)
    provider = _provider(exc)
    env = ANTHROPIC_KEY_ENV if provider == "anthropic" else OPENAI_KEY_ENV
    status: int | None = getattr(exc, "status_code", None)
    if status == 401:
        return f"{provider}: authentication failed (401): check {env}"
    if status == 403:
        return f"{provider}: permission denied (403): the API key may not use this model: {_detail(exc)}"
    if status == 404:
        return f"{provider}: not found (404): check the model name in the agent's `model`: {_detail(exc)}"
    if is_transient(exc):
        tries = f" after {attempts} attempts" if attempts and attempts > 1 else ""
        what = "rate limited (429)" if status == 429 else f"server error ({status})" if status else "unreachable"
        if _is_timeout(exc):
            what = "timed out"
        return f"{provider}: {what}{tries}: {_detail(exc)}"
    if status is not None:
        return f"{provider}: request rejected ({status}): {_detail(exc)}"
    return f"{provider}: {type(exc).__name__}: {_detail(exc)}"


def _is_timeout(exc: BaseException) -> bool:
    if isinstance(exc, httpx.TimeoutException | httpx2.TimeoutException):
        return True
    return any(isinstance(exc, sdk.APITimeoutError) for sdk in filter(None, (_sdk("openai"), _sdk("anthropic"))))
