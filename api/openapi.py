"""Build `/openapi.json` from the routes themselves: each `@endpoint` carries its summary, access,
body model, response model, statuses, parameters and headers, and handlers answer through the
same response models (`Call.reply`), so the document cannot drift from what is served.

`python -m api.openapi_export` prints it (what `clients/typescript/openapi.json` holds)."""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode
from starlette.routing import BaseRoute

from api.endpoint import Endpoint, EndpointSpec, Resource
from api.schemas.errors import Error
from api.schemas.events import RunEvent
from core.errors import CODES

REF = "#/components/schemas/{model}"
ORG_ROLES = ("viewer", "member", "admin", "owner")

# Every response header an endpoint may name in `headers=`, and those the API adds itself.
RESPONSE_HEADERS: dict[str, dict[str, Any]] = {
    "Location": {"description": "Where the created (or accepted) resource can be read.",
                 "schema": {"type": "string"}},
    "Idempotent-Replayed": {"description": "`true` when an earlier request with this Idempotency-Key made the run "
                            "and this answer replays it.", "schema": {"type": "string", "enum": ["true"]}},
    "AgentOS-Deferred": {"description": "`broker-unavailable`: stored, but the broker did not answer; the watchdog "
                         "sends it later.", "schema": {"type": "string", "enum": ["broker-unavailable"]}},
    "AgentOS-Wait": {"description": "`timeout`: the wait ended before the run did (status 202).",
                     "schema": {"type": "string", "enum": ["timeout"]}},
    "AgentOS-Deduplicated": {"description": "`true` when the same item was stored already (status 200).",
                             "schema": {"type": "string", "enum": ["true"]}},
    "RateLimit-Limit": {"description": "The org's burst: requests it may send at once.",
                        "schema": {"type": "integer"}},
    "RateLimit-Remaining": {"description": "Requests left in the burst now.", "schema": {"type": "integer"}},
    "Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 1}},
    "WWW-Authenticate": {"description": "`Bearer realm=\"agentos\"`.", "schema": {"type": "string"}},
    "Set-Cookie": {"description": "A cookie session's cookies (`\"cookie\": true` sign-ins, refresh, switch-org), "
                   "or their removal (logout); docs/api.md, Cookie sessions.", "schema": {"type": "string"}},
}
RATE_HEADERS = ("RateLimit-Limit", "RateLimit-Remaining")
# Error codes whose answers carry headers.
ERROR_HEADERS = {
    "UNAUTHENTICATED": ("WWW-Authenticate",),
    "RATE_LIMITED": ("Retry-After", *RATE_HEADERS),
    "QUOTA_EXCEEDED": ("Retry-After",),
    "UNAVAILABLE": ("Retry-After",),
}

SECURITY_SCHEMES = {
    "apiKey": {"type": "http", "scheme": "bearer", "bearerFormat": "aos_<prefix>_<secret>",
               "description": "An org's API key: `Authorization: Bearer aos_…`."},
    "jwt": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": "A JWT signed by the integrating app (RS256/ES256 via JWKS or a public key, or HS256)."},
    "platformAdmin": {"type": "http", "scheme": "bearer",
                      "description": "The platform admin token (`AGENTOS_AUTH__PLATFORM_ADMIN_TOKEN`): org sign-up."},
}

PAGE_PARAMS = [
    {"name": "limit", "in": "query", "description": "Items per page.",
     "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
    {"name": "cursor", "in": "query", "description": "`next_cursor` of the previous page (opaque).",
     "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]*$"}},
]
STREAM_PARAMS = [
    {"name": "Last-Event-ID", "in": "header", "description": "Resume after this event id (wins over `after`).",
     "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}},
    {"name": "after", "in": "query", "description": "Resume after this event id.",
     "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"}},
    {"name": "token", "in": "query", "description": "A stream token (`POST /v1/stream-tokens`) in place of "
     "`Authorization`, for `EventSource`; refused (401 `STREAM_TOKEN_INVALID` / `STREAM_TOKEN_EXPIRED`) elsewhere.",
     "schema": {"type": "string"}},
]


class Schemas:
    """The document's `components/schemas`, filled from pydantic models; two different schemas
    under one name is a bug (one would silently replace the other), so it raises."""

    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}

    def ref(self, model: type[BaseModel], mode: JsonSchemaMode) -> dict[str, str]:
        schema = model.model_json_schema(mode=mode, ref_template=REF)
        for name, sub in {**schema.pop("$defs", {}), model.__name__: schema}.items():
            if self.defs.setdefault(name, sub) != sub:
                raise ValueError(f"two different schemas are named {name!r}; rename one of the models")
        return {"$ref": REF.format(model=model.__name__)}


def _error_codes(spec: EndpointSpec, path: str) -> set[str]:
    """The error codes an endpoint may answer: those its access, body, parameters and path
    imply, and those it declares."""
    codes = set(spec.errors)
    if spec.role in ORG_ROLES:
        codes |= {"UNAUTHENTICATED", "RATE_LIMITED", "UNAVAILABLE"}
        if spec.role != "viewer":
            codes.add("FORBIDDEN")
    elif spec.role == "platform_admin":
        codes |= {"UNAUTHENTICATED", "UNAVAILABLE"}
    if spec.body is not None or spec.raw_types:
        codes |= {"BAD_REQUEST", "PAYLOAD_TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE", "VALIDATION_FAILED"}
    if spec.paginated or any(p.where == "query" for p in spec.params):
        codes.add("VALIDATION_FAILED")
    if spec.stream:
        codes.add("BAD_REQUEST")
    if "{" in path:
        codes.add("NOT_FOUND")
    return codes


def _raw_schema(media: str) -> dict[str, Any]:
    if media == "multipart/form-data":  # one part, `file`
        return {"type": "object", "properties": {"file": {"type": "string", "format": "binary"}}, "required": ["file"]}
    return {"type": "string"}


def _header_refs(names: tuple[str, ...]) -> dict[str, Any]:
    return {name: {"$ref": f"#/components/headers/{name}"} for name in names}


def _responses(spec: EndpointSpec, path: str, schemas: Schemas) -> dict[str, Any]:
    out: dict[str, Any] = {}
    success_headers = (*spec.headers, *(RATE_HEADERS if spec.role in ORG_ROLES else ()))
    for status in spec.success_statuses:
        answer: dict[str, Any] = {"description": spec.summary.split(":")[0].split(";")[0]}
        if spec.stream and spec.response is not None:  # a stream of its own events (a runner's calls)
            answer["content"] = {"text/event-stream": {"schema": schemas.ref(spec.response, "serialization")}}
            answer["description"] = (f"Server-sent events: each event's `data:` line is one {spec.response.__name__} "
                                     "(JSON), its `event:` the kind. Comment lines keep it alive.")
        elif spec.stream:
            answer["content"] = {"text/event-stream": {"schema": schemas.ref(RunEvent, "serialization")}}
            answer["description"] = ("Server-sent events: each event's `data:` line is one RunEvent (JSON), its "
                                     "`id:` the event's seq and its `event:` the type. Comment lines keep it alive.")
        elif spec.response is not None:
            answer["content"] = {"application/json": {"schema": schemas.ref(spec.response, "serialization")}}
            if spec.streams_on_accept:
                answer["content"]["text/event-stream"] = {"schema": schemas.ref(RunEvent, "serialization")}
                answer["description"] += (". With `Accept: text/event-stream`, the run's events instead (SSE, as "
                                          "`GET /v1/runs/{run_id}/events` without a cursor sends them), which start "
                                          "before the run is sent to the workers, so without `AgentOS-Deferred`.")
        elif spec.download:
            answer["content"] = {"*/*": {"schema": {"type": "string", "format": "binary"}}}
        if success_headers:
            answer["headers"] = _header_refs(success_headers)
        out[str(status)] = answer
    by_status: dict[int, list[str]] = defaultdict(list)
    for code in sorted(_error_codes(spec, path)):
        by_status[CODES[code][0]].append(code)
    error_ref = schemas.ref(Error, "serialization")
    for status, codes in sorted(by_status.items()):
        if str(status) in out:
            continue  # a success-shaped answer (e.g. `/readyz`'s 503)
        headers = tuple(dict.fromkeys(h for code in codes for h in ERROR_HEADERS.get(code, ())))
        answer = {"description": "; ".join(f"`{code}`: {CODES[code][1]}" for code in codes),
                  "content": {"application/json": {"schema": error_ref}}}
        if headers:
            answer["headers"] = _header_refs(headers)
        out[str(status)] = answer
    return out


def _operation(route: Resource, method: str, handler: Endpoint, schemas: Schemas) -> dict[str, Any]:
    spec = handler.spec
    op: dict[str, Any] = {
        "operationId": handler.handler.__name__,
        "summary": spec.summary,
        "description": spec.summary,
        "tags": [_tag(route.path)],
    }
    params: list[dict[str, Any]] = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        for name in re.findall(r"{(\w+)}", route.path)
    ]
    if spec.paginated:
        params += PAGE_PARAMS
    if spec.stream and spec.response is None:  # run and session event streams
        params += STREAM_PARAMS
    params += [{"name": p.name, "in": p.where, "required": p.required, "schema": p.schema,
                **({"description": p.description} if p.description else {})} for p in spec.params]
    if params:
        op["parameters"] = params
    if spec.body is not None:
        content: dict[str, Any] = {"application/json": {"schema": schemas.ref(spec.body, "validation")}}
        content.update({media: {"schema": {"type": "string"}} for media in spec.raw_types})
        # An empty body counts as `{}`: it is optional exactly when the model requires nothing.
        required = bool(spec.body.model_json_schema().get("required"))
        op["requestBody"] = {"required": required, "content": content}
    elif spec.raw_types:  # a body the handler reads itself, with no JSON form (an upload)
        op["requestBody"] = {"required": True, "content": {media: {"schema": _raw_schema(media)}
                                                           for media in spec.raw_types}}
    op["responses"] = _responses(spec, route.path, schemas)
    if spec.role in ORG_ROLES:
        op["security"] = [{"apiKey": []}, {"jwt": []}]
        if spec.role != "viewer":
            op["description"] += f"\n\nNeeds the `{spec.role}` role or higher."
    elif spec.role == "platform_admin":
        op["security"] = [{"platformAdmin": []}]
    else:
        op["security"] = []
    return op


def _tag(path: str) -> str:
    parts = [p for p in path.split("/") if p and p != "v1" and not p.startswith("{")]
    return parts[0] if parts else "health"


def build_openapi(routes: list[BaseRoute], version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    schemas = Schemas()
    for route in routes:
        if not isinstance(route, Resource):
            continue
        for method, handler in sorted(route.handlers.items()):
            if method != "HEAD":
                paths.setdefault(route.path, {})[method.lower()] = _operation(route, method, handler, schemas)
    return {
        "openapi": "3.1.0",
        "info": {"title": "AgentOS API", "version": version,
                 "description": "The HTTP contract of AgentOS (docs/api.md says what a schema cannot)."},
        "paths": paths,
        "components": {
            "schemas": dict(sorted(schemas.defs.items())),
            "headers": {name: RESPONSE_HEADERS[name] for name in sorted(RESPONSE_HEADERS)},
            "securitySchemes": SECURITY_SCHEMES,
        },
    }
