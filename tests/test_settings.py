"""Settings: environment variables in, default secrets refused outside development."""

from __future__ import annotations

import base64

import pytest
from pydantic import ValidationError

from core.settings import DEV_JWT_SECRET, load_settings


def test_nested_and_flat_environment_variables(monkeypatch):
    monkeypatch.setenv("AGENTOS_DATABASE_URL", "postgresql://u@db:5432/x")
    monkeypatch.setenv("AGENTOS_REDIS__URL", "redis://cache:6379/1")
    monkeypatch.setenv("AGENTOS_DATABASE__POOL_MAX", "3")
    s = load_settings()
    assert s.database.url == "postgresql://u@db:5432/x"
    assert s.database.pool_max == 3
    assert s.redis.url == "redis://cache:6379/1"


def test_production_refuses_the_development_secrets(monkeypatch):
    monkeypatch.setenv("AGENTOS_ENV", "production")
    with pytest.raises(ValidationError, match="development default"):
        load_settings()


def test_production_refuses_a_short_jwt_secret(monkeypatch):
    monkeypatch.setenv("AGENTOS_ENV", "production")
    monkeypatch.setenv("AGENTOS_AUTH__JWT_SECRET", "short")
    monkeypatch.setenv("AGENTOS_AUTH__PLATFORM_ADMIN_TOKEN", "a-real-admin-token-from-a-vault")
    with pytest.raises(ValidationError, match="at least 32"):
        load_settings()


def test_production_accepts_real_secrets(monkeypatch):
    monkeypatch.setenv("AGENTOS_ENV", "production")
    monkeypatch.setenv("AGENTOS_AUTH__JWT_SECRET", "x" * 48)
    monkeypatch.setenv("AGENTOS_AUTH__PLATFORM_ADMIN_TOKEN", "a-real-admin-token-from-a-vault")
    monkeypatch.setenv("AGENTOS_SECRETS__KEYS", '{"1": "' + base64.b64encode(b"k" * 32).decode() + '"}')
    s = load_settings()
    assert s.auth.jwt_secret is not None and s.auth.jwt_secret.get_secret_value() != DEV_JWT_SECRET


def test_secrets_do_not_show_in_repr(monkeypatch):
    monkeypatch.setenv("AGENTOS_AUTH__JWT_SECRET", "y" * 40)
    assert "y" * 40 not in repr(load_settings())


# --- production start-up checks -------------------------------------------------------------------

REAL_KEYS = '{"1": "' + base64.b64encode(b"k" * 32).decode() + '"}'


def _production(monkeypatch: pytest.MonkeyPatch, **env: str) -> None:
    """Production with real secrets, so only what `env` sets is judged."""
    monkeypatch.delenv("PGSSLMODE", raising=False)
    for name, value in {"AGENTOS_ENV": "production", "AGENTOS_AUTH__JWT_SECRET": "x" * 48,
                        "AGENTOS_AUTH__PLATFORM_ADMIN_TOKEN": "a-real-admin-token-from-a-vault",
                        "AGENTOS_SECRETS__KEYS": REAL_KEYS, **env}.items():
        monkeypatch.setenv(name, value)


def _problems(monkeypatch: pytest.MonkeyPatch, **env: str) -> list[str]:
    _production(monkeypatch, **env)
    try:
        load_settings()
    except ValidationError as exc:
        message = str(exc.errors()[0]["msg"])
        return [line.strip()[2:] for line in message.splitlines() if line.strip().startswith("- ")]
    return []


def test_production_refuses_postgres_and_redis_on_another_host_without_tls(monkeypatch):
    problems = _problems(monkeypatch, AGENTOS_DATABASE_URL="postgresql://agentos@db.internal:5432/agentos",
                         AGENTOS_REDIS_URL="redis://cache.internal:6379/0")
    assert len(problems) == 2, problems  # one line per problem, each naming its variable and the way out
    assert problems[0].startswith("AGENTOS_DATABASE_URL reaches Postgres at db.internal without TLS (sslmode=prefer)")
    assert "sslmode=verify-full" in problems[0] and "AGENTOS_DATABASE__REQUIRE_TLS=false" in problems[0]
    assert problems[1].startswith("AGENTOS_REDIS_URL reaches Redis at cache.internal without TLS: use rediss://")


@pytest.mark.parametrize("database_url,redis_url", [
    ("postgresql://agentos@db.internal/agentos?sslmode=verify-full", "rediss://:pw@cache.internal:6380/0"),
    ("host=db.internal dbname=agentos sslmode=require", "rediss://cache.internal:6380/0?ssl_cert_reqs=required"),
    ("postgresql://agentos@127.0.0.1:5432/agentos", "redis://localhost:6379/0"),  # loopback: nothing to encrypt
    ("postgresql:///agentos?host=/run/postgresql", "unix:///run/redis.sock"),
])
def test_production_accepts_tls_and_traffic_that_stays_on_the_machine(monkeypatch, database_url, redis_url):
    assert _problems(monkeypatch, AGENTOS_DATABASE_URL=database_url, AGENTOS_REDIS_URL=redis_url) == []


def test_production_takes_pgsslmode_and_an_explicit_private_network(monkeypatch):
    _production(monkeypatch, AGENTOS_DATABASE_URL="postgresql://agentos@db.internal/agentos",
                AGENTOS_REDIS_URL="redis://redis:6379/0", AGENTOS_REDIS__REQUIRE_TLS="false")
    monkeypatch.setenv("PGSSLMODE", "require")
    settings = load_settings()
    assert settings.redis.require_tls is False


def test_production_refuses_redis_tls_without_a_certificate_check(monkeypatch):
    problems = _problems(monkeypatch, AGENTOS_REDIS_URL="rediss://cache.internal:6380/0?ssl_cert_reqs=none")
    assert problems == ["AGENTOS_REDIS_URL turns off the check of Redis's certificate (ssl_cert_reqs=none): drop it, "
                        "or give ssl_ca_certs=<path> for a private CA"]


def test_every_problem_is_reported_at_once(monkeypatch):
    _production(monkeypatch, AGENTOS_DATABASE_URL="postgresql://u@db.internal/x", AGENTOS_REDIS_URL="redis://r:6379")
    monkeypatch.delenv("AGENTOS_AUTH__JWT_SECRET")
    monkeypatch.delenv("AGENTOS_SECRETS__KEYS")
    with pytest.raises(ValidationError) as caught:
        load_settings()
    lines = [line for line in str(caught.value.errors()[0]["msg"]).splitlines() if line.strip().startswith("- ")]
    assert [line.split()[1] for line in lines] == ["AGENTOS_AUTH__JWT_SECRET", "AGENTOS_SECRETS__KEYS",
                                                     "AGENTOS_DATABASE_URL", "AGENTOS_REDIS_URL"]


def test_sentinel_and_unknown_redis_schemes_are_refused_in_every_environment(monkeypatch):
    monkeypatch.setenv("AGENTOS_REDIS_URL", "sentinel://s1:26379")
    with pytest.raises(ValidationError, match="Sentinel URLs are not supported; use the endpoint"):
        load_settings()
    monkeypatch.setenv("AGENTOS_REDIS_URL", "http://cache:6379")
    with pytest.raises(ValidationError, match="must start with redis://, rediss:// or unix://"):
        load_settings()


def test_pool_bounds_are_checked(monkeypatch):
    monkeypatch.setenv("AGENTOS_DATABASE__POOL_MIN", "12")
    with pytest.raises(ValidationError, match=r"POOL_MIN \(12\) is above AGENTOS_DATABASE__POOL_MAX \(10\)"):
        load_settings()
    monkeypatch.setenv("AGENTOS_DATABASE__POOL_MIN", "2")
    monkeypatch.setenv("AGENTOS_WORKER__POOL_MAX", "6")
    assert load_settings().worker.pool_max == 6


def test_agentos_api_in_production_prints_each_problem_and_exits_2(monkeypatch):
    import subprocess

    from tests.helpers import AGENTOS, cli_env

    env = cli_env() | {"AGENTOS_ENV": "production", "AGENTOS_AUTH__JWT_SECRET": "x" * 48,
                       "AGENTOS_AUTH__PLATFORM_ADMIN_TOKEN": "", "AGENTOS_SECRETS__KEYS": REAL_KEYS,
                       "AGENTOS_DATABASE_URL": "postgresql://u@db.internal/x", "AGENTOS_REDIS_URL": "redis://r:6379"}
    done = subprocess.run([*AGENTOS, "api"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert "refusing to start in production" in done.stderr
    assert "AGENTOS_DATABASE_URL reaches Postgres at db.internal without TLS" in done.stderr
    assert "AGENTOS_REDIS_URL reaches Redis at r without TLS" in done.stderr
    assert "Traceback" not in done.stderr
