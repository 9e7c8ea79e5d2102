"""The API's start-up guards and JWKS-based JWT verification, end to end."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from starlette.testclient import TestClient

from api.app import create_app
from core.db import TenantIsolationError
from tests.helpers import ADMIN_TOKEN, make_settings


def test_api_refuses_to_start_as_a_role_that_bypasses_rls(stack, rsa_keys):
    settings = make_settings(stack, rsa_keys, database={"url": stack.database_url, "app_role": "postgres"})
    with pytest.raises(TenantIsolationError, match="superuser or BYPASSRLS"):
        with TestClient(create_app(settings)):
            pass


def test_rs256_tokens_verify_against_a_jwks_endpoint(stack, rsa_keys, org):
    public = serialization.load_pem_public_key(rsa_keys.public_pem.encode())
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public)) | {"kid": "k1", "use": "sig", "alg": "RS256"}
    body = json.dumps({"keys": [jwk]}).encode()

    class Jwks(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
        settings = make_settings(stack, rsa_keys, auth={"jwt_secret": None, "jwks_url": url})
        claims = {"sub": "u1", "org_id": org.id, "role": "member", "aud": "agentos", "exp": int(time.time()) + 60}
        good = jwt.encode(claims, rsa_keys.private_pem, algorithm="RS256", headers={"kid": "k1"})
        unknown_kid = jwt.encode(claims, rsa_keys.private_pem, algorithm="RS256", headers={"kid": "nope"})
        with TestClient(create_app(settings)) as client:
            r = client.get("/v1/me", headers={"Authorization": f"Bearer {good}"})
            assert r.status_code == 200, r.text
            assert r.json()["org_id"] == org.id
            assert client.get("/v1/me", headers={"Authorization": f"Bearer {unknown_kid}"}).status_code == 401
            hs = jwt.encode(claims, "any-secret-at-all-0123456789abcdef", algorithm="HS256")
            assert client.get("/v1/me", headers={"Authorization": f"Bearer {hs}"}).status_code == 401
    finally:
        server.shutdown()
        server.server_close()


def test_database_outage_answers_503_and_recovers(tmp_path, stack, rsa_keys):
    from agentos.stack.postgres import EmbeddedPostgres
    from core.migrations import migrate

    pg = EmbeddedPostgres(tmp_path, durable=False)
    pg.start()
    try:
        url = pg.ensure_database("agentos")
        migrate(url, "agentos_app")
        settings = make_settings(stack, rsa_keys, database={"url": url, "pool_min": 1, "pool_max": 2,
                                                            "connect_timeout_s": 1})
        with TestClient(create_app(settings)) as client:
            admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
            key = client.post("/v1/orgs", json={"name": "o"}, headers=admin).json()["api_key"]["key"]
            headers = {"Authorization": f"Bearer {key}"}
            assert client.get("/v1/agents", headers=headers).status_code == 200

            pg.stop()
            down = client.get("/v1/agents", headers=headers)
            assert down.status_code == 503, down.text
            assert down.json()["error"]["code"] == "UNAVAILABLE"
            assert down.headers["retry-after"]
            ready = client.get("/readyz")
            assert ready.status_code == 503
            assert ready.json()["checks"]["postgres"].startswith("unavailable")
            assert client.get("/healthz").status_code == 200

            pg.start()
            deadline = time.monotonic() + 20
            while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert client.get("/v1/agents", headers=headers).status_code == 200
    finally:
        pg.stop()
