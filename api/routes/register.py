"""Open self-registration (off unless the operator sets `AGENTOS_PEOPLE__OPEN_SIGNUP=true`): anyone
makes an account and an org of their own, as its owner, and is signed in at once. The email stays
unverified until the mailed link is used (`verify-email`); until then the account is its
registrant's only provisionally: whoever proves the mailbox (an invitation, a reset link, a
provider's verified email) takes it over and the registrant's password and sign-ins end
(core.store.users.claim_unverified). Registrations are counted per IP (core.login_limits)."""

from __future__ import annotations

from datetime import timedelta

from psycopg.errors import UniqueViolation
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.endpoint import Call, endpoint, resource
from api.routes.invitations import EMAIL_PATTERN
from api.routes.sign_in import COOKIE_FIELD, issue, limits_of, tokens_reply
from api.schemas.people import Tokens
from api.state import state_of
from core import passwords
from core.errors import ApiError
from core.ids import new_id
from core.login_limits import refusal, request_ip
from core.mailer import Mail
from core.store import audit, logins, memberships, orgs, users
from core.tenancy import tenant_tx


class Register(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=320, pattern=EMAIL_PATTERN)
    password: str = Field(min_length=1, max_length=passwords.MAX_LENGTH)
    name: str | None = Field(default=None, min_length=1, max_length=200)
    org_name: str | None = Field(default=None, min_length=1, max_length=200,
                                 description="The new org's name; default: the email address.")
    cookie: bool = Field(default=False, description=COOKIE_FIELD)


class VerifyEmail(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=200)


@endpoint("Register (when the operator opened sign-up): a new account and a new org with you as its owner, "
          "signed in. The email is verified by the mailed link.", role=None, body=Register, status=201,
          response=Tokens, headers=("Set-Cookie",),
          errors=("SIGNUP_DISABLED", "CONFLICT", "PASSWORD_REJECTED", "RATE_LIMITED", "UNAVAILABLE"))
async def register(call: Call[Register]) -> Response:
    people = call.settings.people
    if not people.open_signup:
        raise ApiError("SIGNUP_DISABLED", "Sign-up is by invitation only on this server; ask an admin of your "
                                          "organisation to invite you.")
    ip = request_ip()
    if ip is not None:
        locked = await limits_of(call).attempt("register", "ip", ip, people.signups_per_ip)
        if locked is not None:
            raise refusal(locked, "registrations")
    body = call.body
    email = users.normal_email(body.email)
    try:
        passwords.check_rules(body.password, min_length=people.password_min_length, email=email)
    except passwords.PasswordRejected as exc:
        raise ApiError("PASSWORD_REJECTED", f"The password {exc}.") from None
    password_hash = await passwords.hash_password(body.password)
    org_id, org_name = new_id("org"), body.org_name or email
    try:
        async with tenant_tx(call.pool, org_id) as conn:
            if await users.by_email(conn, email) is not None:
                raise _email_taken()
            await orgs.insert(conn, org_id, org_name)
            user = await users.create(conn, email=email, name=body.name, verified=False, password_hash=password_hash)
            await memberships.add(conn, user["id"], "owner")
            token = await logins.new_reset(conn, user["id"], timedelta(seconds=people.verify_ttl_s), "verify")
            actor = f"user:{user['id']}"
            await audit.record(conn, actor, "org.create", "org", org_id, {"name": org_name, "via": "register"})
            await audit.record(conn, actor, "user.register", "user", user["id"], {})
    except orgs.OrgNameTaken:
        raise ApiError("CONFLICT", f"An organisation named {org_name!r} already exists; choose another org_name.",
                       details={"reason": "org_name_taken", "field": "org_name"}) from None
    except UniqueViolation:  # the same email registered at the same moment
        raise _email_taken() from None
    link = people.verify_url.replace("{token}", token)
    await state_of(call.request).mailer.send(Mail(email, "Confirm your AgentOS email",
                                                  f"Confirm this address: {link}\n\nIgnore this mail if you did not "
                                                  "sign up.\n"))
    return tokens_reply(call, await issue(call, user["id"], org_id, "register"), body.cookie, status=201)


def _email_taken() -> ApiError:
    # Registration answers tokens, so it cannot hide that an address has an account; the IP limit
    # bounds how fast anyone can ask.
    return ApiError("CONFLICT", "An account with this email exists; sign in, or reset its password.",
                    details={"reason": "email_taken", "field": "email"})


@endpoint("Confirm an email address with the mailed link's token (works once).", role=None, body=VerifyEmail,
          status=204, errors=("NOT_FOUND",))
async def verify_email(call: Call[VerifyEmail]) -> Response:
    async with call.pool.connection() as conn, conn.transaction():
        user_id = await logins.use_reset(conn, call.body.token, "verify")
        if user_id is not None:
            await users.mark_verified(conn, user_id)
    if user_id is None:
        raise ApiError("NOT_FOUND", "This verification link is unknown, used or expired.")
    return Response(status_code=204)


routes = [
    resource("/v1/auth/register", POST=register),
    resource("/v1/auth/verify-email", POST=verify_email),
]
