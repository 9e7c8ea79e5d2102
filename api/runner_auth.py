"""A runner's credential: its token in `Authorization: Bearer aosr_…` (never in a URL).

Only the runner routes (`api.routes.runner_link`) read it; `api.auth` refuses the token
everywhere else (it is neither an API key nor a JWT), so a runner token can only be a runner.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from api.auth import bearer_token, unauthenticated
from core.store import runners
from core.tenancy import AsyncPool


@dataclass(frozen=True)
class RunnerIdentity:
    runner_id: str
    org_id: str
    name: str

    @property
    def actor(self) -> str:
        return f"runner:{self.runner_id}"


async def authenticate_runner(request: Request, pool: AsyncPool) -> RunnerIdentity:
    token = bearer_token(request)
    row = await runners.verify(pool, token)
    if row is None:
        raise unauthenticated("The runner token is invalid or revoked; create a runner with POST /v1/runners.")
    return RunnerIdentity(row["id"], row["org_id"], row["name"])
