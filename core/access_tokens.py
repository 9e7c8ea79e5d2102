"""Access tokens of people who signed in: short-lived HS256 JWTs that `api.auth` validates like
any other JWT (same audience, issuer, expiry rules), naming the user (`sub`), the org, the role
at sign-in and the sign-in session (`agentos_sid`). A token with a session is honoured only while
that session is live and the user is still a member (the role is read from the membership)."""

from __future__ import annotations

import secrets
import time

import jwt

from core.errors import ApiError
from core.settings import Settings

SESSION_CLAIM = "agentos_sid"


def mint(settings: Settings, *, user_id: str, org_id: str, role: str, session_id: str) -> tuple[str, int]:
    """(token, lifetime in seconds)."""
    secret = settings.auth.jwt_secret
    if secret is None:
        raise ApiError("UNAVAILABLE", "Sign-in needs AGENTOS_AUTH__JWT_SECRET to sign access tokens; it is unset.")
    ttl = settings.people.access_token_ttl_s
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": user_id, "org_id": org_id, "role": role, "aud": settings.auth.jwt_audience,
        "iat": now, "exp": now + ttl, "jti": secrets.token_hex(12),
        SESSION_CLAIM: session_id,
    }
    if settings.auth.jwt_issuer:
        claims["iss"] = settings.auth.jwt_issuer
    return jwt.encode(claims, secret.get_secret_value(), algorithm="HS256"), ttl
