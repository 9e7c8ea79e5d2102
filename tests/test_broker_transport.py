"""The broker connection Celery makes from `core.jobs.celery_config`: plain Redis gets our
one-client-per-channel transport; a TLS broker (rediss://) keeps kombu's, which turns TLS on from
the scheme. Naming a transport replaces the URL's scheme in kombu, so giving ours to a rediss://
URL would connect without TLS."""

from __future__ import annotations

from celery import Celery

from core import redis_transport
from core.jobs import celery_config
from core.settings import Settings


def _connection(url: str) -> object:
    settings = Settings().model_copy(update={"redis": Settings().redis.model_copy(update={"url": url})})
    app = Celery("t")
    app.conf.update(celery_config(settings))
    return app.connection_for_write()  # builds the connection; nothing is dialled


def test_a_plain_redis_broker_uses_the_shared_client_transport() -> None:
    conn = _connection("redis://127.0.0.1:6390/0")
    assert conn.transport_cls == redis_transport.TRANSPORT  # type: ignore[attr-defined]
    assert not conn.ssl  # type: ignore[attr-defined]


def test_a_tls_broker_keeps_kombus_transport_and_its_tls() -> None:
    conn = _connection("rediss://127.0.0.1:6390/0")
    assert conn.transport_cls == "rediss"  # type: ignore[attr-defined]
    assert conn.ssl  # type: ignore[attr-defined]
