"""Remote runners of the caller's org (docs/runners.md). Admins create, list and revoke them; the
token is shown once, at creation. A revoked runner's connection is refused from its next request
and its open stream ends within a heartbeat."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from api.endpoint import Call, endpoint, resource
from api.schemas.base import page_of
from api.schemas.runners import Runner, RunnerCreated, RunWorkspaces
from core import runner_link
from core.errors import ApiError
from core.pagination import page
from core.store import audit, runners, runs
from core.tenancy import tenant_tx

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,99}$"
LABEL_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-/]{0,62}$"


class RunnerCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=NAME_PATTERN)
    labels: dict[str, str] = Field(default_factory=dict, max_length=20)

    @field_validator("labels")
    @classmethod
    def _labels(cls, value: dict[str, str]) -> dict[str, str]:
        for key, label in value.items():
            if not re.fullmatch(LABEL_PATTERN, key) or not re.fullmatch(LABEL_PATTERN, label):
                raise ValueError("label names and values are 1-63 letters, digits, '_', '.', '-' or '/'")
        return value


def _not_found(runner_id: str) -> ApiError:
    return ApiError("NOT_FOUND", f"No runner with id {runner_id!r} in this organisation.")


async def _with_presence(call: Call[Any], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    redis = call.infra.redis
    return [{**row, "online": row["revoked_at"] is None and
             await runner_link.is_online(redis, call.principal.org_id, row["id"])} for row in rows]


@endpoint("Create a runner; its token is in this response only.", role="admin", body=RunnerCreate, status=201,
          response=RunnerCreated, errors=("CONFLICT",))
async def create_runner(call: Call[RunnerCreate]) -> Response:
    body, principal = call.body, call.principal
    async with tenant_tx(call.pool, principal.org_id) as conn:
        row = await runners.create(conn, name=body.name, labels=body.labels, created_by=principal.user_id)
        if row is None:
            raise ApiError("CONFLICT", f"A runner named {body.name!r} exists; revoke it or choose another name.",
                           details={"reason": "name_taken"})
        await audit.record(conn, principal.actor, "runner.create", "runner", row["id"],
                           {"name": body.name, "labels": body.labels})
    return call.reply({**row, "online": False})


@endpoint("List the org's runners (never their tokens), with whether each is connected now.", role="admin",
          paginated=True, response=page_of(Runner))
async def list_runners(call: Call[Any]) -> Response:
    cursor, limit = call.page_params()
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        rows = await runners.list_runners(conn, cursor, limit)
    data, next_cursor = page(rows, limit)
    return call.page(await _with_presence(call, data), next_cursor)


@endpoint("Get one runner.", role="admin", response=Runner)
async def get_runner(call: Call[Any]) -> Response:
    runner_id = call.path_id("runner_id", "runner")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await runners.get(conn, runner_id)
    if row is None:
        raise _not_found(runner_id)
    return call.reply((await _with_presence(call, [dict(row)]))[0])


@endpoint("Revoke a runner; its token stops working at once.", role="admin", response=Runner)
async def revoke_runner(call: Call[Any]) -> Response:
    runner_id = call.path_id("runner_id", "runner")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await runners.revoke(conn, runner_id)
        if row is None:
            raise _not_found(runner_id)
        await audit.record(conn, call.principal.actor, "runner.revoke", "runner", runner_id)
    return call.reply({**row, "online": False})


@endpoint("The workspaces remote runners committed for a run once it ended (branch, commit, diff summary).",
          response=RunWorkspaces)
async def run_workspaces(call: Call[Any]) -> Response:
    run_id = call.path_id("run_id", "run")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        if await runs.get(conn, run_id) is None:
            raise ApiError("NOT_FOUND", f"No run with id {run_id!r} in this organisation.")
        rows = await runners.run_workspaces(conn, run_id)
    return call.reply({"data": rows})


routes = [
    resource("/v1/runners", POST=create_runner, GET=list_runners),
    resource("/v1/runners/{runner_id}", GET=get_runner, DELETE=revoke_runner),
    resource("/v1/runs/{run_id}/workspaces", GET=run_workspaces),
]
