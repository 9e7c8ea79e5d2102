"""Who is calling: every request resolves to one Principal; nothing downstream reads headers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Role = Literal["owner", "admin", "member", "viewer"]
ROLES: tuple[Role, ...] = ("viewer", "member", "admin", "owner")
_RANK: dict[str, int] = {role: rank for rank, role in enumerate(ROLES)}


def role_at_least(role: str, minimum: Role) -> bool:
    return _RANK.get(role, -1) >= _RANK[minimum]


@dataclass(frozen=True)
class Principal:
    org_id: str
    user_id: str | None
    role: Role
    scopes: frozenset[str] = field(default_factory=frozenset)
    credential: Literal["api_key", "jwt", "stream_token"] = "api_key"
    credential_id: str | None = None  # the API key id, or the JWT's (or stream token's) `jti` when present
    # The sign-in session of an access token this server minted (core.access_tokens), else None.
    session_id: str | None = None

    @property
    def actor(self) -> str:
        """How audit logs name this caller."""
        if self.user_id:
            return f"user:{self.user_id}"
        return f"api_key:{self.credential_id}"

    def allows(self, minimum: Role) -> bool:
        return role_at_least(self.role, minimum)

    def public(self) -> dict[str, object]:
        return {
            "org_id": self.org_id,
            "user_id": self.user_id,
            "role": self.role,
            "scopes": sorted(self.scopes),
            "credential": self.credential,
        }
