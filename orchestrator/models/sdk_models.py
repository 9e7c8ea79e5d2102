"""The chat models backed by the provider SDKs (`openai`, `anthropic` and their LangChain wrappers).

Imported on first use by `orchestrator.models.providers`, never at start-up: the SDKs take about
2-3 s to import, which every worker, API process and CLI command would pay even when it only runs
offline agents (and a chaos-killed worker's replacement pays before it takes a run).
"""

from __future__ import annotations

from functools import cached_property
from typing import Any

import anthropic
import httpx2
import openai
from langchain_anthropic import ChatAnthropic
from langchain_core.language_models import BaseChatModel
from langchain_openai import AzureChatOpenAI, ChatOpenAI
from langchain_openai.chat_models.base import BaseChatOpenAI
from pydantic import PrivateAttr, SecretStr

from core.outbound import sdk_client
from core.providers import DEFAULT_AZURE_API_VERSION, ProviderAccess
from core.settings import ModelSettings, OutboundSettings

PLACEHOLDER_KEY = "not-needed"  # local OpenAI-compatible servers ignore the key


class _ChatAnthropic(ChatAnthropic):
    """ChatAnthropic with its own async HTTP client instead of one shared by every event loop
    (for an org's provider: the SSRF-guarded one it was given)."""

    _http: httpx2.AsyncClient | None = PrivateAttr(default=None)

    @cached_property
    def _async_client(self) -> anthropic.AsyncClient:
        params = self._client_params
        return anthropic.AsyncClient(**params, http_client=self._http or anthropic.DefaultAsyncHttpxClient())


def openai_model(name: str, settings: ModelSettings) -> BaseChatModel:
    """`openai:<name>` with the platform's key (credentials already checked)."""
    return ChatOpenAI(
        model=name,
        api_key=settings.openai_api_key or SecretStr(PLACEHOLDER_KEY),
        base_url=settings.openai_base_url,
        timeout=settings.request_timeout_s,
        max_retries=0,
        streaming=True,
        stream_usage=True,
        http_async_client=openai.DefaultAsyncHttpxClient(timeout=settings.request_timeout_s),
    )


def anthropic_model(name: str, settings: ModelSettings) -> BaseChatModel:
    """`anthropic:<name>` with the platform's key (credentials already checked)."""
    assert settings.anthropic_api_key is not None
    return _ChatAnthropic(
        model_name=name,
        api_key=settings.anthropic_api_key,
        base_url=settings.anthropic_base_url,
        timeout=settings.request_timeout_s,
        max_retries=0,
        streaming=True,
        stream_usage=True,
        stop=None,
    )


def provider_model(access: ProviderAccess, name: str, settings: ModelSettings,
                   outbound: OutboundSettings) -> BaseChatModel:
    """See `orchestrator.models.providers.provider_model`."""
    http = sdk_client(outbound, allow=access.allow, timeout_s=settings.request_timeout_s)
    key = SecretStr(access.api_key or PLACEHOLDER_KEY)
    common: dict[str, Any] = {"timeout": settings.request_timeout_s, "max_retries": 0, "streaming": True,
                              "stream_usage": True}
    if access.kind == "anthropic":
        model = _ChatAnthropic(model_name=name, api_key=key, base_url=access.base_url, stop=None,
                               default_headers=access.headers or None, **common)
        model._http = http
        return model
    if access.kind == "azure_openai":
        return AzureChatOpenAI(
            azure_endpoint=access.base_url, azure_deployment=name, model=name, api_key=key,
            api_version=access.api_version or DEFAULT_AZURE_API_VERSION, default_headers=access.headers or None,
            http_async_client=http, **common)
    return ChatOpenAI(model=name, api_key=key, base_url=access.base_url, default_headers=access.headers or None,
                      http_async_client=http, **common)


async def aclose_model(model: BaseChatModel) -> None:
    """See `orchestrator.models.providers.aclose_model`."""
    if isinstance(model, BaseChatOpenAI) and model.root_async_client is not None:
        await model.root_async_client.close()
    elif isinstance(model, _ChatAnthropic) and "_async_client" in model.__dict__:
        await model._async_client.close()
    elif isinstance(model, _ChatAnthropic) and model._http is not None:
        await model._http.aclose()
