"""`/v1/me`, and organisations (platform admin token only): sign-up (`POST /v1/orgs`), reading
one and changing its name or admission limits (`GET|PATCH /v1/orgs/{id}`)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.responses import Response

from api.endpoint import Call, endpoint, resource
from api.schemas.orgs import Org, OrgCreated, Principal
from api.state import state_of
from core import ids
from core.admission import BUDGET_KEYS, Admission, overrides_of
from core.errors import ApiError
from core.store import orgs, people


class OrgCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)


class LimitsPatch(BaseModel):
    """Per-org overrides of the `AGENTOS_LIMITS__*` (and sandbox quota) defaults; `null` restores the default,
    an absent key leaves the override as it is."""

    model_config = ConfigDict(extra="forbid")
    requests_per_minute: Annotated[StrictInt, Field(ge=1, le=1_000_000)] | None = None
    burst: Annotated[StrictInt, Field(ge=1, le=1_000_000)] | None = None
    max_active_runs: Annotated[StrictInt, Field(ge=1, le=100_000)] | None = None
    # code_executor quotas (`AGENTOS_SANDBOX__ORG_MAX_CONCURRENT`, `..._ORG_CPU_S_PER_DAY`).
    sandbox_max_concurrent: Annotated[StrictInt, Field(ge=1, le=10_000)] | None = None
    sandbox_cpu_s_per_day: Annotated[StrictInt, Field(ge=1, le=86_400_000)] | None = None


class BudgetsPatch(BaseModel):
    """Per-org budgets over the `AGENTOS_LIMITS__*` defaults (core.budgets); `null` restores the
    default, an absent key leaves the budget as it is."""

    model_config = ConfigDict(extra="forbid")
    monthly_tokens: Annotated[StrictInt, Field(ge=1, le=10**15)] | None = None
    monthly_cost_usd: Annotated[float, Field(gt=0, le=10**12)] | None = None
    max_runs_per_day: Annotated[StrictInt, Field(ge=1, le=10**9)] | None = None


class OrgPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    limits: LimitsPatch | None = None
    budgets: BudgetsPatch | None = None


def changes_of(*patches: BaseModel | None) -> tuple[dict[str, Any], list[str]]:
    """(overrides to set, overrides to clear) from the keys a PATCH named."""
    set_limits: dict[str, Any] = {}
    clear_limits: list[str] = []
    for patch in patches:
        if patch is None:
            continue
        for name in sorted(patch.model_fields_set):
            value = getattr(patch, name)
            if value is None:
                clear_limits.append(name)
            else:
                set_limits[name] = value
    return set_limits, clear_limits


def _admission(call: Call[Any]) -> Admission:
    return state_of(call.request).admission


def _public_org(call: Call[Any], row: dict[str, Any]) -> dict[str, Any]:
    """The org with its effective limits, and which of them are its own overrides."""
    body = {k: v for k, v in row.items() if k != "limits"}
    body["limits"] = _admission(call).effective(row.get("limits")).public()
    body["limit_overrides"] = overrides_of(row.get("limits"))
    body["budgets"] = _admission(call).effective(row.get("limits")).public_budgets()
    body["budget_overrides"] = overrides_of(row.get("limits"), BUDGET_KEYS)
    return body


def _name_taken(name: str) -> ApiError:
    return ApiError("CONFLICT", f"An organisation named {name!r} already exists (names are compared regardless "
                    "of case); choose another name.", details={"field": "name"})


def _org_id(call: Call[Any]) -> str:
    value = str(call.request.path_params["org_id"])
    if not ids.looks_like("org", value):
        raise ApiError("NOT_FOUND", f"No organisation with id {value!r}.")
    return value


@endpoint("The caller's principal: org, user, role and scopes; for a user, who they are and their orgs.",
          response=Principal)
async def me(call: Call[Any]) -> Response:
    return call.reply(call.principal.public() | await people.whoami(call.pool, call.principal.user_id))


@endpoint(
    "Create an organisation and its first owner API key (platform admin token required); 409 CONFLICT "
    "when another organisation has the name (compared regardless of case).",
    role="platform_admin",
    body=OrgCreate,
    status=201,
    response=OrgCreated,
    errors=("CONFLICT",),
)
async def create_org(call: Call[OrgCreate]) -> Response:
    try:
        org, key = await orgs.create_org(call.pool, call.body.name, actor="platform_admin")
    except orgs.OrgNameTaken as exc:
        raise _name_taken(exc.name) from None
    return call.reply({"org": _public_org(call, org), "api_key": key})


@endpoint("Read an organisation with its effective limits (platform admin token required).",
          role="platform_admin", response=Org)
async def get_org(call: Call[Any]) -> Response:
    org_id = _org_id(call)
    org = await orgs.get_org(call.pool, org_id)
    if org is None:
        raise ApiError("NOT_FOUND", f"No organisation with id {org_id!r}.")
    return call.reply(_public_org(call, org))


@endpoint("Rename an organisation or change its limits or budgets; one set to null returns to the default "
          "(platform admin token required).", role="platform_admin", body=OrgPatch, response=Org,
          errors=("CONFLICT",))
async def update_org(call: Call[OrgPatch]) -> Response:
    org_id = _org_id(call)
    set_limits, clear_limits = changes_of(call.body.limits, call.body.budgets)
    try:
        org = await orgs.update_org(call.pool, org_id, actor="platform_admin", name=call.body.name,
                                    set_limits=set_limits, clear_limits=clear_limits)
    except orgs.OrgNameTaken as exc:
        raise _name_taken(exc.name) from None
    if org is None:
        raise ApiError("NOT_FOUND", f"No organisation with id {org_id!r}.")
    _admission(call).forget(org_id)
    return call.reply(_public_org(call, org))


routes = [
    resource("/v1/me", GET=me),
    resource("/v1/orgs", POST=create_org),
    resource("/v1/orgs/{org_id}", GET=get_org, PATCH=update_org),
]
