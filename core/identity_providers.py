"""Sign-in with an identity provider: OpenID Connect (any issuer, by discovery) and GitHub OAuth.

`start` draws the state, the PKCE verifier (S256) and, for OIDC, the nonce, keeps them in Redis
for a few minutes under the state, and answers the provider's authorize URL. `finish` takes the
code and state the provider sent back: the state must be one we drew (and is used up), the code
is exchanged with the verifier, an OIDC ID token must verify against the issuer's JWKS (issuer,
audience, expiry) and carry our nonce, and the email must be verified by the provider. Users are
matched by that email; this module only says who the provider vouches for."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlencode

import httpx
import jwt
import redis.asyncio as aioredis

from core.settings import PeopleSettings

Provider = Literal["oidc", "github"]
PROVIDERS: tuple[Provider, ...] = ("oidc", "github")
_DISCOVERY_TTL_S = 300.0
_TIMEOUT_S = 10.0


class SignInRefused(Exception):
    """The provider's answer does not prove who the caller is; the message says why (no secrets)."""


class ProviderOff(Exception):
    """That provider is not configured on this server."""


@dataclass(frozen=True)
class Identity:
    provider: Provider
    subject: str
    email: str
    name: str | None


def _state_key(state: str) -> str:
    # The state is random and single use; the key carries its hash, like every stored token.
    return f"agentos:oauth:state:{hashlib.sha256(state.encode()).hexdigest()}"


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


class IdentityProviders:
    def __init__(self, settings: PeopleSettings, redis: aioredis.Redis) -> None:
        self._s = settings
        self._redis = redis
        self._discovery: tuple[float, dict[str, Any], jwt.PyJWKSet] | None = None

    def enabled(self, provider: str) -> bool:
        if provider == "oidc":
            return bool(self._s.oidc_issuer and self._s.oidc_client_id)
        return provider == "github" and bool(self._s.github_client_id)

    def redirect_uri(self, provider: Provider) -> str:
        return self._s.oauth_redirect_url.replace("{provider}", provider)

    async def _oidc_config(self, http: httpx.AsyncClient) -> tuple[dict[str, Any], jwt.PyJWKSet]:
        cached = self._discovery
        if cached is not None and cached[0] > time.monotonic():
            return cached[1], cached[2]
        issuer = (self._s.oidc_issuer or "").rstrip("/")
        config = (await http.get(f"{issuer}/.well-known/openid-configuration")).raise_for_status().json()
        if str(config.get("issuer", "")).rstrip("/") != issuer:
            raise SignInRefused("The provider's discovery document names another issuer.")
        keys = jwt.PyJWKSet.from_dict((await http.get(config["jwks_uri"])).raise_for_status().json())
        self._discovery = (time.monotonic() + _DISCOVERY_TTL_S, config, keys)
        return config, keys

    async def start(self, provider: Provider, org_id: str | None) -> str:
        """The provider's authorize URL for a new sign-in (its state kept for `oauth_state_ttl_s`)."""
        if not self.enabled(provider):
            raise ProviderOff(provider)
        state, verifier, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(48), secrets.token_urlsafe(24)
        challenge = _b64(hashlib.sha256(verifier.encode()).digest())
        params = {"response_type": "code", "redirect_uri": self.redirect_uri(provider), "state": state,
                  "code_challenge": challenge, "code_challenge_method": "S256"}
        if provider == "oidc":
            async with httpx.AsyncClient(timeout=_TIMEOUT_S) as http:
                config, _ = await self._oidc_config(http)
            base = str(config["authorization_endpoint"])
            params |= {"client_id": self._s.oidc_client_id or "", "scope": self._s.oidc_scopes, "nonce": nonce}
        else:
            base = self._s.github_authorize_url
            params |= {"client_id": self._s.github_client_id or "", "scope": "read:user user:email"}
        kept = {"provider": provider, "verifier": verifier, "nonce": nonce, "org_id": org_id}
        await self._redis.set(_state_key(state), json.dumps(kept), ex=self._s.oauth_state_ttl_s)
        return f"{base}{'&' if '?' in base else '?'}{urlencode(params)}"

    async def _take_state(self, provider: Provider, state: str) -> dict[str, Any]:
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.get(_state_key(state))
            pipe.delete(_state_key(state))
            raw, _ = await pipe.execute()
        kept: dict[str, Any] | None = json.loads(raw) if raw else None
        if kept is None or kept.get("provider") != provider:
            raise SignInRefused("The sign-in state is unknown, used or expired; start the sign-in again.")
        return kept

    async def finish(self, provider: Provider, code: str, state: str) -> tuple[Identity, str | None]:
        """(who the provider vouches for, the org asked for at the start)."""
        if not self.enabled(provider):
            raise ProviderOff(provider)
        kept = await self._take_state(provider, state)
        async with httpx.AsyncClient(timeout=_TIMEOUT_S) as http:
            if provider == "oidc":
                identity = await self._finish_oidc(http, code, kept)
            else:
                identity = await self._finish_github(http, code, kept)
        return identity, kept.get("org_id")

    async def _finish_oidc(self, http: httpx.AsyncClient, code: str, kept: dict[str, Any]) -> Identity:
        s = self._s
        config, keys = await self._oidc_config(http)
        secret = s.oidc_client_secret.get_secret_value() if s.oidc_client_secret else None
        form = {"grant_type": "authorization_code", "code": code, "redirect_uri": self.redirect_uri("oidc"),
                "code_verifier": kept["verifier"], "client_id": s.oidc_client_id or ""}
        # client_secret_basic, the default of OIDC Core (a public client sends its id in the form).
        if secret:
            answer = await http.post(str(config["token_endpoint"]), data=form,
                                     auth=httpx.BasicAuth(s.oidc_client_id or "", secret))
        else:
            answer = await http.post(str(config["token_endpoint"]), data=form)
        if answer.status_code != 200 or "id_token" not in answer.json():
            raise SignInRefused("The provider refused the code (expired, used or not ours); sign in again.")
        id_token = str(answer.json()["id_token"])
        try:
            kid = jwt.get_unverified_header(id_token).get("kid")
            key = next((k for k in keys.keys if kid is None or k.key_id == kid), None)
            if key is None:
                raise SignInRefused("The ID token is signed by a key the provider does not publish.")
            claims = jwt.decode(id_token, key.key, algorithms=["RS256", "ES256"], audience=s.oidc_client_id,
                                issuer=config["issuer"], options={"require": ["exp", "iat", "sub", "aud", "iss"]})
        except jwt.PyJWTError as exc:
            raise SignInRefused("The ID token does not verify (signature, issuer, audience or expiry).") from exc
        if not isinstance(claims.get("nonce"), str) or not secrets.compare_digest(claims["nonce"], kept["nonce"]):
            raise SignInRefused("The ID token's nonce is not this sign-in's.")
        email, verified = claims.get("email"), claims.get("email_verified")
        if email is None and config.get("userinfo_endpoint"):
            info = (await http.get(str(config["userinfo_endpoint"]), headers={
                "Authorization": f"Bearer {answer.json().get('access_token', '')}"})).json()
            if info.get("sub") == claims["sub"]:
                email, verified = info.get("email"), info.get("email_verified")
        if not isinstance(email, str) or verified is not True:
            raise SignInRefused("The provider has not verified this account's email; verify it there first.")
        return Identity("oidc", str(claims["sub"]), email.lower(), claims.get("name"))

    async def _finish_github(self, http: httpx.AsyncClient, code: str, kept: dict[str, Any]) -> Identity:
        s = self._s
        secret = s.github_client_secret.get_secret_value() if s.github_client_secret else ""
        answer = await http.post(s.github_token_url, headers={"Accept": "application/json"}, data={
            "client_id": s.github_client_id or "", "client_secret": secret, "code": code,
            "redirect_uri": self.redirect_uri("github"), "code_verifier": kept["verifier"]})
        token = answer.json().get("access_token") if answer.status_code == 200 else None
        if not isinstance(token, str):
            raise SignInRefused("GitHub refused the code (expired, used or not ours); sign in again.")
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/vnd.github+json"}
        user = (await http.get(f"{s.github_api_url}/user", headers=headers)).raise_for_status().json()
        emails = (await http.get(f"{s.github_api_url}/user/emails", headers=headers)).raise_for_status().json()
        primary = next((e for e in emails if e.get("primary")), None)
        if primary is None or primary.get("verified") is not True:
            raise SignInRefused("GitHub has not verified this account's primary email; verify it there first.")
        return Identity("github", str(user["id"]), str(primary["email"]).lower(), user.get("name"))
