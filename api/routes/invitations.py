"""Invitations to the caller's org (admins), and accepting one (no credential: the token is it).
The token goes to the invitee by mail (core.mailer) and is never in a response, log line or
audit entry, except in the creation response when the server sends no mail at all."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.endpoint import Call, endpoint, resource
from api.schemas.base import page_of
from api.schemas.people import Accepted, Invitation, InvitationSent
from api.state import state_of
from core import passwords
from core.errors import ApiError
from core.login_limits import LoginLimits, refusal, request_ip
from core.mailer import Mail, NoMailer
from core.pagination import page
from core.principal import Role
from core.store import audit, invitations, memberships, users
from core.tenancy import tenant_tx

# An address with one @ and a dot in its domain; the mail itself is the real check.
EMAIL_PATTERN = r"^[^@\s]+@[^@\s]+\.[^@\s]+$"


class InvitationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    email: str = Field(max_length=320, pattern=EMAIL_PATTERN)
    role: Role = "member"


class InvitationAccept(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=200)
    # For a new user: the account's password (none: sign in with a provider) and name. An existing
    # user is only linked.
    password: str | None = Field(default=None, max_length=passwords.MAX_LENGTH)
    name: str | None = Field(default=None, min_length=1, max_length=200)


def _invalid_token() -> ApiError:
    return ApiError("NOT_FOUND", "This invitation is unknown, used, revoked or expired; ask for a new one.")


async def _send(call: Call[Any], email: str, token: str, role: str) -> str | None:
    """Mail the link; the token itself when no mail is sent (the caller hands it over)."""
    mailer = state_of(call.request).mailer
    if isinstance(mailer, NoMailer):
        return token
    link = call.settings.people.invitation_url.replace("{token}", token)
    await mailer.send(Mail(email, "You are invited to AgentOS",
                           f"You are invited to an AgentOS organisation as {role}.\n\nAccept: {link}\n"))
    return None


@endpoint("Invite someone by email with a role (never above your own); inviting the same email again "
          "replaces the open invitation, whose link then stops working.", role="admin", body=InvitationCreate,
          status=201, response=InvitationSent, errors=("CONFLICT",))
async def create_invitation(call: Call[InvitationCreate]) -> Response:
    principal, email, role = call.principal, users.normal_email(str(call.body.email)), call.body.role
    if not principal.allows(role):
        raise ApiError("FORBIDDEN", f"You cannot invite with the role {role}; it is above your own.")
    async with tenant_tx(call.pool, principal.org_id) as conn:
        user = await users.by_email(conn, email)
        if user is not None and await memberships.get(conn, user["id"]) is not None:
            raise ApiError("CONFLICT", f"{email} is already a member of this organisation.",
                           details={"reason": "already_member", "user_id": user["id"]})
        row, token, replaced = await invitations.create(
            conn, email=email, role=role, invited_by=principal.user_id,
            lifetime=timedelta(seconds=call.settings.people.invitation_ttl_s))
        await audit.record(conn, principal.actor, "invitation.create", "invitation", row["id"],
                           {"email": email, "role": role, "replaced_open_invitation": replaced})
    return call.reply({**row, "token": await _send(call, email, token, role)})


@endpoint("List the org's invitations (never their tokens).", role="admin", paginated=True,
          response=page_of(Invitation))
async def list_invitations(call: Call[Any]) -> Response:
    cursor, limit = call.page_params()
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        rows = await invitations.list_invitations(conn, cursor, limit)
    data, next_cursor = page(rows, limit)
    return call.page(data, next_cursor)


@endpoint("Revoke an invitation; its link stops working.", role="admin", response=Invitation)
async def revoke_invitation(call: Call[Any]) -> Response:
    invitation_id = call.path_id("invitation_id", "invitation")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await invitations.revoke(conn, invitation_id)
        if row is None:
            raise ApiError("NOT_FOUND", f"No invitation with id {invitation_id!r} in this organisation.")
        await audit.record(conn, call.principal.actor, "invitation.revoke", "invitation", invitation_id)
    return call.reply(row)


@endpoint("Send an invitation again with a new link; the old link stops working.", role="admin",
          response=InvitationSent, status=201, errors=("CONFLICT",))
async def resend_invitation(call: Call[Any]) -> Response:
    invitation_id, principal = call.path_id("invitation_id", "invitation"), call.principal
    async with tenant_tx(call.pool, principal.org_id) as conn:
        old = await invitations.get(conn, invitation_id)
        if old is None:
            raise ApiError("NOT_FOUND", f"No invitation with id {invitation_id!r} in this organisation.")
        if old["accepted_at"] is not None:
            raise ApiError("CONFLICT", "This invitation was accepted already.", details={"reason": "accepted"})
        if not principal.allows(old["role"]):
            raise ApiError("FORBIDDEN", f"This invitation is for the role {old['role']}, above your own.")
        row, token, _ = await invitations.create(
            conn, email=old["email"], role=old["role"], invited_by=principal.user_id,
            lifetime=timedelta(seconds=call.settings.people.invitation_ttl_s))
        await invitations.revoke(conn, invitation_id)
        await audit.record(conn, principal.actor, "invitation.resend", "invitation", row["id"],
                           {"email": old["email"], "role": old["role"], "replaces": invitation_id})
    return call.reply({**row, "token": await _send(call, old["email"], token, old["role"])})


@endpoint("Accept an invitation (no credential: the token is it). A new user sets a password here; an existing "
          "user with the invited email is linked. Then sign in.", role=None, body=InvitationAccept,
          response=Accepted, errors=("NOT_FOUND", "CONFLICT", "PASSWORD_REJECTED", "RATE_LIMITED"))
async def accept_invitation(call: Call[InvitationAccept]) -> Response:
    body, people = call.body, call.settings.people
    limits, ip = LoginLimits(call.infra.redis, people), request_ip()
    # Tokens are 256-bit random, so guessing is hopeless; the limits keep anyone from trying at
    # speed all the same: unknown tokens per IP, and attempts (e.g. weak passwords) per token.
    locked = await limits.over("accept_failed", "ip", ip, people.accept_failures_per_ip) if ip else None
    locked = locked or await limits.attempt("accept", "token", body.token, people.accept_attempts_per_token)
    if locked is not None:
        raise refusal(locked, "invitation attempts")
    found = await invitations.lookup(call.pool, body.token)
    if found is None:
        if ip:
            await limits.attempt("accept_failed", "ip", ip, people.accept_failures_per_ip)
        raise _invalid_token()
    org_id, email, role = found["org_id"], found["email"], found["role"]
    async with tenant_tx(call.pool, org_id) as conn:
        user = await users.by_email(conn, email)
        if user is None or not user["email_verified"]:
            # Without a password the new user signs in with an identity provider (or sets one by reset).
            password_hash = None
            if body.password is not None:
                try:
                    passwords.check_rules(body.password, min_length=call.settings.people.password_min_length,
                                          email=email)
                except passwords.PasswordRejected as exc:
                    raise ApiError("PASSWORD_REJECTED", f"The password {exc}.") from None
                password_hash = await passwords.hash_password(body.password)
        # The token came by mail to this address: the email is verified. An account registered
        # with it but never verified is claimed (core.store.users.claim_unverified).
        if user is None:
            user = await users.create(conn, email=email, name=body.name, verified=True, password_hash=password_hash)
        elif not user["email_verified"]:
            await users.claim_unverified(conn, user["id"], password_hash)
        if not await invitations.accept(conn, found["id"], user["id"]):
            raise _invalid_token()
        if not await memberships.add(conn, user["id"], role):
            raise ApiError("CONFLICT", "You are already a member of this organisation.",
                           details={"reason": "already_member"})
        await audit.record(conn, f"user:{user['id']}", "invitation.accept", "invitation", found["id"],
                           {"role": role})
        fresh = await users.get(conn, user["id"])
    return call.reply({"user": fresh, "org_id": org_id, "role": role})


routes = [
    resource("/v1/invitations", POST=create_invitation, GET=list_invitations),
    resource("/v1/invitations/accept", POST=accept_invitation),
    resource("/v1/invitations/{invitation_id}", DELETE=revoke_invitation),
    resource("/v1/invitations/{invitation_id}/resend", POST=resend_invitation),
]
