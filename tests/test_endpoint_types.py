"""Endpoint metadata is typed: `@endpoint` makes an `Endpoint` holding its `EndpointSpec`, and
`resource()` makes a `Resource` route holding its endpoints; `/openapi.json` is built from them."""

from __future__ import annotations

from starlette.routing import Route

from api.app import _routes, create_app
from api.endpoint import Endpoint, EndpointSpec, Resource
from api.openapi import build_openapi
from api.routes import agents


def test_endpoint_is_a_typed_callable_that_keeps_its_handlers_name_and_doc():
    create = agents.create_agent
    assert isinstance(create, Endpoint)
    assert isinstance(create.spec, EndpointSpec)
    assert create.spec.body is agents.AgentCreate
    assert (create.spec.role, create.spec.status) == ("member", 201)
    assert create.__name__ == "create_agent"
    assert create.__wrapped__ is create.handler  # functools.update_wrapper


def test_every_route_but_the_documentation_is_a_resource_with_typed_endpoints(settings):
    for route in create_app(settings).routes:
        if route.path in ("/openapi.json", "/docs", "/docs/assets"):  # type: ignore[attr-defined]
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
