"""Build `/openapi.json` from the routes themselves: each `@endpoint` carries its summary,
access, body model and status, so the document cannot drift from what is served."""

from __future__ import annotations

import re
from typing import Any

from starlette.routing import BaseRoute

from api.endpoint import Resource

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message", "details"],
            "properties": {
                "code": {"type": "string", "examples": ["VALIDATION_FAILED"]},
                "message": {"type": "string"},
                "details": {"type": "object"},
            },
        }
    },
}


def _error(description: str) -> dict[str, Any]:
    schema = {"$ref": "#/components/schemas/Error"}
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def build_openapi(routes: list[BaseRoute], version: str) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    schemas: dict[str, Any] = {"Error": _ERROR_SCHEMA}
    for route in routes:
        if not isinstance(route, Resource):
            continue
        for method, handler in sorted(route.handlers.items()):
            if method == "HEAD":
                continue
            spec = handler.spec
            op: dict[str, Any] = {
                "summary": spec.summary,
                "operationId": handler.handler.__name__,
                "responses": {str(spec.status): {"description": spec.response or "No content"}},
            }
            params = [
                {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
                for name in re.findall(r"{(\w+)}", route.path)
            ]
            if spec.paginated:
                params += [
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ]
            if spec.response == "EventStream":
                op["responses"][str(spec.status)]["content"] = {"text/event-stream": {"schema": {"type": "string"}}}
                params += [
                    {"name": "Last-Event-ID", "in": "header", "schema": {"type": "integer", "minimum": 0}},
                    {"name": "after", "in": "query", "schema": {"type": "integer", "minimum": 0}},
                ]
            if params:
                op["parameters"] = params
            if spec.body is not None:
                name = spec.body.__name__
                schema = spec.body.model_json_schema(ref_template="#/components/schemas/{model}")
                schemas.update(schema.pop("$defs", {}))
                schemas[name] = schema
                op["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{name}"}}},
                }
                op["responses"]["422"] = _error("VALIDATION_FAILED")
            if spec.role is not None:
                op["security"] = [{"bearer": []}]
                op["responses"]["401"] = _error("UNAUTHENTICATED")
                if spec.role not in ("viewer", "platform_admin"):
                    op["responses"]["403"] = _error(f"FORBIDDEN: needs role {spec.role} or higher")
            if "{" in route.path:
                op["responses"]["404"] = _error("NOT_FOUND")
            paths.setdefault(route.path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "AgentOS API", "version": version},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "API key (aos_...) or JWT"}
            },
        },
    }
