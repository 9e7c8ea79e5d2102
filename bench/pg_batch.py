"""A batched tenant transaction, sent as psycopg's pipeline sends it and in one write.

    .venv/bin/python bench/pg_batch.py [--batches N] [--statements S] [--rounds R]

Starts its own stack (bench/runs.py's `Bench`: embedded Postgres and Redis, an org), opens a pool
of one connection, and times `core.tenancy`'s batch shape (BEGIN, the org, S trivial statements,
COMMIT) both ways, interleaved round by round: psycopg's `conn.pipeline()`, which writes each
statement as it is queued, and `core.pg_pipeline.one_write_pipeline`, which writes the batch
at once. Per batch, medians of the rounds: wall time, this process's CPU, the Postgres backend's
CPU (from /proc), and the writes the client made (the kernel's count of TCP data segments sent on
the connection; libpq sets TCP_NODELAY, so one write is one segment on loopback).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.runs import Bench, stack_with_org  # noqa: E402

QUERY = "SELECT %s::int AS x"
_TCP_DATA_SEGS_OUT_AT = 156  # struct tcp_info (linux/tcp.h): tcpi_data_segs_out


def segments_sent(conn: Any) -> int:
    with socket.fromfd(conn.fileno(), socket.AF_INET, socket.SOCK_STREAM) as sock:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    return int(struct.unpack_from("=I", info, _TCP_DATA_SEGS_OUT_AT)[0])


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def measure(bench: Bench, batches: int, statements: int, rounds: int) -> dict[str, list[tuple[float, ...]]]:
    from core.db import open_pool
    from core.pg_pipeline import one_write_pipeline
    from core.settings import load_settings
    from core.tenancy import SET_ORG_SQL

    assert bench.urls is not None
    settings = load_settings(database={"url": bench.urls.database_url}, redis={"url": bench.urls.redis_url})
    pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
    org_id = bench.org_id
    Pipeline = Callable[[Any], AbstractAsyncContextManager[Any]]

    def psycopg_pipeline(conn: Any) -> AbstractAsyncContextManager[Any]:
        return conn.pipeline()  # type: ignore[no-any-return]

    async def batch(pipeline: Pipeline) -> list[list[Any]]:
        async with pool.connection() as conn:
            await conn.set_autocommit(True)
            try:
                async with pipeline(conn):
                    await conn.execute("BEGIN")
                    await conn.execute(SET_ORG_SQL, (org_id,))
                    cursors = [await conn.execute(QUERY, (i,)) for i in range(statements)]
                    await conn.execute("COMMIT")
            finally:
                await conn.set_autocommit(False)
            return [await cur.fetchall() for cur in cursors]

    ways: dict[str, Pipeline] = {"psycopg's pipeline": psycopg_pipeline, "one write": one_write_pipeline}
    results: dict[str, list[tuple[float, ...]]] = {name: [] for name in ways}
    try:
        async with pool.connection() as conn:
            backend = int((await (await conn.execute("SELECT pg_backend_pid() AS pid")).fetchone())["pid"])  # type: ignore[index]
        same = [await batch(way) for way in ways.values()]
        assert same[0] == same[1], "both ways return the same rows"
        for way in ways.values():  # psycopg prepares a statement at its 5th use
            for _ in range(50):
                await batch(way)
        for _ in range(rounds):
            for name, way in ways.items():
                async with pool.connection() as conn:
                    segments = segments_sent(conn)
                cpu, pg, start = time.process_time(), cpu_s(backend), time.perf_counter()
                for _ in range(batches):
                    await batch(way)
                wall = time.perf_counter() - start
                cpu, pg = time.process_time() - cpu, cpu_s(backend) - pg
                async with pool.connection() as conn:
                    segments = segments_sent(conn) - segments
                results[name].append((wall / batches * 1e3, cpu / batches * 1e3, pg / batches * 1e3,
                                      segments / batches))
    finally:
        await pool.close()
    return results


def report(results: dict[str, list[tuple[float, ...]]], statements: int) -> None:
    rounds = len(next(iter(results.values())))
    print(f"a batch of BEGIN, the org, {statements} statements and COMMIT (medians of {rounds} rounds, per batch):")
    print(f"  {'':20s} {'wall ms':>8s} {'CPU ms':>8s} {'Postgres CPU ms':>16s} {'writes':>7s}")
    for name, rows in results.items():
        wall, cpu, pg, writes = (statistics.median(column) for column in zip(*rows, strict=True))
        print(f"  {name:20s} {wall:8.3f} {cpu:8.3f} {pg:16.3f} {writes:7.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=1000, help="batches per round and way (default 1000)")
    parser.add_argument("--statements", type=int, default=6, help="statements per batch (default 6)")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, each way in turn (default 5)")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args(argv)
    with stack_with_org(args) as bench:
        report(asyncio.run(measure(bench, args.batches, args.statements, args.rounds)), args.statements)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
