"""Endpoint metadata is typed: `@endpoint` makes an `Endpoint` holding its `EndpointSpec`, and
`resource()` makes a `Resource` route holding its endpoints; `/openapi.json` is built from them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from pydantic import ValidationError
from starlette.routing import Route

from api.app import _routes, create_app
from api.endpoint import Call, Endpoint, EndpointSpec, Resource
from api.openapi import build_openapi
from api.routes import agents
from api.schemas.api_keys import ApiKey


def test_endpoint_is_a_typed_callable_that_keeps_its_handlers_name_and_doc():
    create = agents.create_agent
    assert isinstance(create, Endpoint)
    assert isinstance(create.spec, EndpointSpec)
    assert create.spec.body is agents.AgentCreate
    assert (create.spec.role, create.spec.status) == ("member", 201)
    assert create.__name__ == "create_agent"
    assert create.__wrapped__ is create.handler  # functools.update_wrapper


def test_every_route_but_the_documentation_and_the_console_is_a_resource_with_typed_endpoints(settings):
    for route in create_app(settings).routes:
        path = getattr(route, "path", None)
        if path in ("/openapi.json", "/docs", "/docs/assets") or (path or "").startswith("/console"):
            continue
        assert isinstance(route, Route)
        assert isinstance(route, Resource), route.path
        assert route.handlers and all(isinstance(h, Endpoint) for h in route.handlers.values())
        assert route.methods == set(route.handlers)
        if "GET" in route.handlers:
            assert route.handlers["HEAD"] is route.handlers["GET"]


def test_openapi_names_operations_after_their_handlers():
    doc = build_openapi(_routes(), "test")
    assert doc["paths"]["/v1/agents/{agent_id}"]["patch"]["operationId"] == "patch_agent"
    assert doc["paths"]["/v1/agents"]["post"]["summary"] == agents.create_agent.spec.summary


def test_a_reply_goes_through_the_declared_model_and_status_only():
    """What leaves the server is the declared model's fields (an internal column never leaks), and
    a status the endpoint does not declare is a bug caught before it is served."""
    spec = EndpointSpec("Read a key.", "admin", None, 200, ApiKey, False)
    call: Call[Any] = Call(request=None, caller=None, body=None, spec=spec)  # type: ignore[arg-type]
    row = {"id": "key_1", "name": "k", "prefix": "abc", "role": "admin", "created_by": None,
           "created_at": datetime(2026, 12, 1, tzinfo=UTC), "expires_at": None, "last_used_at": None,
           "revoked_at": None, "secret_hash": "deadbeef"}
    body = orjson.loads(call.reply(row).body)
    assert "secret_hash" not in body and body["created_at"] == "2026-12-01T00:00:00Z"
    with pytest.raises(RuntimeError, match="declares no body for status 201"):
        call.reply(row, status=201)
    with pytest.raises(ValidationError):
        call.reply({"id": "key_1"})
