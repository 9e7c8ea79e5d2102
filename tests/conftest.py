"""Fixtures: one real embedded Postgres (with pgvector) and one real Redis for the whole run,
the same servers `agentos dev` uses; an in-process API client; fresh orgs per test."""

from __future__ import annotations

import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.testclient import TestClient

from agentos.stack.local import LocalStack, StackUrls
from agentos.stack.process import ServerProcess
from agentos.stack.worker import worker_process
from api.app import create_app
from core.migrations import migrate
from core.settings import Settings, load_settings
from tests.openai_server import OpenAIServer

ADMIN_TOKEN = "test-platform-admin-token-" + secrets.token_hex(8)
JWT_SECRET = "test-jwt-secret-" + secrets.token_hex(16)


@dataclass(frozen=True)
class RsaKeys:
    private_pem: bytes
    public_pem: str


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackUrls]:
    data_dir: Path = tmp_path_factory.mktemp("stack")
    local = LocalStack(data_dir, database="agentos_test", durable=False)
    urls = local.start()
    try:
        migrate(urls.database_url, "agentos_app")
        yield urls
    finally:
        local.stop()


@pytest.fixture(scope="session")
def rsa_keys() -> RsaKeys:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()
    return RsaKeys(private_pem, public_pem)


def make_settings(stack: StackUrls, rsa_keys: RsaKeys, **overrides: object) -> Settings:
    base: dict[str, object] = {
        "env": "test",
        "database": {"url": stack.database_url, "pool_min": 1, "pool_max": 8},
        "redis": {"url": stack.redis_url},
        "auth": {
            "jwt_secret": JWT_SECRET,
            "jwt_public_key": rsa_keys.public_pem,
            "platform_admin_token": ADMIN_TOKEN,
        },
        "api": {"max_body_bytes": 64 * 1024},
    }
    base.update(overrides)
    return load_settings(**base)


@pytest.fixture(scope="session")
def settings(stack: StackUrls, rsa_keys: RsaKeys) -> Settings:
    return make_settings(stack, rsa_keys)


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=True) as c:
        yield c


def error_of(response: Any, status: int, code: str) -> dict[str, Any]:
    """The error object of a response that must be `status` with `code` and a message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    assert error["message"]
    return dict(error)


@dataclass
class Org:
    """A fresh organisation with an owner key; `headers` authenticate as that owner."""

    id: str
    key: str
    client: TestClient

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def key_with_role(self, role: str) -> str:
        r = self.client.post("/v1/api-keys", json={"name": f"{role} key", "role": role}, headers=self.headers)
        assert r.status_code == 201, r.text
        return str(r.json()["key"])

    def create_agent(self, **fields: object) -> dict[str, object]:
        body = {"name": "agent-" + secrets.token_hex(4), "instructions": "Be helpful."} | fields
        r = self.client.post("/v1/agents", json=body, headers=self.headers)
        assert r.status_code == 201, r.text
        return dict(r.json())

    def create_session(self, agent_id: str, **fields: object) -> dict[str, object]:
        r = self.client.post("/v1/sessions", json={"agent_id": agent_id} | fields, headers=self.headers)
        assert r.status_code == 201, r.text
        return dict(r.json())


def new_org(client: TestClient, name: str = "test org") -> Org:
    # Org names are unique: a suffix lets every test ask for "org A".
    r = client.post("/v1/orgs", json={"name": f"{name} {secrets.token_hex(4)}"},
                    headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert r.status_code == 201, r.text
    body = r.json()
    return Org(id=body["org"]["id"], key=body["api_key"]["key"], client=client)


@pytest.fixture
def org(client: TestClient) -> Org:
    return new_org(client, "org A")


@pytest.fixture
def other_org(client: TestClient) -> Org:
    return new_org(client, "org B")


@pytest.fixture(scope="session")
def openai_server() -> Iterator[OpenAIServer]:
    """A local OpenAI-compatible server; the worker's `openai:` models point at it."""
    with OpenAIServer() as server:
        yield server


@dataclass(frozen=True)
class Worker:
    process: ServerProcess
    workspace_root: Path


@contextmanager
def running_worker(stack: StackUrls, openai_server: OpenAIServer, base: Path,
                   extra_env: dict[str, str] | None = None) -> Iterator[Worker]:
    """A real Celery worker process (`agentos worker`, prefork, 2 slots) on the test stack, with
    quick model retries and short leases (a run whose worker is killed is taken over quickly);
    `extra_env` adds or overrides settings."""
    proc = worker_process(
        base / "worker.log", database_url=stack.database_url, redis_url=stack.redis_url,
        workspace_root=base / "workspaces", concurrency=2,
        extra_env={"AGENTOS_ENV": "test", "AGENTOS_MODELS__OPENAI_BASE_URL": openai_server.base_url,
                   "AGENTOS_MODELS__MAX_RETRIES": "1", "AGENTOS_MODELS__RETRY_BASE_DELAY_S": "0.05",
                   "AGENTOS_WORKER__LEASE_S": "3", "AGENTOS_WORKER__HEARTBEAT_S": "0.5", **(extra_env or {})},
    )
    proc.start()
    try:
        proc.wait_until(lambda: " ready." in proc.log_tail(200), timeout_s=60)
        yield Worker(proc, base / "workspaces")
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def worker(stack: StackUrls, openai_server: OpenAIServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """The suite's worker (see `running_worker`)."""
    with running_worker(stack, openai_server, tmp_path_factory.mktemp("worker")) as running:
        yield running


def post_concurrently(org: Org, requests: list[tuple[str, dict[str, Any], dict[str, str]]]) -> list[Any]:
    """POST each (path, body, extra headers) from its own thread, all released at once; responses
    in order."""
    barrier = threading.Barrier(len(requests))
    responses: list[Any] = [None] * len(requests)

    def post(i: int) -> None:
        path, body, extra = requests[i]
        barrier.wait()
        responses[i] = org.client.post(path, json=body, headers=org.headers | extra)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(requests))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert all(r is not None for r in responses)
    return responses
