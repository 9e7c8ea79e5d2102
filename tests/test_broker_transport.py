"""The broker connection Celery makes from `core.jobs.celery_config`: plain Redis gets our
one-client-per-channel transport; a TLS broker (rediss://) keeps kombu's, which turns TLS on from
the scheme. Naming a transport replaces the URL's scheme in kombu, so giving ours to a rediss://
URL would connect without TLS. A run's message taken on the event loop (`JobQueue.run_commands`,
`redis_transport.capturing`) is built with no IO and is the message Celery itself sends."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import redis
from celery import Celery

from core import redis_transport
from core.jobs import EXECUTE_RUN, RUNS_QUEUE, JobQueue, RunJob, celery_config
from core.redis_transport import Command
from core.settings import Settings
from tests.tcp_proxy import TcpProxy


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


# A database of its own, so the suite's worker (on the stack's) never takes these test messages.
QUEUE_DB = 7


def _through(settings: Settings, port: int) -> Settings:
    """`settings` whose broker is reached through a forwarder on `port`, in `QUEUE_DB`."""
    return settings.model_copy(update={"redis": settings.redis.model_copy(
        update={"url": f"redis://127.0.0.1:{port}/{QUEUE_DB}"})})


def _direct(settings: Settings) -> redis.Redis:
    return redis.Redis.from_url(settings.redis.url.rsplit("/", 1)[0] + f"/{QUEUE_DB}")


async def _until_on_loop(jobs: JobQueue) -> None:
    for _ in range(500):
        if jobs.sends_on_loop:
            return
        await asyncio.sleep(0.01)


def _shape(raw: bytes) -> tuple[dict[str, Any], Any]:
    """A queued Celery message without what differs per send (ids, tags): its envelope's keys
    and headers, and its decoded body."""
    message = json.loads(raw)
    headers = {k: v for k, v in message["headers"].items() if k not in ("id", "root_id", "argsrepr", "kwargsrepr")}
    properties = {k: v for k, v in message["properties"].items()
                  if k not in ("correlation_id", "delivery_tag")}
    body = json.loads(base64.b64decode(message["body"]))
    return {"keys": sorted(message), "headers": headers, "properties": properties,
            "content-type": message["content-type"]}, body


def test_a_run_message_is_taken_on_the_loop_with_no_io_and_is_the_one_celery_sends(settings: Settings) -> None:
    """`run_commands` answers nothing until the sender has connected (in a thread), then the
    run's message as one LPUSH built with the broker's link down (no IO), the same message as
    Celery's own send but its ids."""
    direct = _direct(settings)
    direct.delete(RUNS_QUEUE)
    with TcpProxy(int(settings.redis.url.rsplit(":", 1)[1].split("/")[0])) as proxy:
        jobs = JobQueue(_through(settings, proxy.port))

        async def go() -> list[Command] | None:
            assert jobs.run_commands("run_a", "org_a") is None  # not connected: it connects in a thread
            await _until_on_loop(jobs)
            assert jobs.sends_on_loop
            proxy.down()  # any IO now fails with a connection error
            try:
                return jobs.run_commands("run_a", "org_a")
            finally:
                proxy.up()

        try:
            commands = asyncio.run(go())
            assert commands is not None and [(name, args[0]) for name, args in commands] == [("lpush", RUNS_QUEUE)]
            jobs.send_run(RunJob(run_id="run_a", org_id="org_a"))  # Celery's own send, from this thread
        finally:
            jobs.close()
    sent = direct.lpop(RUNS_QUEUE)
    assert isinstance(sent, bytes) and direct.llen(RUNS_QUEUE) == 0
    taken, body = _shape(commands[0][1][1].encode())
    assert (taken, body) == _shape(sent)
    assert body[1] == {"run_id": "run_a", "org_id": "org_a"}
    assert taken["headers"]["task"] == EXECUTE_RUN


def test_a_sender_that_would_need_the_broker_falls_back_and_connects_again(settings: Settings) -> None:
    """A captured send that would have to talk to Redis first (here: its queue's declaration
    forgotten, as after a reconnect) does not: `run_commands` answers None (the POST then sends
    from a thread) and the sender is made ready again in a thread."""
    with TcpProxy(int(settings.redis.url.rsplit(":", 1)[1].split("/")[0])) as proxy:
        jobs = JobQueue(_through(settings, proxy.port))

        async def go() -> tuple[list[Command] | None, list[Command] | None]:
            jobs.prime_soon()
            await _until_on_loop(jobs)
            jobs._loop_producer.connection.declared_entities.clear()  # noqa: SLF001 (a reconnect's effect)
            proxy.down()
            try:
                gone = jobs.run_commands("run_b", "org_b")
            finally:
                proxy.up()
            await _until_on_loop(jobs)
            return gone, jobs.run_commands("run_b", "org_b")

        try:
            gone, again = asyncio.run(go())
        finally:
            jobs.close()
    assert gone is None
    assert again is not None and [name for name, _ in again] == ["lpush"]
