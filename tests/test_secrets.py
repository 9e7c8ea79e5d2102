"""Org secrets (`core.secrets`, `/v1/secrets`, `agentos secrets rotate`): envelope encryption bound
to org and name, a value that never comes back out, and key rotation while secrets are read."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.types.json import Jsonb
from pydantic import SecretStr, ValidationError

from agentos.stack.local import StackUrls
from core.db import open_pool
from core.infra import Infra
from core.migrations import migrate
from core.secrets import (
    Keyring,
    RotationReport,
    Sealed,
    SecretNotFound,
    SecretUnreadable,
    count_stale,
    read_secret,
    resolve_refs,
    rotate,
    store_secret,
)
from core.settings import SecretsSettings, Settings, load_settings
from core.store import orgs
from core.tenancy import tenant_tx
from skills.builtin.web_search import web_search
from skills.skill import SkillContext
from tests.fake_web import FakeWeb, Reply, as_json
from tests.helpers import error_of, new_org


def random_key() -> bytes:
    return os.urandom(32)


def keyring(keys: dict[int, bytes], active: int) -> Keyring:
    return Keyring(keys, active)


# --- the envelope ---------------------------------------------------------------------------------


def test_a_sealed_value_opens_only_for_its_org_and_name() -> None:
    ring = keyring({1: random_key()}, 1)
    sealed = ring.seal("org_a", "brave_key", "s3cret-value")
    assert ring.open("org_a", "brave_key", sealed) == "s3cret-value"
    assert b"s3cret-value" not in sealed.ciphertext + sealed.wrapped_key
    with pytest.raises(SecretUnreadable) as other_org:
        ring.open("org_b", "brave_key", sealed)
    with pytest.raises(SecretUnreadable):
        ring.open("org_a", "other_name", sealed)
    assert "s3cret-value" not in str(other_org.value)


@pytest.mark.parametrize("part", ["wrapped_key", "ciphertext"])
def test_a_tampered_envelope_is_refused(part: str) -> None:
    ring = keyring({1: random_key()}, 1)
    sealed = ring.seal("org_a", "token", "value-123")
    data = bytearray(getattr(sealed, part))
    data[-1] ^= 1
    tampered = Sealed(**{**sealed.__dict__, part: bytes(data)})
    with pytest.raises(SecretUnreadable, match="token"):
        ring.open("org_a", "token", tampered)


def test_a_wrap_names_its_key_version_and_rewrap_keeps_the_value() -> None:
    k1, k2 = random_key(), random_key()
    old = keyring({1: k1}, 1).seal("org_a", "n", "v")
    both = keyring({1: k1, 2: k2}, 2)
    fresh = both.rewrap("org_a", "n", old)
    assert fresh.key_version == 2 and fresh.ciphertext == old.ciphertext and fresh.wrapped_key != old.wrapped_key
    assert keyring({2: k2}, 2).open("org_a", "n", fresh) == "v"
    # Claiming another version for the same wrap does not open it.
    with pytest.raises(SecretUnreadable):
        both.open("org_a", "n", Sealed(2, old.wrapped_key, old.ciphertext))
    with pytest.raises(SecretUnreadable, match="key version 1, which is not configured"):
        keyring({2: k2}, 2).open("org_a", "n", old)


def test_settings_check_keys_and_refuse_the_development_key_in_production() -> None:
    good = base64.b64encode(random_key()).decode()
    assert SecretsSettings(keys={3: SecretStr(good)}, active_key_version=3).active_key_version == 3
    with pytest.raises(ValidationError, match="32 bytes"):
        SecretsSettings(keys={1: SecretStr(base64.b64encode(b"short").decode())})
    with pytest.raises(ValidationError, match="not among the configured keys"):
        SecretsSettings(keys={1: SecretStr(good)}, active_key_version=2)
    prod = {"env": "production", "auth": {"jwt_secret": "", "platform_admin_token": ""}}
    with pytest.raises(ValidationError, match="development key-encryption key"):
        load_settings(**prod)
    assert load_settings(**prod, secrets={"keys": {"1": good}}).env == "production"


# --- the API --------------------------------------------------------------------------------------


def read(settings: Settings, org_id: str, name: str, ring: Keyring | None = None) -> str:
    async def go() -> str:
        pool = await open_pool(settings.database)
        try:
            return await read_secret(pool, ring or Keyring.from_settings(settings.secrets), org_id, name)
        finally:
            await pool.close()

    return asyncio.run(go())


def test_secrets_round_trip_and_the_value_never_leaks(client: Any, settings: Settings, stack: StackUrls,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    org = new_org(client, "secrets")
    value = "sk-live-" + secrets.token_hex(16)
    seen: list[str] = []

    def call(method: str, path: str, **kwargs: Any) -> Any:
        r = client.request(method, path, headers=org.headers, **kwargs)
        seen.append(r.text + str(r.headers))
        return r

    created = call("PUT", "/v1/secrets/brave_key", json={"value": value})
    assert created.status_code == 200, created.text
    assert created.json()["name"] == "brave_key" and created.json()["created"] is True
    replaced = call("PUT", "/v1/secrets/brave_key", json={"value": value + "2"})
    assert replaced.json()["created"] is False
    call("PUT", "/v1/secrets/brave_key", json={"value": value})
    call("PUT", "/v1/secrets/other.name-1", json={"value": "x"})
    listed = call("GET", "/v1/secrets").json()
    assert [s["name"] for s in listed["data"]] == ["brave_key", "other.name-1"]
    assert set(listed["data"][0]) == {"name", "key_version", "created_by", "created_at", "updated_at"}
    # Refusals do not echo the value either.
    error_of(call("PUT", "/v1/secrets/brave_key", json={"value": value, "extra": value}), 422, "VALIDATION_FAILED")
    error_of(call("PUT", "/v1/secrets/brave_key", json={"value": value * 500}), 422, "VALIDATION_FAILED")
    error_of(call("PUT", "/v1/secrets/bad%20name", json={"value": value}), 404, "NOT_FOUND")
    error_of(call("PUT", "/v1/secrets/brave_key", json={"value": 12}), 422, "VALIDATION_FAILED")
    member = {"Authorization": f"Bearer {org.key_with_role('member')}"}
    error_of(client.put("/v1/secrets/brave_key", json={"value": value}, headers=member), 403, "FORBIDDEN")

    assert read(settings, org.id, "brave_key") == value
    # Through a reference, as skills and providers use them.
    ring = Keyring.from_settings(settings.secrets)

    async def resolved() -> Any:
        pool = await open_pool(settings.database)
        try:
            return await resolve_refs(pool, ring, org.id, {"headers": [{"X-Key": {"secret": "brave_key"}}], "n": 1})
        finally:
            await pool.close()

    assert asyncio.run(resolved()) == {"headers": [{"X-Key": value}], "n": 1}

    assert call("DELETE", "/v1/secrets/brave_key").status_code == 204
    error_of(call("DELETE", "/v1/secrets/brave_key"), 404, "NOT_FOUND")
    with pytest.raises(SecretNotFound, match="brave_key"):
        read(settings, org.id, "brave_key")

    with psycopg.connect(stack.database_url) as conn:  # the owner login: every row of every table
        audit = conn.execute("SELECT action, target_id, details::text FROM audit_logs WHERE org_id = %s "
                             "AND target_type = 'secret' ORDER BY id", (org.id,)).fetchall()
        stored = conn.execute("SELECT wrapped_key, ciphertext FROM org_secrets WHERE org_id = %s",
                              (org.id,)).fetchall()
    assert [a[0] for a in audit] == ["secret.create", "secret.update", "secret.update", "secret.create",
                                     "secret.delete"]
    assert [a[1] for a in audit][:3] == ["brave_key"] * 3
    everything = "\n".join(seen) + str(audit) + caplog.text
    assert value not in everything and value[8:] not in everything
    assert all(value.encode() not in bytes(w) + bytes(c) for w, c in stored)


def test_another_orgs_secrets_are_not_found(client: Any, settings: Settings) -> None:
    a, b = new_org(client, "secrets A"), new_org(client, "secrets B")
    assert client.put("/v1/secrets/db_url", json={"value": "postgres://a"}, headers=a.headers).status_code == 200
    assert client.get("/v1/secrets", headers=b.headers).json()["data"] == []
    error_of(client.delete("/v1/secrets/db_url", headers=b.headers), 404, "NOT_FOUND")
    assert [s["name"] for s in client.get("/v1/secrets", headers=a.headers).json()["data"]] == ["db_url"]
    # The same name in another org is that org's own secret.
    mine = client.put("/v1/secrets/db_url", json={"value": "postgres://b"}, headers=b.headers)
    assert mine.status_code == 200 and mine.json()["created"] is True
    assert read(settings, a.id, "db_url") == "postgres://a" and read(settings, b.id, "db_url") == "postgres://b"


def test_secrets_are_listed_by_name_in_pages(client: Any) -> None:
    org = new_org(client, "secret pages")
    for name in ("c", "a", "b"):
        client.put(f"/v1/secrets/{name}", json={"value": name}, headers=org.headers)
    first = client.get("/v1/secrets?limit=2", headers=org.headers).json()
    assert [s["name"] for s in first["data"]] == ["a", "b"] and first["next_cursor"]
    rest = client.get(f"/v1/secrets?limit=2&cursor={first['next_cursor']}", headers=org.headers).json()
    assert [s["name"] for s in rest["data"]] == ["c"] and rest["next_cursor"] is None
    error_of(client.get("/v1/secrets?cursor=bm90IGEgbmFtZSE", headers=org.headers), 422, "VALIDATION_FAILED")
    error_of(client.get("/v1/secrets?limit=0", headers=org.headers), 422, "VALIDATION_FAILED")


def test_a_row_copied_to_another_org_or_name_does_not_decrypt(client: Any, settings: Settings,
                                                               stack: StackUrls) -> None:
    a, b = new_org(client, "copy A"), new_org(client, "copy B")
    client.put("/v1/secrets/token", json={"value": "copied-value-1"}, headers=a.headers)
    with psycopg.connect(stack.database_url) as conn:  # someone with database access moves the row
        conn.execute("INSERT INTO org_secrets (org_id, name, key_version, wrapped_key, ciphertext) "
                     "SELECT %s, name, key_version, wrapped_key, ciphertext FROM org_secrets "
                     "WHERE org_id = %s AND name = 'token'", (b.id, a.id))
        conn.execute("INSERT INTO org_secrets (org_id, name, key_version, wrapped_key, ciphertext) "
                     "SELECT org_id, 'renamed', key_version, wrapped_key, ciphertext FROM org_secrets "
                     "WHERE org_id = %s AND name = 'token'", (a.id,))
    assert read(settings, a.id, "token") == "copied-value-1"
    with pytest.raises(SecretUnreadable) as copied:
        read(settings, b.id, "token")
    with pytest.raises(SecretUnreadable):
        read(settings, a.id, "renamed")
    assert "copied-value-1" not in str(copied.value)


# --- rotation -------------------------------------------------------------------------------------


@pytest.fixture
def own_database(stack: StackUrls, settings: Settings) -> Iterator[Settings]:
    """A database of its own, so that a rotation sees only this test's secrets."""
    admin_url = stack.database_url.rsplit("/", 1)[0] + "/postgres"
    database = f"secrets_{os.urandom(4).hex()}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {database}")
    url = stack.database_url.rsplit("/", 1)[0] + "/" + database
    try:
        migrate(url, "agentos_app")
        yield settings.model_copy(update={"database": settings.database.model_copy(update={"url": url})})
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE {database} WITH (FORCE)")


async def seed(settings: Settings, ring: Keyring, per_org: int) -> dict[tuple[str, str], str]:
    pool = await open_pool(settings.database)
    try:
        values: dict[tuple[str, str], str] = {}
        for org_name in ("rot A", "rot B"):
            org, _ = await orgs.create_org(pool, org_name, actor="test")
            async with tenant_tx(pool, org["id"]) as conn:
                for i in range(per_org):
                    value = f"value-{org['id']}-{i}-{secrets.token_hex(4)}"
                    await store_secret(conn, ring, org["id"], f"s{i:03d}", value, None)
                    values[(org["id"], f"s{i:03d}")] = value
        return values
    finally:
        await pool.close()


def test_rotation_under_load_every_read_decrypts(own_database: Settings) -> None:
    k1, k2 = random_key(), random_key()
    old, both = keyring({1: k1}, 1), keyring({1: k1, 2: k2}, 2)
    values = asyncio.run(seed(own_database, old, per_org=60))

    async def go() -> tuple[RotationReport, int, int]:
        pool = await open_pool(own_database.database.model_copy(update={"pool_max": 8}))
        reads = 0
        rotating = True
        try:
            async def reader(keys: list[tuple[str, str]]) -> None:
                nonlocal reads
                while rotating:
                    for org_id, name in keys:
                        assert await read_secret(pool, both, org_id, name) == values[(org_id, name)]
                        reads += 1

            async def writer() -> None:  # replaces values while they are rewrapped
                while rotating:
                    for org_id, name in list(values)[::15]:
                        async with tenant_tx(pool, org_id) as conn:
                            await store_secret(conn, both, org_id, name, values[(org_id, name)], None)
                    await asyncio.sleep(0)

            keys = list(values)
            readers = [asyncio.create_task(reader(keys[i::4])) for i in range(4)] + [asyncio.create_task(writer())]
            await asyncio.sleep(0.05)
            try:
                report = await rotate(pool, both, batch=7)
            finally:
                rotating = False
                await asyncio.gather(*readers)
            return report, reads, await count_stale(pool, both)
        finally:
            await pool.close()

    report, reads, stale = asyncio.run(go())
    assert reads > len(values)  # readers ran during the rotation, and every read decrypted
    assert stale == 0 and report.failed == []
    # Those the writer stored again were sealed under version 2 before the rotation reached them.
    assert 0 < report.rewrapped <= len(values)
    with psycopg.connect(own_database.database.url) as conn:  # each rewrap is in the org's audit log
        row = conn.execute("SELECT count(*) FROM audit_logs WHERE action = 'secret.rotate'").fetchone()
    assert row is not None and row[0] == report.rewrapped

    async def read_all_with_only_the_new_key() -> dict[tuple[str, str], str]:
        pool = await open_pool(own_database.database)
        try:
            only_new = keyring({2: k2}, 2)
            return {key: await read_secret(pool, only_new, *key) for key in values}
        finally:
            await pool.close()

    assert asyncio.run(read_all_with_only_the_new_key()) == values


def test_rotation_resumes_after_an_interruption_and_reports_what_it_cannot_open(own_database: Settings) -> None:
    k1, k2, stray = random_key(), random_key(), random_key()
    values = asyncio.run(seed(own_database, keyring({1: k1}, 1), per_org=5))
    both = keyring({1: k1, 2: k2}, 2)

    class Stop(Exception):
        pass

    def stop_after_first_batch(report: RotationReport) -> None:
        raise Stop

    async def go() -> tuple[int, RotationReport, int]:
        pool = await open_pool(own_database.database)
        try:
            org_id = next(iter(values))[0]
            async with tenant_tx(pool, org_id) as conn:  # sealed under a key nobody configured
                await store_secret(conn, keyring({9: stray}, 9), org_id, "zz_orphan", "x", None)
            with pytest.raises(Stop):
                await rotate(pool, both, batch=3, progress=stop_after_first_batch)
            left = await count_stale(pool, both)
            report = await rotate(pool, both, batch=3)
            return left, report, await count_stale(pool, both)
        finally:
            await pool.close()

    left, report, stale = asyncio.run(go())
    assert left == len(values) + 1 - 3
    assert report.rewrapped == len(values) - 3 and stale == 1
    assert [(name, "key version 9" in reason) for _, name, reason in report.failed] == [("zz_orphan", True)]


def test_the_rotate_command_reports_progress_and_is_idempotent(own_database: Settings, tmp_path: Path) -> None:
    k1, k2 = random_key(), random_key()
    values = asyncio.run(seed(own_database, keyring({1: k1}, 1), per_org=4))
    keys = f'{{"1": "{base64.b64encode(k1).decode()}", "2": "{base64.b64encode(k2).decode()}"}}'
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTOS_")} | {
        "AGENTOS_ENV": "test", "AGENTOS_DATABASE_URL": own_database.database.url,
        "AGENTOS_SECRETS__KEYS": keys, "AGENTOS_SECRETS__ACTIVE_KEY_VERSION": "2"}
    command = [sys.executable, "-c", "from agentos.cli import main; main()", "secrets", "rotate"]
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert first.returncode == 0, first.stderr
    assert f"{len(values)} rewrapped under key version 2, 0 already current, 0 failed" in first.stderr
    again = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and "0 rewrapped under key version 2" in again.stderr
    assert all(v not in first.stderr + first.stdout for v in values.values())
    org_id, name = next(iter(values))
    assert read(own_database, org_id, name, keyring({2: k2}, 2)) == values[(org_id, name)]


def test_skill_calls_read_their_secret_while_it_is_rewrapped(own_database: Settings, tmp_path: Path) -> None:
    """`web_search` with Brave, as a run calls it, reads the org's key at every call while
    `rotate` rewraps it (and many others): every call authenticates."""
    k1, k2 = random_key(), random_key()
    values = asyncio.run(seed(own_database, keyring({1: k1}, 1), per_org=80))
    org_ids = sorted({org_id for org_id, _ in values})
    with FakeWeb() as web:
        keys = {org_id: "brave-" + secrets.token_hex(8) for org_id in org_ids}
        wrong: list[str] = []

        def brave(seen: Any) -> Reply:
            if seen.headers.get("X-Subscription-Token") not in keys.values():
                wrong.append(str(seen.headers.get("X-Subscription-Token")))
                return as_json({}, 401)
            return as_json({"web": {"results": [{"title": "t", "url": "https://example.net/", "description": "d"}]}})

        web.routes["/brave"] = brave
        settings = own_database.model_copy(update={
            "secrets": SecretsSettings(keys={1: SecretStr(base64.b64encode(k1).decode()),
                                             2: SecretStr(base64.b64encode(k2).decode())}, active_key_version=2),
            "web": own_database.web.model_copy(update={"search_cache_ttl_s": 0}),
        })

        async def go() -> tuple[int, RotationReport]:
            infra = await Infra.open(settings, name="rotation-test", pool_max=8)
            try:
                for org_id in org_ids:  # each org's Brave key, sealed under version 1
                    async with tenant_tx(infra.pool, org_id) as conn:
                        await store_secret(conn, keyring({1: k1}, 1), org_id, "web_search_api_key", keys[org_id],
                                           None)
                        await conn.execute("UPDATE orgs SET settings = %s WHERE id = %s", (Jsonb({
                            "outbound_allow": ["127.0.0.1"], "web_search_provider": f"brave:{web.url('/brave')}"}),
                            org_id))
                calls = 0
                rotating = True

                async def caller(org_id: str) -> None:
                    nonlocal calls
                    while rotating:
                        ctx = SkillContext(org_id=org_id, session_id="ses_x", run_id="run_x", agent_id="agt_x",
                                           tool_call_id=f"tc_{calls}", workspace=tmp_path, infra=infra)
                        out = await web_search.invoke(ctx, {"query": "q", "count": 1})
                        assert out["results"][0]["url"] == "https://example.net/"
                        calls += 1

                callers = [asyncio.create_task(caller(org_ids[i % 2])) for i in range(4)]
                await asyncio.sleep(0.1)
                try:
                    report = await rotate(infra.pool, Keyring.from_settings(settings.secrets), batch=5)
                finally:
                    rotating = False
                    await asyncio.gather(*callers)
                return calls, report
            finally:
                await infra.close()

        calls, report = asyncio.run(go())
    assert report.failed == [] and report.rewrapped == len(values) + len(org_ids)
    assert calls > 4 and wrong == []  # calls ran throughout the rotation, and each sent its org's key
