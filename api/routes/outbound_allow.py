"""The org's private-address allowlist for its custom HTTP skills, set by its admin. Only private
networks may be opened this way (10/8, 172.16/12, 192.168/16, 100.64/10, fc00::/7): never
loopback, link-local (cloud metadata lives there), other special addresses or host names (a name
could resolve anywhere). The operator's lists (`AGENTOS_OUTBOUND__*`) still apply, deny first."""

from __future__ import annotations

import ipaddress
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import Response

from api.endpoint import Call, endpoint, resource
from api.schemas.health import OutboundAllowlist
from core.store import audit, org_outbound
from core.tenancy import tenant_tx

PRIVATE_NETWORKS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "fc00::/7"))


def check_private(entry: str) -> str:
    """`entry` as a normalised network, if it lies wholly inside a private network."""
    try:
        network = ipaddress.ip_network(entry.strip(), strict=False)
    except ValueError:
        raise ValueError(f"{entry!r} is not an IP address or CIDR (host names cannot be allowed here)") from None
    if not any(network.version == p.version and network.subnet_of(p) for p in PRIVATE_NETWORKS):  # type: ignore[arg-type]
        raise ValueError(f"{entry!r} is not inside a private network ({', '.join(map(str, PRIVATE_NETWORKS))}); "
                         "only the operator can allow other addresses")
    return str(network)


class AllowlistPut(BaseModel):
    model_config = ConfigDict(extra="forbid")
    allow: list[str] = Field(max_length=50)

    @field_validator("allow")
    @classmethod
    def _private(cls, value: list[str]) -> list[str]:
        return sorted({check_private(entry) for entry in value})


@endpoint("The org's private-address allowlist for its HTTP skills.", role="admin", response=OutboundAllowlist)
async def get_allowlist(call: Call[Any]) -> Response:
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        return call.reply({"allow": await org_outbound.get(conn)})


@endpoint("Replace the org's private-address allowlist for its HTTP skills.", role="admin", body=AllowlistPut,
          response=OutboundAllowlist)
async def put_allowlist(call: Call[AllowlistPut]) -> Response:
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        allow = await org_outbound.put(conn, call.body.allow)
        await audit.record(conn, call.principal.actor, "outbound_allowlist.update", "org", call.principal.org_id,
                           {"allow": allow})
    return call.reply({"allow": allow})


routes = [resource("/v1/outbound-allowlist", GET=get_allowlist, PUT=put_allowlist)]
