"""A small OpenID Connect provider and GitHub OAuth server for sign-in tests, served on 127.0.0.1
by the test that uses it (tests.helpers.serving): discovery, JWKS, authorize (answers a redirect
with a code), token (checks the code, its age, PKCE and the client's secret; signs an RS256 ID
token), userinfo, and GitHub's token, user and emails endpoints. `Behaviour` lets a test make it
lie (another nonce, an unverified email)."""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route

CLIENT_ID = "agentos-test-client"
CLIENT_SECRET = "idp-secret-" + secrets.token_hex(8)


@dataclass
class Behaviour:
    email: str = "someone@example.com"
    email_verified: bool = True
    nonce: str | None = None  # None: the nonce the authorize request sent
    code_ttl_s: float = 60.0
    issuer: str = ""  # set once served
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def fake_idp(behaviour: Behaviour) -> Starlette:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key())) | {"kid": "k1", "use": "sig",
                                                                               "alg": "RS256"}

    async def discovery(request: Request) -> Response:
        i = behaviour.issuer
        return JSONResponse({"issuer": i, "authorization_endpoint": f"{i}/authorize", "token_endpoint": f"{i}/token",
                             "userinfo_endpoint": f"{i}/userinfo", "jwks_uri": f"{i}/jwks",
                             "id_token_signing_alg_values_supported": ["RS256"]})

    async def jwks(request: Request) -> Response:
        return JSONResponse({"keys": [jwk]})

    async def authorize(request: Request) -> Response:
        q = request.query_params
        code = secrets.token_urlsafe(16)
        behaviour.codes[code] = {"at": time.monotonic(), "challenge": q.get("code_challenge"),
                                 "method": q.get("code_challenge_method"), "nonce": q.get("nonce"),
                                 "redirect_uri": q.get("redirect_uri"), "client_id": q.get("client_id")}
        return RedirectResponse(f"{q['redirect_uri']}?{urlencode({'code': code, 'state': q['state']})}", 302)

    def _take_code(form: Any, client_id: str, client_secret: str) -> dict[str, Any] | None:
        grant = behaviour.codes.pop(str(form.get("code")), None)
        if grant is None or time.monotonic() - grant["at"] > behaviour.code_ttl_s:
            return None
        verifier = str(form.get("code_verifier", ""))
        if grant["method"] != "S256" or _b64(hashlib.sha256(verifier.encode()).digest()) != grant["challenge"]:
            return None
        if (client_id, client_secret) != (CLIENT_ID, CLIENT_SECRET):
            return None
        return grant if form.get("redirect_uri") == grant["redirect_uri"] else None
        return grant

    async def token(request: Request) -> Response:
        form = await request.form()
        basic = base64.b64decode(request.headers.get("authorization", "Basic Og==").split()[1]).decode()
        client_id, _, client_secret = basic.partition(":")
        grant = _take_code(form, client_id, client_secret)
        if grant is None:
            return JSONResponse({"error": "invalid_grant"}, 400)
        now = int(time.time())
        claims = {"iss": behaviour.issuer, "aud": CLIENT_ID, "sub": "idp-sub-1", "iat": now, "exp": now + 300,
                  "nonce": behaviour.nonce or grant["nonce"], "email": behaviour.email,
                  "email_verified": behaviour.email_verified, "name": "Someone"}
        id_token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})
        return JSONResponse({"access_token": "at-" + secrets.token_hex(8), "token_type": "Bearer",
                             "id_token": id_token})

    async def userinfo(request: Request) -> Response:
        return JSONResponse({"sub": "idp-sub-1", "email": behaviour.email, "email_verified": behaviour.email_verified})

    async def github_token(request: Request) -> Response:
        form = await request.form()
        grant = _take_code(form, str(form.get("client_id")), str(form.get("client_secret")))
        if grant is None:  # GitHub answers 200 with an error object
            return JSONResponse({"error": "bad_verification_code"})
        return JSONResponse({"access_token": "gho_" + secrets.token_hex(8), "token_type": "bearer"})

    async def github_user(request: Request) -> Response:
        return JSONResponse({"id": 4242, "login": "someone", "name": "Someone"})

    async def github_emails(request: Request) -> Response:
        return JSONResponse([{"email": "other@example.com", "primary": False, "verified": True},
                             {"email": behaviour.email, "primary": True, "verified": behaviour.email_verified}])

    return Starlette(routes=[
        Route("/.well-known/openid-configuration", discovery), Route("/jwks", jwks), Route("/authorize", authorize),
        Route("/token", token, methods=["POST"]), Route("/userinfo", userinfo),
        Route("/login/oauth/access_token", github_token, methods=["POST"]), Route("/user", github_user),
        Route("/user/emails", github_emails),
    ])
