"""Chat models for agents: the offline model, provider resolution, and retries."""

from orchestrator.models.offline import (
    MEMORY_HEADING,
    PLAN_MARK,
    SUMMARY_HEADING,
    OfflineChatModel,
    OfflineModelError,
)
from orchestrator.models.providers import (
    ModelConfigError,
    ProviderCallFailed,
    aclose_model,
    describe_error,
    describe_provider_error,
    is_transient,
    provider_model,
    require_credentials,
    resolve_model,
    with_retries,
)

__all__ = [
    "MEMORY_HEADING",
    "PLAN_MARK",
    "SUMMARY_HEADING",
    "ModelConfigError",
    "OfflineChatModel",
    "OfflineModelError",
    "ProviderCallFailed",
    "aclose_model",
    "describe_error",
    "describe_provider_error",
    "is_transient",
    "provider_model",
    "require_credentials",
    "resolve_model",
    "with_retries",
]
