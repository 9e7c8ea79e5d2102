"""Sign-in with an identity provider (`oidc`, `github`; core.identity_providers): `start` answers
the provider's authorize URL; the provider sends the browser back to the console with a code and
the state, and the console posts both to `callback`, which answers tokens like a password
sign-in. A user is matched by the email the provider has verified, and must exist already (an
invitation made it); the provider never creates an account on its own."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from api.endpoint import Call, endpoint, resource
from api.routes.sign_in import COOKIE_FIELD, issue, tokens_reply
from api.schemas.people import AuthorizeUrl, SignInProviders, Tokens
from api.state import state_of
from core.errors import ApiError
from core.identity_providers import PROVIDERS, IdentityProviders, Provider, ProviderOff, SignInRefused
from core.store import audit, users
from core.tenancy import tenant_tx


class SsoStart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    org_id: str | None = Field(default=None, max_length=100,
                               description="The org to act in after sign-in; default: the oldest membership.")


class SsoCallback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=2000)
    state: str = Field(min_length=1, max_length=200)
    cookie: bool = Field(default=False, description=COOKIE_FIELD)


def _provider(call: Call[Any]) -> tuple[Provider, IdentityProviders]:
    name = str(call.request.path_params["provider"])
    providers = state_of(call.request).identity
    for known in PROVIDERS:
        if known == name and providers is not None and providers.enabled(known):
            return known, providers
    raise ApiError("NOT_FOUND", f"No sign-in provider {name!r} is configured on this server.")


@endpoint("Start signing in with an identity provider: the URL to send the browser to.", role=None,
          body=SsoStart, response=AuthorizeUrl, errors=("NOT_FOUND", "UNAVAILABLE"))
async def start(call: Call[SsoStart]) -> Response:
    provider, providers = _provider(call)
    try:
        url = await providers.start(provider, call.body.org_id)
    except ProviderOff:
        raise ApiError("NOT_FOUND", f"No sign-in provider {provider!r} is configured on this server.") from None
    except Exception as exc:  # the provider's discovery is unreachable or malformed
        raise ApiError("UNAVAILABLE", "The identity provider did not answer; retry later.") from exc
    return call.reply({"authorize_url": url})


@endpoint("Finish signing in with an identity provider: the code and state it sent back, for tokens.", role=None,
          body=SsoCallback, response=Tokens, headers=("Set-Cookie",),
          errors=("NOT_FOUND", "UNAUTHENTICATED", "FORBIDDEN", "UNAVAILABLE"))
async def callback(call: Call[SsoCallback]) -> Response:
    provider, providers = _provider(call)
    try:
        identity, org_id = await providers.finish(provider, call.body.code, call.body.state)
    except SignInRefused as exc:
        raise ApiError("UNAUTHENTICATED", str(exc)) from None
    except (httpx.HTTPError, ValueError, KeyError) as exc:  # the provider is down or answers nonsense
        raise ApiError("UNAVAILABLE", "The identity provider did not answer as expected; retry later.") from exc
    async with call.pool.connection() as conn, conn.transaction():
        user = await users.by_email(conn, identity.email)
        if user is not None and not user["email_verified"]:
            # The provider verified the mailbox: an unverified registration's password goes.
            await users.claim_unverified(conn, user["id"], None)
    if user is None:
        raise ApiError("FORBIDDEN", "No account has this email here; ask an admin of your organisation for an "
                                    "invitation, accept it, then sign in.")
    tokens = await issue(call, user["id"], org_id, provider)
    async with tenant_tx(call.pool, tokens["org_id"]) as conn:
        await audit.record(conn, f"user:{user['id']}", "auth.provider", "user", user["id"],
                           {"provider": provider, "subject": identity.subject})
    return tokens_reply(call, tokens, call.body.cookie)


@endpoint("How one may sign in here: the configured identity providers, and whether open sign-up is on "
          "(the console's sign-in page asks).", role=None, response=SignInProviders)
async def sign_in_providers(call: Call[Any]) -> Response:
    providers = state_of(call.request).identity
    configured = [p for p in PROVIDERS if providers is not None and providers.enabled(p)]
    return call.reply({"providers": configured, "open_signup": call.settings.people.open_signup})


routes = [
    resource("/v1/auth/providers", GET=sign_in_providers),
    resource("/v1/auth/{provider}/start", POST=start),
    resource("/v1/auth/{provider}/callback", POST=callback),
]
