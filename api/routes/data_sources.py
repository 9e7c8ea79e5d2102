"""Data sources: the databases an org's agents may read with `data_query`. A Postgres source
names its URL by an org secret, which the API reads only to refuse the platform's own database;
the URL is never returned."""

from __future__ import annotations

import re
from typing import Any

import psycopg
from pydantic import Field
from starlette.responses import Response

from api.endpoint import Call, endpoint, resource, validation_failed
from api.schemas.base import page_of
from api.schemas.data_sources import DataSource
from core.data_sources import SOURCE_NAME_PATTERN, NotASource, PostgresSource, check_source_url
from core.errors import ApiError
from core.secrets import Keyring, SecretError, SecretNotFound, read_secret_in
from core.store import audit
from core.store import data_sources as store
from core.tenancy import tenant_tx


class DataSourceCreate(PostgresSource):
    name: str = Field(pattern=SOURCE_NAME_PATTERN)


def _public(row: store.DataSourceRow) -> dict[str, Any]:
    return {"name": row["name"], "kind": row["kind"], **row["config"], "created_by": row["created_by"],
            "created_at": row["created_at"]}


def _not_found(name: str) -> ApiError:
    return ApiError("NOT_FOUND", f"No data source named {name!r} in this organisation.")


def _name(call: Call[Any]) -> str:
    name = str(call.request.path_params["name"])
    if not re.match(SOURCE_NAME_PATTERN, name):
        raise _not_found(name)
    return name


@endpoint("Register a data source (a Postgres database whose URL is an org secret).", role="admin",
          body=DataSourceCreate, status=201, response=DataSource, errors=("CONFLICT",))
async def create_source(call: Call[DataSourceCreate]) -> Response:
    body, principal = call.body, call.principal
    secret = body.url.secret
    keyring = Keyring.from_settings(call.settings.secrets)
    try:
        async with tenant_tx(call.pool, principal.org_id) as conn:
            try:
                url = await read_secret_in(conn, keyring, principal.org_id, secret)
                check_source_url(url, call.settings.database.url)
            except SecretNotFound:
                raise validation_failed([{"field": "url.secret", "message": f"no secret named {secret!r} in this "
                                          "organisation; PUT /v1/secrets/{name} first"}]) from None
            except SecretError as exc:
                raise validation_failed([{"field": "url.secret", "message": f"the secret cannot be read: {exc}"}]
                                        ) from None
            except NotASource as exc:
                raise validation_failed([{"field": "url", "message": str(exc)}]) from None
            row = await store.create(conn, body.name, body.kind, body.model_dump(mode="json", exclude={"name"}),
                                     principal.user_id)
            await audit.record(conn, principal.actor, "data_source.create", "data_source", row["id"],
                               {"name": body.name, "kind": body.kind})
    except psycopg.errors.UniqueViolation:
        raise ApiError("CONFLICT", f"A data source named {body.name!r} already exists.",
                       details={"field": "name"}) from None
    return call.reply(_public(row))


@endpoint("List the org's data sources.", response=page_of(DataSource))
async def list_sources(call: Call[Any]) -> Response:
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        rows = await store.list_sources(conn)
    return call.page([_public(r) for r in rows])


@endpoint("Read one data source.", response=DataSource)
async def get_source(call: Call[Any]) -> Response:
    name = _name(call)
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await store.get(conn, name)
    if row is None:
        raise _not_found(name)
    return call.reply(_public(row))


@endpoint("Remove a data source (its secret stays).", role="admin", status=204)
async def delete_source(call: Call[Any]) -> Response:
    name = _name(call)
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        if not await store.delete(conn, name):
            raise _not_found(name)
        await audit.record(conn, call.principal.actor, "data_source.delete", "data_source", None, {"name": name})
    return Response(status_code=204)


routes = [
    resource("/v1/data-sources", GET=list_sources, POST=create_source),
    resource("/v1/data-sources/{name}", GET=get_source, DELETE=delete_source),
]
