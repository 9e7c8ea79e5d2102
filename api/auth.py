"""Turn `Authorization: Bearer <credential>` into a Principal, or refuse with 401.

Credentials are API keys (`aos_...`) or JWTs. JWTs are checked with an explicit algorithm per
key kind: HS256 with the shared secret, RS256 with a configured public key or a JWKS URL. A
token whose header names any other algorithm (including `none`) is refused, and a token that
claims HS256 is never checked against an RSA public key.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import replace
from typing import Any

import jwt
from starlette.requests import Request

from api import cookies
from api.stream_access import stream_principal
from core.access_tokens import SESSION_CLAIM
from core.auth_cache import KeyCache
from core.errors import ApiError
from core.principal import ROLES, Principal
from core.settings import AuthSettings, SecretsSettings
from core.store import api_keys, logins, orgs, users
from core.tenancy import AsyncPool, tenant_tx

_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="agentos"'}
_ORG_CACHE_TTL_S = 60.0
_TOUCH_EVERY_S = 60.0  # how often one process records a key's last use
_NUMERIC_CLAIMS = ("exp", "nbf", "iat")  # NumericDate claims (RFC 7519, section 2)
_SEEN_MAX = 100_000  # JWT subjects one process remembers having recorded


def unauthenticated(message: str) -> ApiError:
    return ApiError("UNAUTHENTICATED", message, headers=_CHALLENGE)


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization")
    if not header:
        raise unauthenticated("Missing credential: send 'Authorization: Bearer <API key or JWT>'.")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthenticated("Malformed Authorization header: use 'Bearer <API key or JWT>'.")
    return token.strip()


class Authenticator:
    """Resolves credentials against the database (API keys) or the configured JWT keys."""

    def __init__(self, settings: AuthSettings, pool: AsyncPool, *, stream_keys: SecretsSettings | None = None,
                 keys: KeyCache | None = None) -> None:
        self._settings = settings
        self._pool = pool
        # Verified API keys, trusted for seconds; None: every request looks its key up.
        self.keys = keys
        self._stream_keys = stream_keys
        self._jwks: jwt.PyJWKClient | None = (
            jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=300, timeout=5)
            if settings.jwks_url
            else None
        )
        self._known_orgs: dict[str, float] = {}
        self._touched: dict[str, float] = {}
        self._seen: set[tuple[str, str]] = set()

    async def authenticate(self, request: Request) -> Principal:
        # `?token=` is a stream token (an EventSource cannot send headers). A request carrying one
        # is judged by it alone, never by the Authorization header beside it: off its own stream
        # it is refused, so a leaked URL opens nothing else.
        query_token = request.query_params.get("token")
        if query_token is not None:
            if self._stream_keys is None:
                raise unauthenticated("This server takes no stream tokens; send 'Authorization: Bearer <credential>'.")
            return stream_principal(request, query_token, self._stream_keys)
        if cookies.by_cookie(request):
            return await self._cookie(request)
        token = bearer_token(request)
        if token.startswith("aos_"):
            return await self._api_key(token)
        return await self._jwt(token)

    async def _cookie(self, request: Request) -> Principal:
        """The console's cookie session (api.cookies): a sign-in's access token, and on a write
        the CSRF header that only this server's own pages can send."""
        principal = await self._jwt(request.cookies[cookies.ACCESS_COOKIE])
        if principal.session_id is None or self._settings.jwt_secret is None:
            raise unauthenticated("The session cookie holds no sign-in of this server; sign in again.")
        if request.method not in cookies.SAFE_METHODS:
            cookies.check_csrf(request, self._settings.jwt_secret.get_secret_value(), principal.session_id)
        return principal

    async def invalidate(self, *, key_id: str | None = None, org_id: str | None = None,
                         user_id: str | None = None) -> None:
        """After a commit that changed keys or a member's access: no API process trusts a matching
        cached key any longer (core.auth_cache.KeyCache.invalidate)."""
        if self.keys is not None:
            await self.keys.invalidate(key_id=key_id, org_id=org_id, user_id=user_id)

    def is_platform_admin(self, request: Request) -> bool:
        admin = self._settings.platform_admin_token
        if admin is None:
            return False
        token = bearer_token(request)
        return hmac.compare_digest(token.encode(), admin.get_secret_value().encode())

    async def _api_key(self, token: str) -> Principal:
        row = self.keys.get(token) if self.keys is not None else None
        if row is None:
            generation = self.keys.generation if self.keys is not None else 0
            row = await api_keys.verify(self._pool, token)
            if row is None:
                raise unauthenticated("The API key is invalid, revoked or expired.")
            if self.keys is not None:
                self.keys.put(token, row, generation)
        now = time.monotonic()
        if self._touched.get(row["id"], 0.0) + _TOUCH_EVERY_S <= now:
            self._touched[row["id"]] = now
            async with tenant_tx(self._pool, row["org_id"]) as conn:
                await api_keys.touch(conn, row["id"])
        return Principal(
            org_id=row["org_id"],
            user_id=row["created_by"],
            role=row["role"],
            credential="api_key",
            credential_id=row["id"],
        )

    def _jwt_key(self, token: str, alg: str) -> Any:
        s = self._settings
        if alg == "HS256" and s.jwt_secret is not None:
            return s.jwt_secret.get_secret_value()
        if alg == "RS256" and s.jwt_public_key:
            return s.jwt_public_key
        if alg == "RS256" and self._jwks is not None:
            return self._jwks.get_signing_key_from_jwt(token).key
        raise unauthenticated(f"JWT algorithm {alg!r} is not accepted by this server.")

    async def _jwt(self, token: str) -> Principal:
        s = self._settings
        try:
            alg = str(jwt.get_unverified_header(token).get("alg", ""))
            key = await asyncio.to_thread(self._jwt_key, token, alg) if self._jwks else self._jwt_key(token, alg)
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=s.jwt_audience,
                issuer=s.jwt_issuer,
                leeway=s.jwt_leeway_s,
                options={"require": ["exp", "sub", "aud"]},
            )
        except ApiError:
            raise
        except jwt.ExpiredSignatureError as exc:
            raise unauthenticated("The JWT has expired; get a new token.") from exc
        except jwt.InvalidAudienceError as exc:
            raise unauthenticated(f"The JWT audience must be {s.jwt_audience!r}.") from exc
        except (jwt.PyJWTError, ValueError, TypeError) as exc:
            raise unauthenticated("The JWT is invalid or its signature does not verify.") from exc
        for name in _NUMERIC_CLAIMS:
            # PyJWT checks these with int(), which also takes "9999999999"; RFC 7519 says numbers.
            value = claims.get(name)
            if name in claims and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise unauthenticated(f"The JWT claim {name!r} must be a number (seconds since the epoch).")
        org_id = claims.get("org_id")
        role = claims.get("role", "viewer")
        if not isinstance(org_id, str) or not org_id:
            raise unauthenticated("The JWT has no 'org_id' claim.")
        if role not in ROLES:
            raise unauthenticated(f"The JWT role must be one of {', '.join(ROLES)}.")
        if not await self._org_exists(org_id):
            raise unauthenticated("The JWT names an organisation that does not exist.")
        raw_scopes = claims.get("scopes", claims.get("scope", []))
        scopes = raw_scopes.split() if isinstance(raw_scopes, str) else list(raw_scopes or [])
        principal = Principal(
            org_id=org_id,
            user_id=str(claims["sub"]),
            role=role,
            scopes=frozenset(str(x) for x in scopes),
            credential="jwt",
            credential_id=claims.get("jti"),
        )
        if SESSION_CLAIM in claims:
            return await self._signed_in(principal, claims[SESSION_CLAIM])
        await self._first_seen(principal)
        return principal

    async def _signed_in(self, principal: Principal, session_id: object) -> Principal:
        """A token this server minted at sign-in (core.access_tokens): good only while its session
        is live and its user a member, with the member's role of now (checked on every request,
        so logout and removal take effect at once)."""
        assert principal.user_id is not None
        if not isinstance(session_id, str):
            raise unauthenticated("The JWT's sign-in session is malformed.")
        async with tenant_tx(self._pool, principal.org_id) as conn:
            role = await logins.session_role(conn, session_id, principal.user_id)
        if role not in ROLES:
            raise unauthenticated("This sign-in has ended (signed out, removed from the organisation or expired); "
                                  "sign in again.")
        return replace(principal, role=role, session_id=session_id)

    async def _first_seen(self, principal: Principal) -> None:
        """A subject's first request to an org is its login in the audit log. Each process checks
        a subject once (an insert that finds the row does nothing), so this costs nothing later."""
        assert principal.user_id is not None
        known = (principal.org_id, principal.user_id)
        if known in self._seen:
            return
        async with tenant_tx(self._pool, principal.org_id) as conn:
            await users.seen(conn, principal.user_id, principal.role, principal.actor)
        if len(self._seen) >= _SEEN_MAX:
            self._seen.clear()
        self._seen.add(known)

    async def _org_exists(self, org_id: str) -> bool:
        now = time.monotonic()
        if self._known_orgs.get(org_id, 0.0) > now:
            return True
        if await orgs.get_org(self._pool, org_id) is None:
            return False
        self._known_orgs[org_id] = now + _ORG_CACHE_TTL_S
        return True
