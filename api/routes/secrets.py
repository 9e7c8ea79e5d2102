"""Org secrets: admins store and delete them by name; listings show names and timestamps only.
A value goes in through `PUT` and never comes back out of the API (skills and providers read it
in the worker through `core.secrets`)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from starlette.responses import Response

from api.endpoint import Call, endpoint, resource, validation_failed
from api.schemas.base import page_of
from api.schemas.secrets import Secret
from core.errors import ApiError
from core.pagination import DEFAULT_LIMIT, MAX_LIMIT, encode_cursor
from core.secrets import Keyring, store_secret
from core.store import audit
from core.store import secrets as store
from core.store.secrets import NAME_RE
from core.tenancy import tenant_tx


class SecretPut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # SecretStr: the value never shows in a repr, a log line or a validation error.
    value: SecretStr = Field(min_length=1)


def _name(call: Call[Any]) -> str:
    name = str(call.request.path_params["name"])
    if not NAME_RE.match(name):
        raise ApiError("NOT_FOUND", f"No secret named {name!r} in this organisation (names are 1-128 letters, "
                                    "digits, '_', '.' or '-').")
    return name


def _page_after(call: Call[Any]) -> str | None:
    """The name after which a page starts: the cursor is the last name of the previous page."""
    cursor = call.request.query_params.get("cursor")
    if not cursor:
        return None
    try:
        name = base64.urlsafe_b64decode((cursor + "=" * (-len(cursor) % 4)).encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        name = ""
    if not NAME_RE.match(name):
        raise validation_failed([{"field": "cursor", "message": "is not a cursor this API returned"}])
    return name


@endpoint("Store a secret under this name (replacing its value if it exists); the value is never returned.",
          role="admin", body=SecretPut, response=Secret)
async def put_secret(call: Call[SecretPut]) -> Response:
    name, principal = _name(call), call.principal
    value = call.body.value.get_secret_value()
    limit = call.settings.secrets.max_value_chars
    if len(value) > limit:
        raise validation_failed([{"field": "value", "message": f"is longer than {limit} characters",
                                  "type": "too_long"}])
    keyring = Keyring.from_settings(call.settings.secrets)
    async with tenant_tx(call.pool, principal.org_id) as conn:
        row, created = await store_secret(conn, keyring, principal.org_id, name, value, principal.user_id)
        await audit.record(conn, principal.actor, "secret.create" if created else "secret.update", "secret", name,
                           {"key_version": row["key_version"]})
    return call.reply({**row, "created": created})


@endpoint("List the org's secrets by name: names and timestamps, never values.", role="admin", paginated=True,
          response=page_of(Secret))
async def list_secrets(call: Call[Any]) -> Response:
    after = _page_after(call)
    try:
        limit = int(call.request.query_params.get("limit", DEFAULT_LIMIT))
    except ValueError:
        limit = -1
    if not 1 <= limit <= MAX_LIMIT:
        raise validation_failed([{"field": "limit", "message": f"must be an integer from 1 to {MAX_LIMIT}"}])
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        rows = await store.list_secrets(conn, after, limit)
    data = rows[:limit]
    next_cursor = encode_cursor(data[-1]["name"]) if len(rows) > limit and data else None
    return call.page(data, next_cursor)


@endpoint("Delete a secret; whatever refers to it fails with a readable error from then on.", role="admin",
          status=204)
async def delete_secret(call: Call[Any]) -> Response:
    name = _name(call)
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        if await store.delete(conn, name) is None:
            raise ApiError("NOT_FOUND", f"No secret named {name!r} in this organisation.")
        await audit.record(conn, call.principal.actor, "secret.delete", "secret", name)
    return Response(status_code=204)


routes = [
    resource("/v1/secrets", GET=list_secrets),
    resource("/v1/secrets/{name}", PUT=put_secret, DELETE=delete_secret),
]
