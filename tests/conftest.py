"""Fixtures: one real embedded Postgres (with pgvector) and one real Redis for the whole run,
the same servers `agentos dev` uses; an in-process API client; fresh orgs per test. Plain helpers
live in tests/helpers.py, which test modules import (never this module)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from starlette.testclient import TestClient

from agentos.stack.local import LocalStack, StackUrls
from api.app import _routes, create_app
from api.openapi import build_openapi
from core.migrations import migrate
from core.settings import Settings
from tests.conformance import Conformance, Recorder
from tests.helpers import Org, RsaKeys, Worker, make_settings, new_org, running_worker
from tests.openai_server import OpenAIServer


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


@pytest.fixture(scope="session")
def settings(stack: StackUrls, rsa_keys: RsaKeys) -> Settings:
    return make_settings(stack, rsa_keys)


@pytest.fixture(scope="session")
def conformance() -> Conformance:
    """What the suite's client was answered, judged against `/openapi.json` as it happens."""
    return Conformance(build_openapi(_routes(), "test"))


@pytest.fixture(scope="session")
def client(settings: Settings, conformance: Conformance) -> Iterator[TestClient]:
    """The API in-process. Every response it gives the suite must be one `/openapi.json` declares
    (status and body): the suite fails at the end, listing each that was not."""
    app = create_app(settings)
    app.add_middleware(Recorder, done=conformance)
    with TestClient(app, raise_server_exceptions=True) as c:
        yield c
    if conformance.problems:
        pytest.fail("responses that /openapi.json does not declare:\n" + "\n".join(conformance.problems),
                    pytrace=False)


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


@pytest.fixture(scope="session")
def worker(stack: StackUrls, openai_server: OpenAIServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Worker]:
    """The suite's worker (see `running_worker`)."""
    with running_worker(stack, openai_server, tmp_path_factory.mktemp("worker")) as running:
        yield running
