"""The run graph's checkpointer: LangGraph's Postgres saver on the same three tables
(`checkpoints`, `checkpoint_blobs`, `checkpoint_writes`, laid out by the library's own
migrations), writing each step in one statement instead of several.

What it changes (issue 18, "one transaction per step"), and why it keeps every guarantee:

- `aput` stores the checkpoint's blobs and the checkpoint row in one statement (data-modifying
  CTEs) instead of one per blob plus one for the row: one round trip and one implicit
  transaction, so a step's checkpoint is stored whole or not at all, as before.
- `aput_writes` does not write at once: a task's writes are kept in memory and stored with the
  thread's next checkpoint, in the same statement. LangGraph saves pending writes so that a step
  cut off after some of its tasks finished need not run those again; our graph's steps run one
  task each (every edge leads to one node), and a step cut off mid-way runs again anyway (tool
  calls and metering are keyed by their place in the run, so a re-run repeats no side effect).
  A crash between a task's end and its step's checkpoint therefore costs what a crash just
  before the task's end always cost.
- Writes that no checkpoint follows (a task that `interrupt()`s for a human, a task that
  failed) are stored by `flush_writes`, which the executor calls when the graph returns, and by
  every read of the thread (`aget_tuple`, `alist`), so this saver's readers always see them.
- `skip_start=True` (the worker's setting) holds back a graph's input checkpoint and the one
  after its `__start__` task (steps -1 and 0 in a thread's first run; the two after the last
  run's end in a later one): the first real step's checkpoint stands in for
  them (it takes their parent and their blobs; writes to them are in its values). Resuming from
  either would run the first real step again, which is what starting again from the run's
  input does (`runtime.executor._graph_input`); if the graph stops before that checkpoint (an
  interrupt in its first node, as in plan mode), `flush_writes` stores the held one with the
  interrupt's writes. LangGraph's conformance suite expects every checkpoint put to be listed,
  so with `skip_start` its six `list` tests fail by design; without it the saver passes the
  whole suite (tests/test_checkpointer.py).

- `hold_final="answer"` (the worker's setting) holds back the graph's last checkpoint (the one
  that writes the channel only RESPOND writes) as its statement, for the run's ending to store
  in the transaction that ends the run (`take_final`; `runtime.executor._complete`): one round
  trip fewer at the end, and a run is never ended without its last checkpoint nor that
  checkpoint stored for a run that did not end. A crash in between leaves the thread at the
  step before, and the next delivery runs RESPOND again (it has no side effect). Readers of
  the thread (`aget_tuple`, `alist`) store a held one first, so they always see it.

- `attach_writer(thread_id, writer)` (the worker's run, with its emitter's `flush_along`): the
  thread's checkpoints and writes are stored by `writer`, in the transaction that stores the
  run's buffered events and deferred usage records, instead of on the saver's own connection.
  A step's usage record is then never stored after its checkpoint (a crash in between runs the
  step again, and its record is keyed), and costs no round trip of its own (`core.metering`).

A hello run (`bench/runs.py --profile`) wrote 14 checkpoint statements with the library's saver
(4 `aput`, 3 `aput_writes`, each its own transaction); 6 with one statement each, 4 with the
writes kept for the checkpoint, 2 with `skip_start` (docs/benchmarks.md, issue 18).

The choice against LangGraph's `durability="exit"` (no checkpoint until the graph returns): it
would cut the per-step checkpoints too, and with them resuming a killed run from its last step
(tests/test_run_recovery.py); LangGraph's default `"async"` is kept.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver
from langgraph.checkpoint.serde.types import _DeltaSnapshot
from psycopg.types.json import Jsonb

from core.tenancy import Statement

# The writes of one statement: rows that replace an earlier write of the same key (a call
# whose channels are all LangGraph's special ones: error, interrupt, resume, scheduled, as the
# library upserts them) and rows that never do (the library's INSERT ... DO NOTHING).
_WRITES_CTES = """
upserted AS (
  INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
  SELECT %(thread_id)s, %(ns)s, w.checkpoint_id, w.task_id, w.task_path, w.idx, w.channel, w.type, w.blob
  FROM unnest(%(u_ids)s::text[], %(u_tasks)s::text[], %(u_paths)s::text[], %(u_idx)s::int[],
              %(u_channels)s::text[], %(u_types)s::text[], %(u_blobs)s::bytea[])
    AS w(checkpoint_id, task_id, task_path, idx, channel, type, blob)
  ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
  DO UPDATE SET channel = EXCLUDED.channel, type = EXCLUDED.type, blob = EXCLUDED.blob
), inserted AS (
  INSERT INTO checkpoint_writes (thread_id, checkpoint_ns, checkpoint_id, task_id, task_path, idx, channel, type, blob)
  SELECT %(thread_id)s, %(ns)s, w.checkpoint_id, w.task_id, w.task_path, w.idx, w.channel, w.type, w.blob
  FROM unnest(%(i_ids)s::text[], %(i_tasks)s::text[], %(i_paths)s::text[], %(i_idx)s::int[],
              %(i_channels)s::text[], %(i_types)s::text[], %(i_blobs)s::bytea[])
    AS w(checkpoint_id, task_id, task_path, idx, channel, type, blob)
  ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id, task_id, idx) DO NOTHING
)"""

# A step: its pending writes, the new blobs (a blob is keyed by channel and version, so one
# already stored is left alone) and the checkpoint row.
PUT_SQL = f"""
WITH {_WRITES_CTES.strip()}, blobs AS (
  INSERT INTO checkpoint_blobs (thread_id, checkpoint_ns, channel, version, type, blob)
  SELECT %(thread_id)s, %(ns)s, b.channel, b.version, b.type, b.blob
  FROM unnest(%(b_channels)s::text[], %(b_versions)s::text[], %(b_types)s::text[], %(b_blobs)s::bytea[])
    AS b(channel, version, type, blob)
  ON CONFLICT (thread_id, checkpoint_ns, channel, version) DO NOTHING
)
INSERT INTO checkpoints (thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, checkpoint, metadata)
VALUES (%(thread_id)s, %(ns)s, %(checkpoint_id)s, %(parent_id)s, %(checkpoint)s, %(metadata)s)
ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id)
DO UPDATE SET checkpoint = EXCLUDED.checkpoint, metadata = EXCLUDED.metadata
"""

# Writes no checkpoint followed (yet): stored on their own.
WRITES_SQL = f"WITH {_WRITES_CTES.strip()} SELECT 1"

# Stores a statement in a transaction of its own choosing (`StepSaver.attach_writer`).
Writer = Callable[[Statement], Awaitable[None]]

# (checkpoint_id, task_id, idx) -> (task_path, channel, type, blob, upsert)
_Pending = dict[tuple[str, str, int], tuple[str, str, str, bytes | None, bool]]


def _writes_params(pending: _Pending) -> dict[str, list[Any]]:
    columns: dict[str, list[Any]] = {f"{side}_{name}": [] for side in ("u", "i")
                                     for name in ("ids", "tasks", "paths", "idx", "channels", "types", "blobs")}
    for (checkpoint_id, task_id, idx), (path, channel, kind, blob, upsert) in pending.items():
        side = "u" if upsert else "i"
        for name, value in (("ids", checkpoint_id), ("tasks", task_id), ("paths", path), ("idx", idx),
                            ("channels", channel), ("types", kind), ("blobs", blob)):
            columns[f"{side}_{name}"].append(value)
    return columns


@dataclass
class _Row:
    """A checkpoint to store: its row's parameters and its blobs (channel, version, type, blob)."""

    params: dict[str, Any]
    blobs: list[tuple[str, str, str, bytes | None]]
    skipped: frozenset[str] = frozenset()  # checkpoints this one stands in for (`skip_start`)
    source: str | None = None  # its metadata's: "input", "loop", ...
    after_input: bool = False  # it stands in for an input checkpoint (`skip_start`)

    @property
    def id(self) -> str:
        return str(self.params["checkpoint_id"])

    def statement_params(self, pending: _Pending) -> dict[str, Any]:
        # Writes to a skipped checkpoint are in this one's values already.
        kept = {k: v for k, v in pending.items() if k[0] not in self.skipped}
        return {**self.params, **_writes_params(kept),
                "b_channels": [b[0] for b in self.blobs], "b_versions": [b[1] for b in self.blobs],
                "b_types": [b[2] for b in self.blobs], "b_blobs": [b[3] for b in self.blobs]}


class StepSaver(AsyncPostgresSaver):
    """`AsyncPostgresSaver` with a step's writes, blobs and checkpoint in one statement."""

    def __init__(self, *args: Any, buffer_writes: bool = True, skip_start: bool = False,
                 hold_final: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # False: each `aput_writes` is stored at once, in one statement (the library's behaviour).
        self.buffer_writes = buffer_writes
        # True: a graph's input checkpoint and the one after its `__start__` task are not
        # stored when a later checkpoint follows (see the module's doc).
        self.skip_start = skip_start
        # Writes not stored yet, per (thread_id, checkpoint_ns).
        self._pending: dict[tuple[str, str], _Pending] = {}
        # A checkpoint held back by `skip_start`, per (thread_id, checkpoint_ns).
        self._held: dict[tuple[str, str], _Row] = {}
        # A channel only a graph's last step writes (the run graph's RESPOND: "answer"): the
        # checkpoint that writes it is held back, as its statement, for `take_final`.
        self.hold_final = hold_final
        self._final: dict[str, Statement] = {}
        # Who stores a thread's statements instead of the saver's own connection, per thread_id.
        self._writers: dict[str, Writer] = {}

    def attach_writer(self, thread_id: str, writer: Writer) -> None:
        """Store the thread's checkpoints and writes through `writer` (a run's emitter, with its
        events and deferred usage records: `core.events.RunEmitter.flush_along`) until
        `detach_writer`. One writer per thread: a session runs one run at a time."""
        self._writers[thread_id] = writer

    def detach_writer(self, thread_id: str) -> None:
        self._writers.pop(thread_id, None)

    async def aput(
        self, config: RunnableConfig, checkpoint: Checkpoint, metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        configurable = config["configurable"]
        thread_id, ns = str(configurable["thread_id"]), str(configurable.get("checkpoint_ns", ""))
        copy = checkpoint.copy()
        values = copy["channel_values"] = dict(checkpoint["channel_values"])
        # As the library does: primitive values stay inline in the checkpoint row, the rest
        # (and a delta channel's snapshot, marked `True` inline) go to checkpoint_blobs.
        blob_values: dict[str, Any] = {}
        for channel, value in checkpoint["channel_values"].items():
            if isinstance(value, _DeltaSnapshot):
                blob_values[channel] = values.pop(channel)
                values[channel] = True
            elif not (value is None or isinstance(value, (str, int, float, bool))):
                blob_values[channel] = values.pop(channel)
        versions = {k: v for k, v in new_versions.items() if k in blob_values}
        # Serialised on the loop, not in a thread as the library does: a step's values are small,
        # and serialising them costs less than a hand-over to a thread and back (the loop's other
        # work, a heartbeat or a cancel poll, waits milliseconds at most for a very large state).
        blobs = self._dump_blobs(thread_id, ns, blob_values, versions) if versions else []
        source = metadata.get("source")
        row = _Row({"thread_id": thread_id, "ns": ns, "checkpoint_id": checkpoint["id"],
                    "parent_id": configurable.get("checkpoint_id"), "checkpoint": Jsonb(copy),
                    "metadata": Jsonb(get_serializable_checkpoint_metadata(config, metadata))},
                   [(b[2], b[3], b[4], b[5]) for b in blobs], source=source)
        key = (thread_id, ns)
        held = self._held.pop(key, None)
        if held is not None and held.id == row.params["parent_id"]:
            # This checkpoint stands in for the held one: it takes its parent and stores its blobs
            # (a later checkpoint may still name their versions).
            row = _Row({**row.params, "parent_id": held.params["parent_id"]}, held.blobs + row.blobs,
                       held.skipped | {held.id}, source, after_input=held.source == "input")
        elif held is not None:  # not followed by its own successor (not LangGraph's order): kept
            await self._store(key, held)
        # The input checkpoint, and the one after the `__start__` task that follows it: at step -1
        # and 0 in a thread's first run, further on in its later runs.
        if self.skip_start and (source == "input" or (source == "loop" and row.after_input)):
            self._held[key] = row
        elif self.hold_final is not None and not ns and self.hold_final in new_versions:
            self._final[thread_id] = self._put(key, row)
        else:
            await self._store(key, row)
        return {"configurable": {"thread_id": thread_id, "checkpoint_ns": ns, "checkpoint_id": checkpoint["id"]}}

    async def _store(self, key: tuple[str, str], row: _Row | None) -> None:
        """One statement: `row` (if any) with the writes waiting for it; through the thread's
        writer if it has one."""
        if (writer := self._writers.get(key[0])) is not None:
            if (statement := self._statement(key, row)) is not None:
                await writer(statement)
            return
        async with self._cursor() as cur:
            # Taken under the lock, so writes added while this waited go with this checkpoint.
            if (statement := self._statement(key, row)) is not None:
                await cur.execute(*statement)

    def _put(self, key: tuple[str, str], row: _Row) -> Statement:
        """`row` with the writes waiting for it."""
        return PUT_SQL, row.statement_params(self._pending.pop(key, {}))

    def _statement(self, key: tuple[str, str], row: _Row | None) -> Statement | None:
        """`row` with the writes waiting for it, or those writes alone; None if neither."""
        if row is not None:
            return self._put(key, row)
        pending = self._pending.pop(key, {})
        if pending:
            return WRITES_SQL, {"thread_id": key[0], "ns": key[1], **_writes_params(pending)}
        return None

    async def aput_writes(
        self, config: RunnableConfig, writes: Sequence[tuple[str, Any]], task_id: str, task_path: str = "",
    ) -> None:
        configurable = config["configurable"]
        thread_id, ns = str(configurable["thread_id"]), str(configurable.get("checkpoint_ns", ""))
        checkpoint_id = str(configurable["checkpoint_id"])
        upsert = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        rows = self._dump_writes(thread_id, ns, checkpoint_id, task_id, task_path, writes)  # on the loop, as in aput
        pending = self._pending.setdefault((thread_id, ns), {})
        for _, _, _, _, path, idx, channel, kind, blob in rows:
            key = (checkpoint_id, task_id, idx)
            # The library's semantics within the buffer: an upsert replaces, an insert keeps the first.
            if upsert or key not in pending:
                pending[key] = (path, channel, kind, blob, upsert)
        if not self.buffer_writes:
            await self.flush_writes(thread_id)

    async def flush_writes(self, thread_id: str) -> None:
        """Store what the thread holds back: a checkpoint held by `skip_start` and the writes
        that wait for a checkpoint (see the module's doc), in one statement per namespace. Not
        the graph's last checkpoint (`take_final`)."""
        for key in {k for k in [*self._pending, *self._held] if k[0] == thread_id}:
            await self._store(key, self._held.pop(key, None))

    def take_final(self, thread_id: str) -> Statement | None:
        """The thread's last checkpoint (with the writes it stands on), held back by `hold_final`
        for the caller to store in its own transaction: a run's ending stores it with the run's
        end, so a run never ends without its last checkpoint, nor is that checkpoint stored for a
        run that did not end (a crash in between runs the last step again)."""
        return self._final.pop(thread_id, None)

    async def _flush_for_readers(self, thread_id: str) -> None:
        """A reader sees everything put, the last checkpoint held back included."""
        await self.flush_writes(thread_id)
        if (final := self._final.pop(thread_id, None)) is not None:
            async with self._cursor() as cur:
                await cur.execute(*final)

    def discard_writes(self, thread_id: str) -> None:
        """Forget what the thread holds back: the graph stopped on an error, and its next try
        runs the cut-off step again from the last stored checkpoint."""
        self._final.pop(thread_id, None)
        for held in (self._pending, self._held):
            for key in [k for k in held if k[0] == thread_id]:
                del held[key]

    async def _load_checkpoint_tuple(self, value: Any) -> CheckpointTuple:
        """The library's (a stored row as a checkpoint tuple), with the pending writes loaded on
        the loop instead of in a thread (as `aput` serialises)."""
        parent = value["parent_checkpoint_id"]
        checkpoint = cast(Checkpoint, {**value["checkpoint"], "channel_values": {
            **(value["checkpoint"].get("channel_values") or {}), **self._load_blobs(value["channel_values"])}})
        return CheckpointTuple(
            {"configurable": {"thread_id": value["thread_id"], "checkpoint_ns": value["checkpoint_ns"],
                              "checkpoint_id": value["checkpoint_id"]}},
            checkpoint,
            value["metadata"],
            {"configurable": {"thread_id": value["thread_id"], "checkpoint_ns": value["checkpoint_ns"],
                              "checkpoint_id": parent}} if parent else None,
            self._load_writes(value["pending_writes"]),
        )

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        await self._flush_for_readers(str(config["configurable"]["thread_id"]))
        return await super().aget_tuple(config)

    async def alist(
        self, config: RunnableConfig | None, *, filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None, limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        if config is not None:
            await self._flush_for_readers(str(config["configurable"]["thread_id"]))
        else:
            for thread_id in {*(k[0] for k in [*self._pending, *self._held]), *self._final}:
                await self._flush_for_readers(thread_id)
        async for item in super().alist(config, filter=filter, before=before, limit=limit):
            yield item

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        for thread_id in thread_ids if not isinstance(thread_ids, str) else ():  # the library refuses a str
            await self._flush_for_readers(str(thread_id))
        await super().aprune(thread_ids, strategy=strategy)

    async def adelete_thread(self, thread_id: str) -> None:
        self.discard_writes(str(thread_id))
        await super().adelete_thread(thread_id)
