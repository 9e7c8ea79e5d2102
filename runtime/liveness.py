"""Worker liveness: the task consumer proves, through the broker, that it still takes messages.

Why a probe through the broker. A worker can be alive, connected and idle while its consumer
takes nothing: when Redis goes away while a run executes, the run's ack fails ("Couldn't ack
…"), kombu's Redis QoS raises before it forgets the delivery, so the prefetch window stays full
of a message that no longer exists and the consumer never asks Redis for another (kombu
`QoS.ack` removes the tag from `_delivered` only after the Redis pipeline succeeded). Nothing
else notices: the process lives, the event loop turns, the connection is fine. Only taking a
message shows that taking messages works, so every `probe_interval_s` the worker publishes a
probe to a queue of its own that its *task* consumer reads (same channel, same prefetch window
as the runs); the consumer handles it in the main process (no pool slot) and acks it.

A probe can only be fetched while the worker has a free slot, so waiting counts only then
(`stalled_s`). After `stall_after_s` of it the worker reconnects its consumer (a fresh channel
and prefetch window: raising a connection error inside Celery's event loop is the path Celery
takes on any broker loss); the heartbeat file shows it, and a checker (`agentos worker
--check`, the `agentos dev` supervisor) declares the worker unhealthy when that did not help
(stalled for twice as long) or when the file stopped changing (the event loop itself is stuck).
While Celery's own reconnect loop holds the event loop (after any broker loss), a thread writes
the file instead, marked `reconnecting`, and notes when the broker answers again: a worker that
has not reconnected a minute after that is unhealthy too.
Neither judges while the broker is unreachable: restarting a worker then helps nobody and would
cut runs that can finish without Redis.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis
from celery import Celery, bootsteps
from celery.worker import state as worker_state
from kombu.connection import Connection
from kombu.entity import Exchange, Queue
from kombu.messaging import Producer

from core.settings import Settings

log = logging.getLogger("agentos.worker")

PROBE_TASK = "agentos.liveness_probe"
# Probes in flight at once: a lost one (the broker restarted) is replaced by the next.
MAX_PENDING = 3
# After a failed send, wait at least this long before the next one (a send to a broker that
# is down blocks the event loop for a moment).
SEND_BACKOFF_S = 5.0
# A heartbeat file older than this many stall periods (and at least LOOP_STALE_MIN_S) means the
# event loop stopped; Celery's own reconnect loop may keep it still for up to ~30 s.
LOOP_STALE_FACTOR = 4.0
LOOP_STALE_MIN_S = 60.0
# Celery retries a lost broker connection every 2, 4, ... up to 30 s: once the broker answers
# again, a worker that has not reconnected within this is stuck.
RECONNECT_GRACE_S = 60.0


@dataclass
class Heartbeat:
    """What a worker writes to its health file every tick (times are `time.time()`)."""

    pid: int
    hostname: str
    queue: str
    written_at: float
    busy: bool  # every slot holds a task: a probe cannot be fetched, and that is fine
    pending: int  # probes sent and not yet received
    probe_sent_at: float | None
    probe_received_at: float | None
    stalled_s: float  # time with a probe pending and a free slot, since the last probe arrived
    broker_ok: bool  # the last probe send reached the broker
    reconnects: int  # consumer reconnects forced by a stall
    stall_after_s: float
    # In Celery's reconnect loop (its event loop does not run; a thread writes the file then),
    # and since when the broker answers again, if it does.
    reconnecting: bool = False
    broker_back_at: float | None = None


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reason: str


class ConsumerStalled(ConnectionError):
    """Raised in Celery's event loop to make it drop and rebuild the broker connection (an
    OSError: one of every transport's connection errors)."""


def read_heartbeat(path: Path) -> Heartbeat | None:
    try:
        return Heartbeat(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def assess(hb: Heartbeat | None, now: float, *, broker_reachable: bool) -> Verdict:
    """Whether the worker that wrote `hb` should be trusted (see the module doc)."""
    if not broker_reachable:
        return Verdict(True, "the broker is unreachable: not judged (a restart would not help)")
    if hb is None:
        return Verdict(False, "no heartbeat (the worker has not started consuming, or writes elsewhere)")
    age = now - hb.written_at
    loop_stale_s = max(LOOP_STALE_MIN_S, LOOP_STALE_FACTOR * hb.stall_after_s)
    if age > loop_stale_s:
        return Verdict(False, f"its event loop stopped: no heartbeat for {age:.0f} s")
    if hb.reconnecting:
        back_s = 0.0 if hb.broker_back_at is None else now - hb.broker_back_at
        if back_s > RECONNECT_GRACE_S:
            return Verdict(False, f"not reconnected although the broker answers again for {back_s:.0f} s")
        return Verdict(True, "reconnecting to the broker")
    if hb.stalled_s >= 2 * hb.stall_after_s:
        return Verdict(False, f"not consuming: its probe waited {hb.stalled_s:.0f} s while it had a free slot "
                              f"({hb.reconnects} reconnect(s) did not help)")
    state = "busy" if hb.busy else "idle"
    return Verdict(True, f"consuming ({state}; last probe {_ago(hb.probe_received_at, now)})")


def broker_reachable(url: str, timeout_s: float = 2.0) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def check(path: Path, broker_url: str, *, pid: int | None = None) -> Verdict:
    """The verdict on the worker writing `path` (`pid`: only a heartbeat of that process counts)."""
    hb = read_heartbeat(path)
    if hb is not None and pid is not None and hb.pid != pid:
        hb = None
    verdict = assess(hb, time.time(), broker_reachable=True)
    if verdict.healthy:  # the broker is asked only when it matters
        return verdict
    return assess(hb, time.time(), broker_reachable=broker_reachable(broker_url))


def _ago(t: float | None, now: float) -> str:
    return "never" if t is None else f"{now - t:.1f} s ago"


class Monitor:
    """The liveness state of one worker process (its main process: the one that consumes)."""

    def __init__(self, app: Celery, settings: Settings) -> None:
        w = settings.worker
        self.app = app
        self.path = Path(w.health_file)
        self.probe_every_s = w.probe_interval_s
        self.stall_after_s = w.stall_after_s
        self.tick_s = min(1.0, w.probe_interval_s)
        self.hostname = socket.gethostname()
        self.pid = os.getpid()
        name = f"agentos.probe.{self.hostname}.{self.pid}"
        self.queue: Queue = Queue(name, Exchange(name, "direct"), routing_key=name)  # type: ignore[no-untyped-call]
        self.pending = 0
        self.sent_at: float | None = None
        self.received_at: float | None = None
        self.stalled_s = 0.0
        self.stalled_at_reconnect = 0.0
        self.reconnects = 0
        self.broker_ok = True
        self._last_tick: float | None = None
        self._next_send = 0.0
        self._conn: Connection | None = None
        self._producer: Producer | None = None
        self.broker_url = str(app.conf.broker_url)
        self.reconnecting = False
        self.broker_back_at: float | None = None
        self._reconnected = threading.Event()
        self._watcher: threading.Thread | None = None

    def on_probe(self) -> None:
        """A probe reached the task consumer: it consumes."""
        self.received_at = time.time()
        self.pending = 0
        self.stalled_s = self.stalled_at_reconnect = 0.0

    def on_consumer_start(self) -> None:
        self.end_reconnect_watch()
        # Probes sent on the old connection may be gone with it; fresh ones follow.
        self.pending = 0
        self._next_send = 0.0
        self._last_tick = None

    def start_reconnect_watch(self) -> None:
        """The consumer lost its connection: until it is back, Celery's reconnect loop holds the
        event loop, so a thread writes the heartbeat (and notes when the broker answers again)."""
        self.end_reconnect_watch()
        self.reconnecting, self.broker_back_at = True, None
        self._reconnected.clear()
        self._watcher = threading.Thread(target=self._watch_reconnect, name="agentos-liveness", daemon=True)
        self._watcher.start()

    def end_reconnect_watch(self) -> None:
        self._reconnected.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None
        self.reconnecting, self.broker_back_at = False, None

    def _watch_reconnect(self) -> None:
        while not self._reconnected.is_set():
            now = time.time()
            if self.broker_back_at is None and broker_reachable(self.broker_url, timeout_s=1.0):
                self.broker_back_at = now
            if self._reconnected.is_set():
                return
            self.write(now, busy=False)
            self._reconnected.wait(self.tick_s)

    def tick(self, capacity: int, can_reconnect: bool) -> None:
        """One beat of the consumer's event loop: count, probe, write; raise to reconnect."""
        now = time.time()
        busy = len(worker_state.reserved_requests) >= capacity
        # Only while the broker takes our probes: a probe sent before an outage may be gone.
        if self.pending and not busy and self.broker_ok and self._last_tick is not None:
            self.stalled_s += now - self._last_tick
        self._last_tick = now
        if now >= self._next_send and self.pending < MAX_PENDING:
            self.broker_ok = self._send()
            if self.broker_ok:
                self.pending += 1
                self.sent_at = now
            self._next_send = now + (self.probe_every_s if self.broker_ok else max(SEND_BACKOFF_S, self.probe_every_s))
        reconnect = can_reconnect and self.stalled_s - self.stalled_at_reconnect >= self.stall_after_s
        if reconnect:
            self.reconnects += 1
            self.stalled_at_reconnect = self.stalled_s
        self.write(now, busy)
        if reconnect:
            log.warning("consumer stalled: a liveness probe waited %.0f s while a slot was free; reconnecting "
                        "to the broker", self.stalled_s)
            raise ConsumerStalled("the task consumer stopped taking messages")

    def heartbeat(self, now: float, busy: bool) -> Heartbeat:
        return Heartbeat(self.pid, self.hostname, self.queue.name, now, busy, self.pending, self.sent_at,
                         self.received_at, round(self.stalled_s, 2), self.broker_ok, self.reconnects,
                         self.stall_after_s, self.reconnecting, self.broker_back_at)

    def write(self, now: float, busy: bool) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{self.pid}.tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(asdict(self.heartbeat(now, busy))))
            os.replace(tmp, self.path)
        except OSError as exc:  # a full disk must not stop the consumer
            log.warning("liveness: cannot write %s: %s", self.path, exc)

    def _send(self) -> bool:
        try:
            if self._producer is None:
                # Short timeouts, one connection attempt (not `default_channel`, which retries
                # for seconds): this runs in the event loop.
                self._conn = self.app.connection_for_write(
                    transport_options={"socket_timeout": 1.0, "socket_connect_timeout": 1.0})
                self._producer = Producer(self._conn.channel())  # type: ignore[no-untyped-call]
            # The anonymous exchange puts the probe straight into the queue (no binding needed,
            # so it works on a broker that restarted empty).
            self._producer.publish(  # type: ignore[no-untyped-call]
                {}, exchange="", routing_key=self.queue.name, serializer="json", retry=False,
                headers={"task": PROBE_TASK, "id": uuid.uuid4().hex},
            )
            return True
        except Exception as exc:
            log.debug("liveness probe not sent: %s", exc)
            self.close()
            return False

    def close(self) -> None:
        self._producer = None
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):  # a broken connection may fail to close; it is dropped
                conn.release()  # type: ignore[no-untyped-call]


def install(app: Celery, settings: Settings) -> Monitor:
    """Make `app`'s workers probe their own consumer and write their health file."""
    monitor = Monitor(app, settings)

    def strategy(task: Any, app: Celery, consumer: Any, **_: Any) -> Any:
        errors = consumer.connection_errors

        def on_probe_message(message: Any, body: Any, ack: Any, reject: Any, callbacks: Any, **__: Any) -> None:
            monitor.on_probe()
            ack(log, errors)

        return on_probe_message

    @app.task(name=PROBE_TASK, Strategy=staticmethod(strategy), ignore_result=True)  # type: ignore[untyped-decorator]
    def liveness_probe() -> None:
        """Never executed: its messages are handled by the consumer itself (`strategy`)."""

    class Liveness(bootsteps.StartStopStep):  # type: ignore[misc]
        """Consume the probe queue with the task consumer and tick in its event loop."""

        requires = ("celery.worker.consumer.tasks:Tasks",)

        def __init__(self, c: Any, **kwargs: Any) -> None:
            super().__init__(c, **kwargs)
            # Before the task consumer is made from the selected queues (`-Q` was applied).
            c.app.amqp.queues.select_add(monitor.queue)
            self.tref: Any = None

        def start(self, c: Any) -> None:
            monitor.on_consumer_start()
            capacity = max(1, int(getattr(c.controller, "concurrency", 1) or 1))
            # Only with an event loop (prefork) does an error raised here reach the consumer;
            # a threaded timer (solo pool) still writes the file for the supervisor.
            can_reconnect = c.hub is not None
            self.tref = c.timer.call_repeatedly(monitor.tick_s, monitor.tick, (capacity, can_reconnect))

        def stop(self, c: Any) -> None:
            if self.tref is not None:
                self.tref.cancel()
                self.tref = None
            if c.blueprint.state == bootsteps.RUN:  # a restart after a lost connection, not shutdown
                monitor.start_reconnect_watch()

        def shutdown(self, c: Any) -> None:
            self.stop(c)
            monitor.end_reconnect_watch()
            monitor.close()

    app.steps["consumer"].add(Liveness)
    return monitor
