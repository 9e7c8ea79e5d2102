"""`@endpoint`: how every route authenticates, checks the role, parses its body and query,
and describes itself for `/openapi.json`. Handlers receive a `Call` and never read headers."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from api import json_limits, responses
from api.auth import unauthenticated
from api.state import state_of
from core import ids
from core.admission import RateDecision, RunTicket
from core.errors import ApiError
from core.infra import Infra
from core.pagination import DEFAULT_LIMIT, MAX_LIMIT, BadCursor, decode_cursor
from core.principal import Principal, Role
from core.settings import Settings
from core.telemetry import names, scope, tracing
from core.tenancy import AsyncPool

B = TypeVar("B", bound=BaseModel)


@dataclass
class Call(Generic[B]):
    request: Request
    # None on endpoints that take no org credential (role None or "platform_admin").
    caller: Principal | None
    body: B
    # What the endpoint declares: its replies go through the declared response model.
    spec: EndpointSpec | None = None
    # An endpoint that `admits_run`: the place its request took under the org's cap on active runs.
    ticket: RunTicket | None = None

    def reply(self, content: Any, status: int | None = None, headers: dict[str, str] | None = None) -> Response:
        """`content` as the endpoint's declared response model, with a status it declares."""
        spec = self._spec()
        status = spec.status if status is None else status
        if spec.response is None or status not in spec.success_statuses:
            raise RuntimeError(f"{spec.summary!r} declares no body for status {status}")
        return responses.typed(spec.response, content, status, headers)

    def page(self, data: Sequence[Any], next_cursor: str | None = None, **extra: Any) -> Response:
        """A list envelope `{data, next_cursor}` of the declared page model."""
        return self.reply({"data": data, "next_cursor": next_cursor, **extra})

    def _spec(self) -> EndpointSpec:
        if self.spec is None:
            raise RuntimeError("this call was made without its endpoint's spec")
        return self.spec

    @property
    def principal(self) -> Principal:
        """Who is calling; only endpoints that take an org credential have one."""
        if self.caller is None:
            raise RuntimeError("this endpoint takes no org credential, so it has no principal")
        return self.caller

    @property
    def run_ticket(self) -> RunTicket:
        """The place this request took among the org's active runs (`admits_run` endpoints): the
        handler owns it now, and binds it to the run it makes or releases it."""
        if self.ticket is None:
            raise RuntimeError("this endpoint does not admit runs, so it has no run ticket")
        return self.ticket

    @property
    def infra(self) -> Infra:
        return state_of(self.request).infra

    @property
    def pool(self) -> AsyncPool:
        return self.infra.pool

    @property
    def settings(self) -> Settings:
        return self.infra.settings

    def path_id(self, name: str, kind: str) -> str:
        """A path id of the right shape, or 404 (a malformed id names nothing)."""
        value = str(self.request.path_params[name])
        if not ids.looks_like(kind, value):
            raise ApiError("NOT_FOUND", f"No {kind.replace('_', ' ')} with id {value!r} in this organisation.")
        return value

    def page_params(self) -> tuple[str | None, int]:
        q = self.request.query_params
        try:
            limit = int(q.get("limit", DEFAULT_LIMIT))
        except ValueError:
            limit = -1
        if not 1 <= limit <= MAX_LIMIT:
            raise validation_failed([{"field": "limit", "message": f"must be an integer from 1 to {MAX_LIMIT}"}])
        try:
            cursor = decode_cursor(q.get("cursor"))
        except BadCursor:
            raise validation_failed([{"field": "cursor", "message": "is not a cursor this API returned"}]) from None
        return cursor, limit


class NoBody(BaseModel):
    pass


@dataclass(frozen=True)
class Param:
    """A query parameter or request header an endpoint reads (documented in `/openapi.json`)."""

    name: str
    schema: dict[str, Any]
    description: str = ""
    where: Literal["query", "header"] = "query"
    required: bool = False


@dataclass(frozen=True)
class EndpointSpec:
    """What `/openapi.json` says about an endpoint, and the access and body it enforces."""

    summary: str
    role: Access
    body: type[BaseModel] | None
    status: int
    # The model of the success body (None: no body, or an event stream).
    response: type[BaseModel] | None
    paginated: bool
    # Other success statuses answered with the same body model (e.g. `202` of a wait that timed out).
    also: tuple[int, ...] = ()
    # Error codes (core.errors) this endpoint answers beyond those its access, body and path imply.
    errors: tuple[str, ...] = ()
    params: tuple[Param, ...] = ()
    # Response headers of its successes (documented in api.openapi.RESPONSE_HEADERS).
    headers: tuple[str, ...] = ()
    stream: bool = False
    # False: the handler reads the body itself (it also takes `raw_types`, e.g. `text/plain`).
    parse: bool = True
    raw_types: tuple[str, ...] = ()
    # True: the success body is raw bytes of their own type (a file's content, Prometheus text).
    download: bool = False
    # True: the request starts a run, so its org's rate and a place under its cap on active runs
    # are taken in one Redis round trip (`Call.run_ticket`).
    admits_run: bool = False
    # True: a request whose `Accept` names `text/event-stream` gets the run's event stream (its
    # `RunEvent`s) instead of the JSON body, with the same status (`api.run_streams.wants_stream`).
    streams_on_accept: bool = False
    tags: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Before this was typed, `response` named a model in a string; say what to do instead.
        if self.response is not None and not (isinstance(self.response, type) and issubclass(self.response, BaseModel)):
            raise TypeError(f"{self.summary!r}: `response` must be a pydantic model (see api/schemas), "
                            f"not {self.response!r}")

    @property
    def success_statuses(self) -> tuple[int, ...]:
        return (self.status, *self.also)


# A role name: an org credential of at least that role. "platform_admin": the platform admin
# token (org sign-up). None: no credential (health checks).
Access = Role | Literal["platform_admin"] | None
Handler = Callable[[Call[Any]], Awaitable[Response]]


def validation_failed(fields: list[dict[str, Any]]) -> ApiError:
    first = fields[0] if fields else {}
    where = f"'{first.get('field')}'" if first.get("field") else "the body"
    return ApiError(
        "VALIDATION_FAILED",
        f"{where} {first.get('message', 'is invalid')}" + (f" (and {len(fields) - 1} more)" if len(fields) > 1 else ""),
        details={"fields": fields},
    )


def _fields(exc: ValidationError) -> list[dict[str, Any]]:
    out = []
    for err in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in err["loc"])
        message = "is not allowed here" if err["type"] == "extra_forbidden" else err["msg"]
        out.append({"field": loc, "message": message, "type": err["type"]})
    return out


def _max_json_depth(request: Request) -> int:
    return state_of(request).infra.settings.api.max_json_depth


async def parse_body(request: Request, model: type[B]) -> B:
    """The JSON object of the body as `model`. Every client-supplied JSON value is bounded here,
    before pydantic sees it: in size by the body limit (`api.body_limit`), in depth by
    `settings.api.max_json_depth`, and it holds no U+0000."""
    raw = await request.body()
    if not raw.strip():
        data: Any = {}
    else:
        ctype = request.headers.get("content-type", "")
        if ctype and "json" not in ctype.split(";")[0]:
            raise ApiError("UNSUPPORTED_MEDIA_TYPE", f"Content-Type {ctype!r} is not JSON; send application/json.")
        max_depth = _max_json_depth(request)
        try:
            data = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            # Nested past orjson's own limit (1024): still say which field went too deep. The text
            # before the error is valid JSON (the depth check needs that to run in linear time).
            valid = exc.doc[: exc.pos].encode("utf-8", "surrogatepass")  # `pos` counts characters
            deep_at = json_limits.too_deep(valid, max_depth) if "depth limit" in exc.msg else None
            if deep_at is None:
                raise ApiError("BAD_REQUEST", f"The body is not valid JSON: {exc}.") from None
        else:
            deep_at = json_limits.too_deep(raw, max_depth)
        if deep_at is not None:
            raise validation_failed([{"field": deep_at, "message": f"nests deeper than {max_depth} levels (the body "
                                      "counts as one)", "type": "too_deep"}])
    if not isinstance(data, dict):
        raise ApiError("BAD_REQUEST", "The body must be a JSON object.")
    # Strict JSON forbids raw control characters, so U+0000 can only arrive escaped: walk the
    # parsed body only when the escape is present (almost never).
    nul_at = json_limits.nul_path(data) if b"\\u0000" in raw else None
    if nul_at is not None:
        raise validation_failed([{"field": nul_at or "body", "message": "must not contain the NUL character (\\u0000)",
                                  "type": "nul_character"}])
    return validate(model, data)


def validate(model: type[B], data: Any) -> B:
    """`model.model_validate(data)`, failing as 422 VALIDATION_FAILED with every field listed."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(_fields(exc)) from None


class Endpoint:
    """A handler with its typed metadata: callable as a Starlette endpoint (`request -> response`),
    it authenticates, checks access, then parses the body (so an anonymous caller learns nothing
    about the body's rules) before calling the handler with a `Call`."""

    def __init__(self, handler: Handler, spec: EndpointSpec) -> None:
        self.handler = handler
        self.spec = spec
        functools.update_wrapper(self, handler)

    async def __call__(self, request: Request) -> Response:
        spec = self.spec
        principal: Principal | None = None
        rate: RateDecision | None = None
        ticket: RunTicket | None = None
        shared = state_of(request)
        auth = shared.auth
        if spec.role == "platform_admin":
            if not auth.is_platform_admin(request):
                raise unauthenticated("This needs the platform admin token.")
        elif spec.role is not None:
            principal = await auth.authenticate(request)
            scope.bind(org_id=principal.org_id)  # for logs and spans of this request
            if tracing.ON:
                tracing.annotate(**{names.ORG_ID: principal.org_id})
            # Every authenticated request of an org draws on its request rate (health checks
            # and platform admin calls do not). A request that starts a run also takes its place
            # under the org's cap in the same round trip, unless its role already refuses it.
            allowed = principal.allows(spec.role)
            if spec.admits_run and allowed:
                rate, ticket = await shared.admission.check_rate_and_admit_run(principal.org_id)
            else:
                rate = await shared.admission.check_rate(principal.org_id)
            if rate is not None and not rate.allowed:
                raise rate.refusal()
            if not allowed:
                raise ApiError(
                    "FORBIDDEN", f"This needs the {spec.role} role or higher; your credential is {principal.role}."
                )
        try:
            parsed = await parse_body(request, spec.body) if spec.body is not None and spec.parse else NoBody()
        except BaseException:
            if ticket is not None:  # refused before the handler took the place over
                await ticket.release()
            raise
        response = await self.handler(Call(request, principal, parsed, spec, ticket))
        if rate is not None:
            response.headers.update(rate.headers())
        return response


def endpoint(
    summary: str,
    *,
    role: Access = "viewer",
    body: type[BaseModel] | None = None,
    status: int = 200,
    response: type[BaseModel] | None = None,
    paginated: bool = False,
    also: tuple[int, ...] = (),
    errors: tuple[str, ...] = (),
    params: tuple[Param, ...] = (),
    headers: tuple[str, ...] = (),
    stream: bool = False,
    parse: bool = True,
    raw_types: tuple[str, ...] = (),
    download: bool = False,
    admits_run: bool = False,
    streams_on_accept: bool = False,
) -> Callable[[Handler], Endpoint]:
    """Make a handler an `Endpoint` described by these fields (see `EndpointSpec`)."""
    spec = EndpointSpec(summary, role, body, status, response, paginated, also, errors, params, headers, stream,
                        parse, raw_types, download, admits_run, streams_on_accept)

    def wrap(handler: Handler) -> Endpoint:
        return Endpoint(handler, spec)

    return wrap


class Resource(Route):
    """One route per path with an `Endpoint` per method, so a 405 lists every allowed method."""

    def __init__(self, path: str, handlers: dict[str, Endpoint]) -> None:
        self.handlers = dict(handlers)
        if "GET" in self.handlers:
            self.handlers.setdefault("HEAD", self.handlers["GET"])
        super().__init__(path, self._dispatch, methods=list(self.handlers), name=f"resource:{path}")

    async def _dispatch(self, request: Request) -> Response:
        return await self.handlers[request.method](request)


def resource(path: str, **handlers: Endpoint) -> Resource:
    """`Resource(path, {"GET": ..., "POST": ...})`, spelled with keywords."""
    return Resource(path, handlers)
