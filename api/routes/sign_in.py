"""Signing in with a password: tokens (a short-lived access JWT and a single-use refresh token),
refresh, logout, switching org, and password reset by a mailed single-use token.

Failed sign-ins are slowed per account and per IP (core.login_limits); an unknown email and a
wrong password get the same answer after the same work, and a reset request answers the same
whether or not the email has an account."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api import cookies
from api.endpoint import Call, endpoint, resource
from api.routes.invitations import EMAIL_PATTERN
from api.schemas.people import Tokens
from api.state import state_of
from core import access_tokens, passwords
from core.errors import ApiError
from core.login_limits import LoginLimits, refusal, request_ip
from core.mailer import Mail
from core.store import audit, logins, memberships, users
from core.tenancy import tenant_tx, user_memberships_tx

COOKIE_FIELD = ("true: the session goes in HttpOnly cookies (the console; docs/api.md, 'Cookie sessions') and "
                "the body's access_token and refresh_token are null.")


class Login(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=320, pattern=EMAIL_PATTERN)
    password: str = Field(min_length=1, max_length=passwords.MAX_LENGTH)
    org_id: str | None = Field(default=None, description="The org to act in; default: the oldest membership.")
    cookie: bool = Field(default=False, description=COOKIE_FIELD)


class Refresh(BaseModel):
    model_config = ConfigDict(extra="forbid")
    refresh_token: str | None = Field(default=None, min_length=1, max_length=200,
                                      description="Absent: the refresh cookie of a cookie session is used.")


class SwitchOrg(BaseModel):
    model_config = ConfigDict(extra="forbid")
    org_id: str = Field(min_length=1, max_length=100)


class ResetRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=320, pattern=EMAIL_PATTERN)


class ResetConfirm(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=200)
    password: str = Field(min_length=1, max_length=passwords.MAX_LENGTH)


def tokens_reply(call: Call[Any], tokens: dict[str, Any], cookie: bool, status: int | None = None) -> Response:
    """Tokens in the body, or (`cookie`) in the cookie session (api.cookies) with only the CSRF
    token in the body."""
    if not cookie:
        return call.reply(tokens | {"csrf_token": None}, status, headers=None)
    secret = call.settings.auth.jwt_secret
    assert secret is not None  # the access token was minted with it
    csrf = cookies.csrf_token(secret.get_secret_value(), tokens["session_id"])
    response = call.reply(tokens | {"access_token": None, "refresh_token": None, "csrf_token": csrf}, status)
    cookies.set_session(response, call.settings, tokens, csrf)
    return response


def _bad_credentials() -> ApiError:
    return ApiError("UNAUTHENTICATED", "The email or password is wrong.")


def limits_of(call: Call[Any]) -> LoginLimits:
    return LoginLimits(call.infra.redis, call.settings.people)


async def issue(call: Call[Any], user_id: str, org_id: str | None, method: str) -> dict[str, Any]:
    """A new sign-in session of the user in the org (or its oldest org) and its first tokens."""
    async with user_memberships_tx(call.pool, user_id) as conn:
        orgs = await memberships.orgs_of(conn, user_id)
        user = await users.get(conn, user_id)
    chosen = next((o for o in orgs if org_id is None or o["org_id"] == org_id), None)
    if chosen is None or user is None:
        raise ApiError("FORBIDDEN", "You are not a member of that organisation." if org_id else
                       "You belong to no organisation yet; accept an invitation first.")
    async with tenant_tx(call.pool, chosen["org_id"]) as conn:
        session_id, refresh = await logins.start(
            conn, user_id=user_id, org_id=chosen["org_id"], method=method,
            lifetime=timedelta(seconds=call.settings.people.session_ttl_s))
        await audit.record(conn, f"user:{user_id}", "auth.login", "user", user_id,
                           {"method": method, "session_id": session_id})
    access, ttl = access_tokens.mint(call.settings, user_id=user_id, org_id=chosen["org_id"],
                                     role=chosen["role"], session_id=session_id)
    return {"access_token": access, "expires_in": ttl, "refresh_token": refresh, "user": user,
            "org_id": chosen["org_id"], "role": chosen["role"], "session_id": session_id}


@endpoint("Sign in with email and password: an access token and a refresh token. Failed attempts are slowed "
          "per account and per IP (429 with Retry-After).", role=None, body=Login, response=Tokens,
          headers=("Set-Cookie",), errors=("UNAUTHENTICATED", "FORBIDDEN", "RATE_LIMITED", "UNAVAILABLE"))
async def login(call: Call[Login]) -> Response:
    email = users.normal_email(call.body.email)
    ip = request_ip()
    limits = limits_of(call)
    locked = await limits.check(email, ip)
    if locked is not None:
        raise refusal(locked)
    async with call.pool.connection() as conn:
        user = await users.by_email(conn, email)
    if not await passwords.verify(user["password_hash"] if user else None, call.body.password) or user is None:
        locked = await limits.failed(email, ip)
        if locked is not None:
            raise refusal(locked)
        raise _bad_credentials()
    await limits.succeeded(email)
    return tokens_reply(call, await issue(call, user["id"], call.body.org_id, "password"), call.body.cookie)


@endpoint("Trade a refresh token for a new pair. Each refresh token works once; presenting a used one again "
          "ends the whole sign-in. Without a body token, the cookie session's refresh cookie is used (and the "
          "X-CSRF-Token header is required).", role=None, body=Refresh, response=Tokens, headers=("Set-Cookie",),
          errors=("UNAUTHENTICATED", "CSRF_FAILED", "UNAVAILABLE"))
async def refresh(call: Call[Refresh]) -> Response:
    reused, cookie, token, header = False, call.body.refresh_token is None, call.body.refresh_token, ""
    if cookie:
        token = call.request.cookies.get(cookies.REFRESH_COOKIE)
        if not token:
            raise ApiError("UNAUTHENTICATED", "Send a refresh_token, or sign in with a cookie session first.")
        header = cookies.check_origin_and_header(call.request)
    async with call.pool.connection() as conn, conn.transaction():
        assert token is not None
        try:
            rotated = await logins.rotate(conn, token)
        except logins.RefreshReused:
            reused, rotated = True, None  # caught inside the transaction: the revocation commits
        if cookie and rotated is not None:
            secret = call.settings.auth.jwt_secret
            if secret is None or header != cookies.csrf_token(secret.get_secret_value(), rotated[0]["session_id"]):
                # Raised inside the transaction: the rotation is undone.
                raise ApiError("CSRF_FAILED", "The X-CSRF-Token header belongs to another sign-in.")
    if reused:
        raise ApiError("UNAUTHENTICATED", "This refresh token was used before, so this sign-in has been ended; "
                                          "sign in again.")
    if rotated is None:
        raise ApiError("UNAUTHENTICATED", "The refresh token is invalid, expired or its sign-in has ended.")
    session, next_refresh = rotated
    async with user_memberships_tx(call.pool, session["user_id"]) as conn:
        role = await memberships.role_in(conn, session["user_id"], session["org_id"])
        user = await users.get(conn, session["user_id"])
    if role is None or user is None:
        raise ApiError("UNAUTHENTICATED", "You are no longer a member of this organisation.")
    access, ttl = access_tokens.mint(call.settings, user_id=user["id"], org_id=session["org_id"], role=role,
                                     session_id=session["session_id"])
    return tokens_reply(call, {"access_token": access, "expires_in": ttl, "refresh_token": next_refresh,
                               "user": user, "org_id": session["org_id"], "role": role,
                               "session_id": session["session_id"]}, cookie)


def _session_of(call: Call[Any]) -> str:
    p = call.principal
    if p.credential != "jwt" or p.session_id is None:
        raise ApiError("BAD_REQUEST", "This needs the access token of a sign-in (POST /v1/auth/login), "
                                      "not an API key or an external JWT.")
    return p.session_id


@endpoint("Sign out: the sign-in of this access token ends (its access and refresh tokens stop working) and "
          "the cookie session's cookies are cleared.", status=204, headers=("Set-Cookie",), errors=("BAD_REQUEST",))
async def logout(call: Call[Any]) -> Response:
    session_id = _session_of(call)
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        await logins.revoke(conn, session_id, "logout")
        await audit.record(conn, call.principal.actor, "auth.logout", "user", call.principal.user_id)
    response = Response(status_code=204)
    cookies.clear_session(response, call.settings)
    return response


@endpoint("Switch to another org you belong to: a new sign-in there, with its own tokens (in new cookies when "
          "signed in by cookie).", body=SwitchOrg, response=Tokens, headers=("Set-Cookie",),
          errors=("BAD_REQUEST", "FORBIDDEN", "UNAVAILABLE"))
async def switch_org(call: Call[SwitchOrg]) -> Response:
    _session_of(call)
    assert call.principal.user_id is not None
    tokens = await issue(call, call.principal.user_id, call.body.org_id, "switch")
    return tokens_reply(call, tokens, cookies.by_cookie(call.request))


@endpoint("Ask for a password reset link by mail. The answer is the same whether or not the email has an account; "
          "requests are limited per IP and per email (429 with Retry-After).",
          role=None, body=ResetRequest, status=204, errors=("RATE_LIMITED",))
async def request_reset(call: Call[ResetRequest]) -> Response:
    email = users.normal_email(call.body.email)
    people, limits, ip = call.settings.people, limits_of(call), request_ip()
    # Counted whether or not the email has an account, so a 429 tells nothing about it either.
    locked = await limits.attempt("reset", "ip", ip, people.reset_requests_per_ip) if ip else None
    locked = locked or await limits.attempt("reset", "email", email, people.reset_mails_per_email)
    if locked is not None:
        raise refusal(locked, "password reset requests")
    async with call.pool.connection() as conn, conn.transaction():
        user = await users.by_email(conn, email)
        token = None if user is None else await logins.new_reset(
            conn, user["id"], timedelta(seconds=call.settings.people.reset_ttl_s))
    if token is not None:
        link = call.settings.people.reset_url.replace("{token}", token)
        await state_of(call.request).mailer.send(Mail(email, "Reset your AgentOS password",
                                                      f"Set a new password: {link}\n\nIgnore this mail if you "
                                                      "did not ask for it.\n"))
    return Response(status_code=204)


@endpoint("Set a new password with a reset token (works once). Every sign-in of the account ends.", role=None,
          body=ResetConfirm, status=204, errors=("NOT_FOUND", "PASSWORD_REJECTED"))
async def confirm_reset(call: Call[ResetConfirm]) -> Response:
    async with call.pool.connection() as conn, conn.transaction():
        user_id = await logins.use_reset(conn, call.body.token)
        if user_id is None:
            raise ApiError("NOT_FOUND", "This reset link is unknown, used or expired; ask for a new one.")
        user = await users.get(conn, user_id)
        assert user is not None
        try:
            passwords.check_rules(call.body.password, min_length=call.settings.people.password_min_length,
                                  email=user["email"])
        except passwords.PasswordRejected as exc:
            raise ApiError("PASSWORD_REJECTED", f"The password {exc}.") from None
        await users.set_password(conn, user_id, await passwords.hash_password(call.body.password))
        # The mail reached its owner: the address is verified.
        await users.mark_verified(conn, user_id)
        await logins.revoke_user(conn, user_id, "password_reset")
    await limits_of(call).succeeded(str(user["email"]))
    return Response(status_code=204)


routes = [
    resource("/v1/auth/login", POST=login),
    resource("/v1/auth/refresh", POST=refresh),
    resource("/v1/auth/logout", POST=logout),
    resource("/v1/auth/switch-org", POST=switch_org),
    resource("/v1/auth/password-reset", POST=request_reset),
    resource("/v1/auth/password-reset/confirm", POST=confirm_reset),
]
