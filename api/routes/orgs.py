"""`/v1/me`, and organisations (platform admin token only): sign-up (`POST /v1/orgs`), reading
one and changing its name or admission limits (`GET|PATCH /v1/orgs/{id}`). The org's own owner
deletes it (`DELETE /v1/orgs/{id}`, naming it to confirm) and may restore it during the grace
period (`POST /v1/orgs/{id}/restore`); core.org_purge does the rest."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt
from starlette.responses import Response

from api.endpoint import Call, endpoint, resource
from api.schemas.orgs import Org, OrgCreated, OrgDeletion, Principal
from api.state import state_of
from core import ids, org_purge, retention
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


Days = Annotated[StrictInt, Field(ge=0, le=retention.MAX_DAYS)]


class RetentionPatch(BaseModel):
    """Per-org overrides of the retention defaults (`AGENTOS_LIFECYCLE__*_DAYS`; 0 keeps for
    ever); `null` restores the default. `audit_days` below the operator's minimum acts as it."""

    model_config = ConfigDict(extra="forbid")
    events_days: Days | None = None
    tool_calls_days: Days | None = None
    messages_days: Days | None = None
    checkpoints_days: Days | None = None
    audit_days: Days | None = None
    final_checkpoint: Literal["keep", "drop"] | None = None


class OrgPatch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(default=None, min_length=1, max_length=200)
    limits: LimitsPatch | None = None
    budgets: BudgetsPatch | None = None
    retention: RetentionPatch | None = None


class OrgDeleteConfirm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # The org's exact name: a deletion is never one mistyped id away.
    confirm: str = Field(min_length=1, max_length=200)


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
    body = {k: v for k, v in row.items() if k not in ("limits", "retention")}
    body["retention"] = retention.effective(call.settings.lifecycle, row.get("retention")).public()
    body["retention_overrides"] = retention.overrides_of(row.get("retention"))
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


@endpoint("The caller's principal: org (with its name), user, role and scopes; for a user, who they are and "
          "their orgs.", response=Principal)
async def me(call: Call[Any]) -> Response:
    # The name is for people (the console's header); the id stays the reference.
    org = await orgs.get_org(call.pool, call.principal.org_id)
    return call.reply(call.principal.public() | {"org_name": org["name"] if org else None}
                      | await people.whoami(call.pool, call.principal.user_id))


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


@endpoint("Rename an organisation or change its limits, budgets or retention; one set to null returns to the default "
          "(platform admin token required).", role="platform_admin", body=OrgPatch, response=Org,
          errors=("CONFLICT",))
async def update_org(call: Call[OrgPatch]) -> Response:
    org_id = _org_id(call)
    set_limits, clear_limits = changes_of(call.body.limits, call.body.budgets)
    set_retention, clear_retention = changes_of(call.body.retention)
    try:
        org = await orgs.update_org(call.pool, org_id, actor="platform_admin", name=call.body.name,
                                    set_limits=set_limits, clear_limits=clear_limits,
                                    set_retention=set_retention, clear_retention=clear_retention)
    except orgs.OrgNameTaken as exc:
        raise _name_taken(exc.name) from None
    if org is None:
        raise ApiError("NOT_FOUND", f"No organisation with id {org_id!r}.")
    _admission(call).forget(org_id)
    return call.reply(_public_org(call, org))


def _own_org_id(call: Call[Any]) -> str:
    """The path's org, which must be the caller's own (another org's is not found)."""
    org_id = _org_id(call)
    if org_id != call.principal.org_id:
        raise ApiError("NOT_FOUND", f"No organisation with id {org_id!r}.")
    return org_id


@endpoint("Delete the caller's organisation (owner): `confirm` must be its exact name. Active runs are "
          "cancelled and new ones refused at once; after the grace period (`purge_after`) every record, file "
          "and key of the org is removed for good. Until then `POST /v1/orgs/{id}/restore` undoes it.",
          role="owner", body=OrgDeleteConfirm, status=202, response=OrgDeletion, errors=("CONFLICT",))
async def delete_org(call: Call[OrgDeleteConfirm]) -> Response:
    org_id = _own_org_id(call)
    try:
        deletion = await org_purge.request(call.infra, org_id, confirm=call.body.confirm, actor=call.principal.actor)
    except org_purge.NameMismatch:
        raise ApiError("VALIDATION_FAILED", "'confirm' must be the organisation's exact name.",
                       details={"fields": [{"field": "confirm", "message": "is not the organisation's name",
                                            "type": "confirmation"}]}) from None
    except org_purge.AlreadyRequested:
        raise ApiError("CONFLICT", "This organisation's deletion was already asked for; GET /v1/me still works, and "
                       "POST /v1/orgs/{id}/restore undoes it during the grace period.",
                       details={"reason": "deletion_pending"}) from None
    _admission(call).forget(org_id)
    return call.reply(deletion.public("scheduled"), status=202)


@endpoint("Restore the caller's organisation during its deletion's grace period (owner); 409 CONFLICT when no "
          "deletion is pending.", role="owner", response=OrgDeletion, errors=("CONFLICT",))
async def restore_org(call: Call[Any]) -> Response:
    org_id = _own_org_id(call)
    try:
        await org_purge.restore(call.pool, org_id, actor=call.principal.actor)
    except org_purge.NotPending:
        raise ApiError("CONFLICT", "No deletion of this organisation is pending.",
                       details={"reason": "no_deletion_pending"}) from None
    _admission(call).forget(org_id)
    return call.reply(org_purge.Deletion(org_id, None, None).public("restored"))


routes = [
    resource("/v1/me", GET=me),
    resource("/v1/orgs", POST=create_org),
    resource("/v1/orgs/{org_id}", GET=get_org, PATCH=update_org, DELETE=delete_org),
    resource("/v1/orgs/{org_id}/restore", POST=restore_org),
]
