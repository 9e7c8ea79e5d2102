"""`/v1/me` and organisation sign-up (`POST /v1/orgs`, platform admin token only)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.endpoint import Call, endpoint, resource
from api.responses import json
from core.store import orgs


class OrgCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)


@endpoint("The caller's principal: org, user, role and scopes.", response="Principal")
async def me(call: Call[Any]) -> Response:
    return json(call.principal.public())


@endpoint(
    "Create an organisation and its first owner API key (platform admin token required).",
    role="platform_admin",
    body=OrgCreate,
    status=201,
    response="OrgCreated",
)
async def create_org(call: Call[OrgCreate]) -> Response:
    org, key = await orgs.create_org(call.pool, call.body.name, actor="platform_admin")
    return json({"org": org, "api_key": key}, status=201)


routes = [
    resource("/v1/me", GET=me),
    resource("/v1/orgs", POST=create_org),
]
