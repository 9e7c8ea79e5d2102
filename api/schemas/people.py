"""People: members of an org, invitations, and what sign-in answers. No password, password hash or
token hash is ever a field here; a token appears only in the response that issues it."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from api.schemas.base import Out
from core.principal import Role


class User(Out):
    id: str
    email: str | None
    name: str | None
    email_verified: bool
    created_at: datetime


class Member(Out):
    user_id: str
    email: str | None = Field(description="null for a JWT subject seen before it signed in here.")
    name: str | None
    email_verified: bool
    role: Role
    created_at: datetime = Field(description="When the user joined the org.")


class Invitation(Out):
    id: str
    email: str
    role: Role
    invited_by: str | None
    created_at: datetime
    expires_at: datetime
    accepted_at: datetime | None
    accepted_by: str | None
    revoked_at: datetime | None


class InvitationSent(Invitation):
    token: str | None = Field(description="The invitation token, only when the server sends no mail "
                                          "(AGENTOS_PEOPLE__MAILER=none): hand it over yourself. Shown once.")


class Accepted(Out):
    user: User
    org_id: str
    role: Role


class MyOrg(Out):
    org_id: str
    org_name: str
    role: Role
    created_at: datetime = Field(description="When the user joined the org.")


class Tokens(Out):
    access_token: str | None = Field(description="A JWT for `Authorization: Bearer`; short-lived. null in a cookie "
                                                  "session (it is in the HttpOnly cookie).")
    token_type: str = "Bearer"
    expires_in: int = Field(description="Seconds the access token is valid.")
    refresh_token: str | None = Field(description="Single use: POST /v1/auth/refresh answers a new pair. Using one "
                                                  "twice ends the sign-in. null in a cookie session.")
    csrf_token: str | None = Field(default=None, description="A cookie session's CSRF token (also the agentos_csrf "
                                   "cookie): send it as X-CSRF-Token on every write. null otherwise.")
    user: User
    org_id: str
    role: Role


class SignInProviders(Out):
    providers: list[str] = Field(description="The identity providers configured here (`oidc`, `github`); empty: "
                                             "email and password only.")
    open_signup: bool = Field(description="Whether POST /v1/auth/register is open.")


class AuthorizeUrl(Out):
    authorize_url: str = Field(description="Send the browser here; the provider comes back with a code and state.")
