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
