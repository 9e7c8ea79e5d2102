"""The Python client of the AgentOS HTTP API (docs/client.md), sync and async:

    from agentos.client import Client

    with Client("http://127.0.0.1:8000", api_key="aos_…") as client:
        agent = client.agents.create("support", instructions="Be brief.")
        session = client.sessions.create(agent.id)
        run = client.runs.create(session.id, "Hello")
        for event in client.runs.events(run.id):  # resumes by itself after a dropped connection
            print(event.type, event.data)

`AsyncClient` offers the same calls with `await` (and `async for` over events and lists).
Errors are `AgentOSError`s carrying the API's stable `code`."""

from agentos.client.aio import AsyncClient
from agentos.client.errors import (
    AgentOSError,
    ApiError,
    BadRequest,
    Conflict,
    ConnectionFailed,
    Forbidden,
    IdempotencyMismatch,
    InternalError,
    MethodNotAllowed,
    NotFound,
    OrgDeletionPending,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimited,
    SandboxBackendFailed,
    SessionBusy,
    StreamTokenExpired,
    StreamTokenInvalid,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
    ValidationFailed,
    WebhookDisabled,
    WebhookUrlRefused,
)
from agentos.client.models import Agent, ApiKey, Event, Message, Page, Principal, Run, Session, ToolCall
from agentos.client.retry import RetryPolicy
from agentos.client.sync import Client

__all__ = [
    "Agent", "AgentOSError", "ApiError", "ApiKey", "AsyncClient", "BadRequest", "Client", "Conflict",
    "ConnectionFailed", "Event", "Forbidden", "IdempotencyMismatch", "InternalError", "Message",
    "MethodNotAllowed", "NotFound", "OrgDeletionPending", "Page", "PayloadTooLarge", "Principal", "QuotaExceeded",
    "RateLimited",
    "RetryPolicy", "Run", "SandboxBackendFailed", "Session", "SessionBusy", "StreamTokenExpired",
    "StreamTokenInvalid", "ToolCall", "Unauthenticated", "Unavailable", "UnsupportedMediaType", "ValidationFailed",
    "WebhookDisabled", "WebhookUrlRefused",
]
