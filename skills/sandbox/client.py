"""What a worker uses to run code: `SandboxClient.execute` takes an org's quota slot, sends
`POST /execute` to the sandbox service with the service token, and charges the CPU used.

Every failure becomes a `SandboxError` whose text the model can read: the service being
unreachable or dying mid-call, a rejected token, a limit above the ceiling, a quota."""

from __future__ import annotations

import httpx
import redis.asyncio as aioredis

from core.settings import SandboxSettings
from core.telemetry import metrics
from core.tenancy import AsyncPool
from skills.sandbox.protocol import ExecuteRequest, ExecuteResult
from skills.sandbox.quota import QuotaExceeded, SandboxQuota


class SandboxError(Exception):
    """The code did not run (or its result was lost); str(e) is a sentence for the model."""


class SandboxClient:
    def __init__(self, settings: SandboxSettings, redis: aioredis.Redis | None,
                 transport: httpx.AsyncBaseTransport | None = None, pool: AsyncPool | None = None,
                 limits_cache_s: float = 5.0) -> None:
        """`pool` reads per-org quota overrides (`orgs.limits`); without it every org gets the defaults."""
        if not settings.url:
            raise ValueError("SandboxClient needs AGENTOS_SANDBOX__URL")
        self.settings = settings
        self.quota = SandboxQuota(settings, redis, pool, limits_cache_s) if redis is not None else None
        token = settings.token.get_secret_value() if settings.token else ""
        self._http = httpx.AsyncClient(base_url=settings.url.rstrip("/"), transport=transport,
                                       headers={"Authorization": f"Bearer {token}"})

    async def aclose(self) -> None:
        await self._http.aclose()

    async def execute(self, org_id: str, request: ExecuteRequest) -> ExecuteResult:
        """Run `request` for `org_id`. A service-side workspace must be one of the org's own
        (`<org_id>/...`): one org can never name another's."""
        if request.workspace is not None and request.workspace.split("/", 1)[0] != org_id:
            raise SandboxError(f"The workspace {request.workspace!r} is not this organisation's; the code did not run.")
        executions = metrics.get().sandbox_executions
        try:
            result = await self._execute(org_id, request)
        except BaseException:
            executions.labels("error").inc()
            raise
        executions.labels("ok").inc()
        return result

    async def _execute(self, org_id: str, request: ExecuteRequest) -> ExecuteResult:
        if self.quota is None:
            return await self._send(request)
        try:
            async with self.quota.slot(org_id):
                result = await self._send(request)
        except QuotaExceeded as exc:
            raise SandboxError(str(exc)) from None
        await self.quota.charge(org_id, result.cpu_ms)
        return result

    async def _send(self, request: ExecuteRequest) -> ExecuteResult:
        s = self.settings
        wall = request.limits.wall_s or s.defaults.wall_s
        timeout = httpx.Timeout(wall + s.request_slack_s, connect=5.0)
        try:
            response = await self._http.post("/execute", content=request.model_dump_json(), timeout=timeout,
                                             headers={"Content-Type": "application/json"})
        except httpx.ConnectError:
            raise SandboxError(f"The sandbox service at {s.url} is unreachable; the code did not run. "
                               "Try again later.") from None
        except httpx.TimeoutException:
            raise SandboxError("The sandbox service did not answer in time; the code's result is lost.") from None
        except httpx.HTTPError as exc:
            raise SandboxError(f"The sandbox service stopped answering during the execution "
                               f"({type(exc).__name__}); the code's result is lost. Try again.") from None
        if response.status_code == 200:
            return ExecuteResult.model_validate_json(response.content)
        if response.status_code == 401:
            raise SandboxError("The sandbox service refused this platform's token (AGENTOS_SANDBOX__TOKEN "
                               "differs between the worker and the service); the code did not run.")
        message = _message(response)
        if response.status_code in (413, 422):
            raise SandboxError(f"The sandbox refused the request: {message}")
        raise SandboxError(f"The sandbox service failed (HTTP {response.status_code}: {message}); "
                           "the code did not run.")


def _message(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        details = error.get("details", {}).get("fields")
        return str(error["message"]) + (f" {details}" if details else "")
    except (ValueError, KeyError, TypeError, AttributeError):
        return response.text[:200]
