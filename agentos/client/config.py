"""What a client is configured with (where the API is, the credential, timeouts, the retry
policy), and how a `calls.Request` becomes httpx's arguments under it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import httpx

from agentos.client.calls import Request
from agentos.client.errors import AgentOSError
from agentos.client.retry import RetryPolicy

USER_AGENT = "agentos-python-client"


@dataclass(frozen=True)
class ClientConfig:
    base_url: str
    credential: str  # an API key or a JWT: both are Bearer credentials
    timeout_s: float
    policy: RetryPolicy

    @classmethod
    def make(cls, base_url: str | None, api_key: str | None, jwt: str | None, timeout_s: float,
             max_retries: int) -> ClientConfig:
        """From the arguments, falling back on `AGENTOS_API_URL` and `AGENTOS_API_KEY`."""
        if api_key and jwt:
            raise AgentOSError("pass an api_key or a jwt, not both", code="CLIENT_CONFIG")
        url = base_url or os.environ.get("AGENTOS_API_URL")
        credential = api_key or jwt or os.environ.get("AGENTOS_API_KEY")
        if not url or not credential:
            raise AgentOSError("no API to talk to: pass base_url and api_key (or jwt), or set AGENTOS_API_URL and "
                               "AGENTOS_API_KEY", code="CLIENT_CONFIG")
        return cls(url.rstrip("/"), credential, timeout_s, RetryPolicy(max_retries=max_retries))

    def timeout(self) -> httpx.Timeout:
        # A stream is read with the same timeout: the API sends a keep-alive comment every 15 s
        # by default, so a read that waits longer than that means a dead connection.
        return httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0))

    def httpx_args(self, request: Request) -> dict[str, Any]:
        """Keyword arguments of `httpx.Client.build_request` for `request`."""
        headers = {"Authorization": f"Bearer {self.credential}", "User-Agent": USER_AGENT, **request.headers}
        args: dict[str, Any] = {"method": request.method, "url": self.base_url + request.path, "headers": headers}
        if request.params:
            args["params"] = request.params
        if request.body is not None:
            args["json"] = request.body
        if request.read_timeout_s is not None:
            args["timeout"] = httpx.Timeout(self.timeout_s, connect=min(self.timeout_s, 10.0),
                                            read=max(self.timeout_s, request.read_timeout_s))
        return args
