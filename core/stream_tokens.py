"""Stream tokens: short-lived, signed grants to read one run's or one session's event stream.

A browser's `EventSource` cannot send `Authorization`, so the SSE routes also take `?token=`
with one of these. A token is a JWT (HS256) whose audience is `agentos:stream` and whose claims
bind it to an org and to one resource (`run:<id>` or `session:<id>`); it carries no role: it
only ever opens that stream (the API checks the route, `api.stream_access`).

The signing key is derived (HKDF-SHA256, its own label) from the key-encryption key of org
secrets (`settings.secrets`), so there is no extra secret to configure and nothing that could
verify as an ordinary JWT or an API key. The header's `kid` names the key version: tokens keep
verifying while that version stays configured, and die with it.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

import jwt
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from core.settings import SecretsSettings

AUDIENCE = "agentos:stream"
ALGORITHM = "HS256"
_KDF_INFO = b"agentos stream tokens v1"
# Issuer and verifier are API processes of one deployment; allow only a little clock skew.
LEEWAY_S = 5
StreamKind = Literal["run", "session"]
KINDS: tuple[StreamKind, ...] = ("run", "session")


class StreamTokenError(Exception):
    """A token that does not verify; `code` is the API error code to answer with."""

    def __init__(self, code: Literal["STREAM_TOKEN_INVALID", "STREAM_TOKEN_EXPIRED"], message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(message)


@dataclass(frozen=True)
class StreamGrant:
    """What a valid token allows: reading the stream of `kind` `resource_id` in `org_id`."""

    org_id: str
    kind: StreamKind
    resource_id: str
    expires_at: datetime
    token_id: str
    user_id: str | None = None  # who asked for it, when a user did


def _key(keys: SecretsSettings, version: int) -> bytes:
    kek = base64.b64decode(keys.keys[version].get_secret_value())
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KDF_INFO).derive(kek)


def issue(keys: SecretsSettings, org_id: str, kind: StreamKind, resource_id: str, ttl_s: int, *,
          user_id: str | None = None, now: datetime | None = None) -> tuple[str, StreamGrant]:
    """A signed token for the grant, and the grant. `now` lets tests make one already expired."""
    issued = (now or datetime.now(UTC)).replace(microsecond=0)
    grant = StreamGrant(org_id, kind, resource_id, issued + timedelta(seconds=ttl_s), secrets.token_urlsafe(12),
                        user_id)
    claims = {
        "aud": AUDIENCE, "org_id": org_id, "res": f"{kind}:{resource_id}", "jti": grant.token_id,
        "iat": int(issued.timestamp()), "exp": int(grant.expires_at.timestamp()),
    }
    if user_id is not None:
        claims["sub"] = user_id
    version = keys.active_key_version
    token = jwt.encode(claims, _key(keys, version), algorithm=ALGORITHM, headers={"kid": str(version)})
    return token, grant


def verify(keys: SecretsSettings, token: str) -> StreamGrant:
    """The grant a token carries, or `StreamTokenError` (expired, tampered, not a stream token)."""
    invalid = StreamTokenError("STREAM_TOKEN_INVALID", "The stream token is malformed, altered or not a stream "
                               "token; get a new one from POST /v1/stream-tokens.")
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        version = int(kid) if isinstance(kid, str) and kid.isdigit() else None
        if version is None or version not in keys.keys:
            raise invalid
        claims = jwt.decode(token, _key(keys, version), algorithms=[ALGORITHM], audience=AUDIENCE, leeway=LEEWAY_S,
                            options={"require": ["exp", "iat", "aud", "jti", "org_id", "res"]})
    except jwt.ExpiredSignatureError:
        raise StreamTokenError("STREAM_TOKEN_EXPIRED", "The stream token has expired; get a new one from "
                               "POST /v1/stream-tokens and reconnect with it (and ?after=<last event id>).") from None
    except (jwt.PyJWTError, ValueError, TypeError):
        raise invalid from None
    kind, _, resource_id = str(claims["res"]).partition(":")
    org_id, sub = claims["org_id"], claims.get("sub")
    if kind not in KINDS or not resource_id or not isinstance(org_id, str) or not org_id:
        raise invalid
    return StreamGrant(org_id, kind, resource_id, datetime.fromtimestamp(claims["exp"], UTC),
                       str(claims["jti"]), sub if isinstance(sub, str) else None)
