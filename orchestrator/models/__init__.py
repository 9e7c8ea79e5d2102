"""Chat models for agents: the offline model, provider resolution, and retries."""

from orchestrator.models.offline import PLAN_MARK, OfflineChatModel, OfflineModelError
from orchestrator.models.providers import (
    ModelConfigError,
    aclose_model,
    describe_error,
    is_transient,
    resolve_model,
    with_retries,
)

__all__ = [
    "PLAN_MARK",
    "ModelConfigError",
    "OfflineChatModel",
    "OfflineModelError",
    "aclose_model",
    "describe_error",
    "is_transient",
    "resolve_model",
    "with_retries",
]
