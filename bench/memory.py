"""Long-term memory benchmark (issue #5 item 7): filtered top-10 latency and recall@10 per org size.

    .venv/bin/python -m bench.memory                       # 1M items, 100 orgs, 200 queries per org
    .venv/bin/python -m bench.memory --items 50000         # quick mode
    .venv/bin/python -m bench.memory --items 200000 --compare   # also every search strategy, forced
    .venv/bin/python -m bench.memory --orgs 1000 --distribution zipf   # 1,000 orgs, every size by Zipf

Needs numpy: `pip install -e '.[bench]'`.

Starts its own embedded Postgres in a temp dir (or uses `--database-url`, an owner/superuser URL of
a migrated database, or `--stack-dir DIR`, kept between invocations so that a loaded table is
reused), migrates, and fills the real `memories` table:

- `--orgs` orgs with skewed sizes: one holds 30 % of the items, the others share the rest by a
  Zipf law (exponent 1.3), so about a third of them hold less than 0.1 %;
- 384-d vectors of the `offline:hash` model (so the partial HNSW index applies), drawn from a
  mixture of `--clusters` gaussian clusters and L2-normalised; each org uses its own subset of
  the clusters (more for bigger orgs), so orgs overlap in topics without sharing all of them;
- rows interleaved across orgs (as concurrent writers would leave them), loaded with binary COPY
  as the table owner, the HNSW index dropped before and built again after (the same definition),
  then VACUUM ANALYZE. The load, the index build and the vacuum are timed separately.

After the load, the product's per-org index job (`memory.index_maintenance.maintain`, what the
watchdog runs) makes passes until one finds nothing to do: every org past
`index_create_rows` gets its own partial HNSW index, built CONCURRENTLY, with no manual step. It is
timed, and single writes into a fresh org are timed while it builds (`--no-index-job` skips it
and drops the per-org indexes).

Then, for a small org (the smallest), a medium one (closest to 1 %), one closest to 5 % and the
large one, it runs `--queries` searches, each a perturbed copy of one of the org's items, through the product's path:
`core.tenancy.tenant_tx` on a pool of the application role (row-level security applies) and
`memory.long_term.search_with_plan(conn, q, "offline:hash", None, 10)`. Recall@10 is measured
against exact nearest neighbours computed with numpy over the org's vectors; also for one end
user's items in the large org (filter `user_id`, "large+user"). Queries are timed
warm (after `--warmup` untimed searches per org). `--compare` repeats this with each strategy
forced (exact; HNSW with iterative scans off / strict / relaxed and several `ef_search`).
Then one search in every org (`--no-every-org` skips it) counts which plan each org's search used
(exact or HNSW) with its recall@10, so a many-org run shows that every small org searches exactly.
Finally it times 1000 single writes through `memory.long_term.remember` into a fresh org, with the
HNSW index in place.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import os
import platform
import shutil
import struct
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

try:
    import numpy as np
except ImportError:  # pragma: no cover - told to the user
    sys.exit("bench/memory.py needs numpy: pip install -e '.[bench]'")
import orjson  # noqa: E402
import psutil  # noqa: E402
import psycopg  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from agentos.stack.local import LocalStack  # noqa: E402
from core.db import open_pool  # noqa: E402
from core.migrations import migrate  # noqa: E402
from core.settings import DatabaseSettings, MemorySettings, Settings, load_settings  # noqa: E402
from core.tenancy import tenant_tx  # noqa: E402
from memory import index_maintenance, long_term  # noqa: E402

APP_ROLE = "agentos_app"
MODEL = long_term.OFFLINE_MODEL
DIMS = long_term.OFFLINE_DIMS
K = 10
LOAD_STEP = 5_000
HNSW_INDEX = "memories_offline_hnsw"
console = Console(highlight=False, width=max(Console().width, 132))


def pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


# ---------------------------------------------------------------------------------------------
# The data set (deterministic from the seed: a reused table is regenerated in memory, not read)


@dataclass
class DataSet:
    org_ids: list[str]
    org_of: Any  # int32[items]: org index of each row, in insertion order
    vectors: Any  # float32[items, DIMS], unit length
    cluster_of: Any  # int32[items]
    spread: Any  # float32[clusters]: per-dimension sigma of each cluster
    signature: str
    kind_of: Any  # int[items]: index into KINDS
    user_of: Any  # int[items]: < 10 is end user `user<n>` (scope user), else scope org

    def rows_of(self, org: int) -> Any:
        return np.flatnonzero(self.org_of == org)


def org_sizes(items: int, orgs: int, distribution: str = "skewed") -> list[int]:
    """`skewed`: one org with 30 %, the rest Zipf(1.3) over the remaining 70 %; `zipf`: every org
    by Zipf(1.3) (every org at least 1 item either way)."""
    if orgs == 1:
        return [items]
    if distribution == "zipf":
        weights = np.arange(1, orgs + 1, dtype=np.float64) ** -1.3
        shares = weights / weights.sum()
    else:
        weights = np.arange(1, orgs, dtype=np.float64) ** -1.3
        shares = np.concatenate([[0.30], 0.70 * weights / weights.sum()])
    sizes = np.maximum(1, np.floor(shares * items)).astype(np.int64)
    sizes[0] += items - int(sizes.sum())
    return [int(s) for s in sizes]


def make_dataset(items: int, orgs: int, clusters: int, seed: int, distribution: str = "skewed") -> DataSet:
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    sizes = org_sizes(items, orgs, distribution)
    centres = rng.standard_normal((clusters, DIMS)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    spread = rng.uniform(0.035, 0.06, clusters).astype(np.float32)
    popularity = rng.zipf(1.5, clusters).astype(np.float64)  # some topics are common
    popularity /= popularity.sum()
    org_of = np.repeat(np.arange(orgs, dtype=np.int32), sizes)
    cluster_of = np.empty(items, dtype=np.int32)
    start = 0
    for size in sizes:
        n_clusters = int(min(clusters, max(4, round(math.sqrt(size) / 2))))
        mine = rng.choice(clusters, size=n_clusters, replace=False, p=popularity)
        cluster_of[start:start + size] = rng.choice(mine, size=size)
        start += size
    order = rng.permutation(items)  # interleave the orgs, as concurrent writers would
    org_of, cluster_of = org_of[order], cluster_of[order]
    vectors = np.empty((items, DIMS), dtype=np.float32)
    step = 50_000
    for lo in range(0, items, step):
        hi = min(items, lo + step)
        c = cluster_of[lo:hi]
        block = rng.standard_normal((hi - lo, DIMS), dtype=np.float32) * spread[c, None] + centres[c]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        vectors[lo:hi] = block
    org_ids = [f"benchorg{i:03d}" for i in range(orgs)]
    signature = f"items={items} orgs={orgs} clusters={clusters} seed={seed} v1" + (
        f" {distribution}" if distribution != "skewed" else "")
    attrs = np.random.default_rng(seed + 1)
    kind_of = np.empty(items, dtype=np.int64)
    user_of = np.empty(items, dtype=np.int64)
    for lo in range(0, items, LOAD_STEP):
        hi = min(items, lo + LOAD_STEP)
        kind_of[lo:hi] = attrs.choice(4, size=hi - lo, p=[0.1, 0.2, 0.6, 0.1])
        user_of[lo:hi] = attrs.integers(0, 50, size=hi - lo)
    console.print(f"generated {items} vectors ({vectors.nbytes / 2**20:.0f} MiB) in {time.perf_counter() - t0:.1f}s")
    return DataSet(org_ids, org_of, vectors, cluster_of, spread, signature, kind_of, user_of)


# ---------------------------------------------------------------------------------------------
# Loading


KINDS = ("summary", "preference", "fact", "document")
COPY_SQL = ("COPY memories (id, org_id, scope, user_id, kind, content, content_hash, embedding, "
            "embedding_model, dims) FROM STDIN (FORMAT BINARY)")


def _field(value: bytes | None) -> bytes:
    return b"\xff\xff\xff\xff" if value is None else struct.pack(">i", len(value)) + value


def copy_rows(data: DataSet, lo: int, hi: int) -> bytes:
    """Rows lo..hi in COPY BINARY tuple format."""
    kinds = data.kind_of[lo:hi]
    users = data.user_of[lo:hi]
    vec_be = data.vectors[lo:hi].astype(">f4")
    vec_head = struct.pack(">hh", DIMS, 0)
    model = _field(MODEL.encode())
    dims = _field(struct.pack(">i", DIMS))
    count = struct.pack(">h", 10)
    out: list[bytes] = []
    for j, i in enumerate(range(lo, hi)):
        org = data.org_ids[data.org_of[i]]
        content = f"bench memory {i} about topic {data.cluster_of[i]}".encode()
        user = users[j]
        out += [
            count,
            _field(f"membench{i:08d}".encode()),
            _field(org.encode()),
            _field(b"user" if user < 10 else b"org"),
            _field(f"user{user}".encode() if user < 10 else None),
            _field(KINDS[kinds[j]].encode()),
            _field(content),
            _field(hashlib.sha256(content).hexdigest().encode()),
            _field(vec_head + vec_be[j].tobytes()),
            model,
            dims,
        ]
    return b"".join(out)


@dataclass
class LoadTimes:
    copy_s: float = math.nan
    index_s: float = math.nan
    vacuum_s: float = math.nan
    reused: bool = False
    table_mib: float = math.nan
    index_mib: float = math.nan
    all_indexes_mib: float = math.nan

    @property
    def total_s(self) -> float:
        return self.copy_s + self.index_s + self.vacuum_s


def loaded_signature(conn: psycopg.Connection[Any]) -> str | None:
    row = conn.execute("SELECT settings->>'bench' FROM orgs WHERE id = 'benchorg000'").fetchone()
    return row[0] if row else None


def load(url: str, data: DataSet, args: argparse.Namespace) -> LoadTimes:
    times = LoadTimes()
    items = len(data.org_of)
    with psycopg.connect(url, autocommit=True) as conn:
        found = loaded_signature(conn)
        count_row = conn.execute("SELECT count(*) FROM memories").fetchone()
        count = int(count_row[0]) if count_row else 0
        if found == data.signature and count >= items:
            console.print(f"reusing the {count} rows already loaded ({found})")
            times.reused = True
            return with_sizes(conn, times)
        if count:
            raise SystemExit(f"memories already holds {count} other rows; use an empty database")
        definition_row = conn.execute(
            "SELECT pg_get_indexdef(%s::regclass)", (HNSW_INDEX,)).fetchone()
        assert definition_row is not None
        definition = str(definition_row[0])
        conn.execute("DELETE FROM orgs WHERE id LIKE 'benchorg%%'")
        with conn.cursor() as cur:
            cur.executemany("INSERT INTO orgs (id, name, settings) VALUES (%s, %s, %s)",
                            [(org, f"bench {org}", orjson.dumps({"bench": data.signature}).decode())
                             for org in data.org_ids])
        conn.execute(f"DROP INDEX {HNSW_INDEX}")
        t0 = time.perf_counter()
        last = t0
        step = LOAD_STEP
        with conn.cursor() as cur, cur.copy(COPY_SQL) as copy:
            copy.write(b"PGCOPY\n\xff\r\n\x00" + struct.pack(">ii", 0, 0))
            for lo in range(0, items, step):
                hi = min(items, lo + step)
                copy.write(copy_rows(data, lo, hi))
                now = time.perf_counter()
                if now - last >= 5 or hi == items:
                    last = now
                    console.print(f"  loaded {hi:>9}/{items} rows, {hi / (now - t0):,.0f} rows/s")
            copy.write(struct.pack(">h", -1))
        times.copy_s = time.perf_counter() - t0
        console.print(f"COPY of {items} rows: {times.copy_s:.1f}s ({items / times.copy_s:,.0f} rows/s, "
                      "btree indexes maintained, HNSW dropped)")
        t0 = time.perf_counter()
        conn.execute(f"SET maintenance_work_mem = '{args.maintenance_work_mem}'")
        conn.execute(f"SET max_parallel_maintenance_workers = {args.build_workers}")
        with progress_of_index_build(url):
            conn.execute(definition)
        times.index_s = time.perf_counter() - t0
        console.print(f"HNSW index build: {times.index_s:.1f}s (maintenance_work_mem {args.maintenance_work_mem}, "
                      f"{args.build_workers} parallel worker(s))")
        t0 = time.perf_counter()
        conn.execute("VACUUM ANALYZE memories")
        times.vacuum_s = time.perf_counter() - t0
        console.print(f"VACUUM ANALYZE: {times.vacuum_s:.1f}s")
        return with_sizes(conn, times)


def with_sizes(conn: psycopg.Connection[Any], times: LoadTimes) -> LoadTimes:
    row = conn.execute("SELECT pg_table_size('memories'), pg_relation_size(%s::regclass), "
                       "pg_indexes_size('memories')", (HNSW_INDEX,)).fetchone()
    if row:
        times.table_mib, times.index_mib, times.all_indexes_mib = (v / 2**20 for v in row)
    return times


@contextlib.contextmanager
def progress_of_index_build(url: str) -> Iterator[None]:
    """Print pg_stat_progress_create_index every 30 s while the index is built (another thread)."""
    import threading

    stop = threading.Event()

    def watch() -> None:
        t0 = time.perf_counter()
        with psycopg.connect(url, autocommit=True) as conn:
            while not stop.wait(30):
                row = conn.execute("SELECT phase, tuples_done, tuples_total, blocks_done, blocks_total "
                                   "FROM pg_stat_progress_create_index").fetchone()
                if row:
                    console.print(f"  index build {time.perf_counter() - t0:.0f}s: {row[0]}, tuples "
                                  f"{row[1]}/{row[2]}, blocks {row[3]}/{row[4]}")

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)


@dataclass
class IndexJob:
    """What the maintenance job did after the load: passes until it had nothing left to do."""

    seconds: float = math.nan
    passes: list[str] = field(default_factory=list)
    indexes: list[tuple[str, int, str, int]] = field(default_factory=list)  # org, items, state, bytes
    writes_during: dict[str, float] = field(default_factory=dict)


def job_settings(url: str, args: argparse.Namespace) -> Settings:
    memory = {"index_create_rows": args.index_create_rows, "index_drop_rows": args.index_create_rows // 2,
              "index_build_concurrency": args.build_concurrency,
              "index_maintenance_work_mem_mb": args.index_work_mem_mb, "index_build_workers": args.build_workers}
    return load_settings(env="test", database={"url": url, "app_role": APP_ROLE, "require_tls": False},
                         memory=memory)


async def run_index_job(url: str, args: argparse.Namespace) -> IndexJob:
    """Run the product's per-org index job (memory.index_maintenance, what the watchdog runs)
    until a pass does nothing, timing single writes into a fresh org while it builds."""
    settings = job_settings(url, args)
    out = IndexJob()
    pool = await open_pool(DatabaseSettings(url=url, app_role=APP_ROLE, pool_min=1, pool_max=2,
                                            statement_timeout_ms=120_000))
    done = asyncio.Event()
    lat: list[float] = []

    async def writer() -> None:
        """Single remember() calls, one tenant transaction each, as long as the job runs."""
        org_id = "benchwrites_during"
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM orgs WHERE id = %s", (org_id,))
            conn.execute("INSERT INTO orgs (id, name) VALUES (%s, 'bench writes during builds')", (org_id,))
        rng = np.random.default_rng(11)
        i = 0
        while not done.is_set():
            vec = rng.standard_normal(DIMS).astype(np.float32)
            vec /= np.linalg.norm(vec)
            t = time.perf_counter()
            async with tenant_tx(pool, org_id) as conn:
                await long_term.remember(conn, long_term.MemoryItem(content=f"during {i}"),
                                         [float(x) for x in vec], MODEL)
            lat.append(time.perf_counter() - t)
            i += 1
            await asyncio.sleep(args.write_gap_ms / 1000)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM orgs WHERE id = %s", (org_id,))

    async def job() -> None:
        try:
            t0 = time.perf_counter()
            for _ in range(5):  # one pass builds everything; the next one must find nothing to do
                line = (await index_maintenance.maintain(settings)).line()
                console.print(f"  index job pass: {line or 'nothing to do'}")
                if line is None:
                    break
                out.passes.append(line)
            out.seconds = time.perf_counter() - t0
        finally:
            done.set()

    try:
        await asyncio.gather(job(), writer() if args.writes else asyncio.sleep(0))
        out.indexes = [(r.org_id, r.items, r.state, r.bytes) for r in await index_maintenance.list_indexes(settings)]
    finally:
        await pool.close()
    if lat:
        out.writes_during = {"n": len(lat), "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000,
                             "max_ms": max(lat) * 1000}
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE memories")
    return out


def drop_org_indexes(url: str) -> None:
    """Without the job (`--no-index-job`): no org has its own index (the shared one only)."""
    with psycopg.connect(url, autocommit=True) as conn:
        for (name,) in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'memories' "
                                    "AND indexname LIKE 'memories\\_offline\\_hnsw\\_%'").fetchall():
            conn.execute(f"DROP INDEX {name}")
            console.print(f"dropped {name}")


# ---------------------------------------------------------------------------------------------
# Queries


@dataclass
class Result:
    org_label: str
    org_id: str
    rows: int
    strategy: str
    search_s: list[float] = field(default_factory=list)
    tx_s: list[float] = field(default_factory=list)
    recall: list[float] = field(default_factory=list)
    plans: Counter[str] = field(default_factory=Counter)
    short: int = 0  # searches that returned fewer than K rows

    def summary(self) -> dict[str, Any]:
        return {"org": self.org_label, "org_id": self.org_id, "rows": self.rows, "strategy": self.strategy,
                "p50_ms": pct(self.search_s, 50) * 1000, "p99_ms": pct(self.search_s, 99) * 1000,
                "tx_p50_ms": pct(self.tx_s, 50) * 1000, "recall_at_10": float(np.mean(self.recall)),
                "min_recall": float(min(self.recall)), "plans": dict(self.plans), "short": self.short,
                "queries": len(self.search_s)}


# name -> (EXACT_SCAN_MAX_ROWS, HNSW_ITERATIVE_SCAN, HNSW_EF_SEARCH, HNSW_MAX_SCAN_TUPLES); None: product
VARIANTS: dict[str, tuple[int, str, int, int] | None] = {
    "product": None,
    "exact": (10**12, "relaxed_order", 40, 20_000),
    "hnsw off ef40": (0, "off", 40, 20_000),
    "hnsw strict ef40": (0, "strict_order", 40, 20_000),
    "hnsw relaxed ef40": (0, "relaxed_order", 40, 20_000),
    "hnsw relaxed ef100": (0, "relaxed_order", 100, 20_000),
    "hnsw relaxed ef200": (0, "relaxed_order", 200, 20_000),
    "hnsw relaxed ef400": (0, "relaxed_order", 400, 50_000),
}


@contextlib.contextmanager
def variant(name: str) -> Iterator[None]:
    knobs = VARIANTS[name]
    keys = ("EXACT_SCAN_MAX_ROWS", "HNSW_ITERATIVE_SCAN", "HNSW_EF_SEARCH", "HNSW_MAX_SCAN_TUPLES")
    saved = {k: getattr(long_term, k) for k in keys}
    long_term.forget_plans()
    try:
        if knobs is not None:
            for k, v in zip(keys, knobs, strict=True):
                setattr(long_term, k, v)
        yield
    finally:
        for k, v in saved.items():
            setattr(long_term, k, v)
        long_term.forget_plans()


def pick_orgs(data: DataSet) -> list[tuple[str, int]]:
    counts = np.bincount(data.org_of, minlength=len(data.org_ids))
    items = len(data.org_of)
    medium = int(np.argmin(np.abs(counts / items - 0.01)))
    upper = int(np.argmin(np.abs(counts / items - 0.05)))
    small = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
    large = int(np.argmax(counts))
    return [("small", small), ("medium", medium), ("5%", upper), ("large", large)]


def make_queries(data: DataSet, rows: Any, n: int, rng: Any) -> Any:
    picks = rng.choice(rows, size=n, replace=len(rows) < n)
    q = data.vectors[picks] + rng.standard_normal((n, DIMS), dtype=np.float32) * 0.03
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return q


def exact_top(data: DataSet, rows: Any, queries: Any) -> list[set[str]]:
    """Exact top-K ids per query by cosine similarity (vectors are unit length)."""
    out: list[set[str]] = []
    vecs = data.vectors[rows]
    for lo in range(0, len(queries), 50):
        sims = queries[lo:lo + 50] @ vecs.T
        k = min(K, len(rows))
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        for r in top:
            out.append({f"membench{int(rows[j]):08d}" for j in r})
    return out


async def measure(pool: Any, data: DataSet, label: str, org: int, queries: Any, truth: list[set[str]],
                  warmup: Any, strategy: str, filters: long_term.MemoryFilters | None = None,
                  rows: int | None = None) -> Result:
    org_id = data.org_ids[org]
    result = Result(label, org_id, rows if rows is not None else int((data.org_of == org).sum()), strategy)
    with variant(strategy):
        for q in warmup:
            async with tenant_tx(pool, org_id) as conn:
                await long_term.search_with_plan(conn, [float(x) for x in q], MODEL, filters, K)
        for q, expected in zip(queries, truth, strict=True):
            vec = [float(x) for x in q]
            t0 = time.perf_counter()
            async with tenant_tx(pool, org_id) as conn:
                t1 = time.perf_counter()
                found, plan = await long_term.search_with_plan(conn, vec, MODEL, filters, K)
                t2 = time.perf_counter()
            t3 = time.perf_counter()
            result.search_s.append(t2 - t1)
            result.tx_s.append(t3 - t0)
            result.plans[plan] += 1
            ids = {row["id"] for row in found}
            if len(found) < min(K, result.rows):
                result.short += 1
            result.recall.append(len(ids & expected) / max(1, min(K, len(expected))))
    return result


@dataclass
class Sweep:
    """One search in every org (`--every-org`): which plan each org's search used, and its recall."""

    plans: Counter[str] = field(default_factory=Counter)
    recall: dict[str, list[float]] = field(default_factory=dict)  # plan -> recall@10 of each org
    largest_exact: int = 0  # items of the largest org searched exactly
    smallest_hnsw: int = 0  # items of the smallest org searched through HNSW (0: none)
    seconds: float = 0.0

    def summary(self) -> dict[str, Any]:
        return {"plans": dict(self.plans), "largest_exact": self.largest_exact, "smallest_hnsw": self.smallest_hnsw,
                "recall_at_10": {p: float(np.mean(r)) for p, r in self.recall.items()},
                "min_recall": {p: float(min(r)) for p, r in self.recall.items()}, "seconds": self.seconds}


async def sweep_orgs(pool: Any, data: DataSet, rng: Any) -> Sweep:
    """One top-10 search through the product's path in each org, a perturbed copy of one of its
    items, with recall against the exact neighbours: shows which orgs search exactly."""
    out = Sweep()
    t0 = time.perf_counter()
    order = np.argsort(data.org_of, kind="stable")
    bounds = np.searchsorted(data.org_of[order], np.arange(len(data.org_ids) + 1))
    long_term.forget_plans()
    for org in range(len(data.org_ids)):
        rows = order[bounds[org]:bounds[org + 1]]
        if len(rows) == 0:
            continue
        query = make_queries(data, rows, 1, rng)
        expected = exact_top(data, rows, query)[0]
        async with tenant_tx(pool, data.org_ids[org]) as conn:
            found, plan = await long_term.search_with_plan(conn, [float(x) for x in query[0]], MODEL, None, K)
        plan = "exact" if plan == "exact" else "hnsw"  # hnsw+exact counts as hnsw: the org was past the line
        out.plans[plan] += 1
        out.recall.setdefault(plan, []).append(len({r["id"] for r in found} & expected) / max(1, len(expected)))
        if plan == "exact":
            out.largest_exact = max(out.largest_exact, len(rows))
        else:
            out.smallest_hnsw = len(rows) if not out.smallest_hnsw else min(out.smallest_hnsw, len(rows))
    out.seconds = time.perf_counter() - t0
    return out


async def time_writes(pool: Any, url: str, n: int) -> dict[str, float]:
    """n single `remember` calls (one transaction each) into a fresh org, HNSW index in place."""
    org_id = "benchwrites"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM orgs WHERE id = %s", (org_id,))
        conn.execute("INSERT INTO orgs (id, name) VALUES (%s, 'bench writes')", (org_id,))
    rng = np.random.default_rng(7)
    vecs = rng.standard_normal((n, DIMS)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    lat: list[float] = []
    t0 = time.perf_counter()
    for i in range(n):
        t = time.perf_counter()
        async with tenant_tx(pool, org_id) as conn:
            await long_term.remember(conn, long_term.MemoryItem(content=f"write {i}"),
                                     [float(x) for x in vecs[i]], MODEL)
        lat.append(time.perf_counter() - t)
    total = time.perf_counter() - t0
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM orgs WHERE id = %s", (org_id,))
    return {"n": n, "per_s": n / total, "p50_ms": pct(lat, 50) * 1000, "p99_ms": pct(lat, 99) * 1000}


async def run_queries(url: str, data: DataSet, args: argparse.Namespace
                      ) -> tuple[list[Result], dict[str, float], Sweep | None]:
    pool = await open_pool(DatabaseSettings(url=url, app_role=APP_ROLE, pool_min=1, pool_max=2,
                                            statement_timeout_ms=120_000))
    results: list[Result] = []
    try:
        rng = np.random.default_rng(args.seed + 2)
        strategies = list(VARIANTS) if args.compare else ["product"]
        for label, org in pick_orgs(data):
            if label not in args.sizes.split(","):
                continue
            rows = data.rows_of(org)
            queries = make_queries(data, rows, args.queries, rng)
            warmup = make_queries(data, rows, args.warmup, rng)
            t0 = time.perf_counter()
            truth = exact_top(data, rows, queries)
            console.print(f"{label} org {data.org_ids[org]}: {len(rows)} rows, exact top-{K} of "
                          f"{len(queries)} queries with numpy in {time.perf_counter() - t0:.1f}s")
            for strategy in strategies:
                n = args.queries if strategy == "product" else min(args.queries, args.compare_queries)
                result = await measure(pool, data, label, org, queries[:n], truth[:n], warmup, strategy)
                s = result.summary()
                console.print(f"  {strategy:<20} p50 {s['p50_ms']:7.2f} ms  p99 {s['p99_ms']:7.2f} ms  "
                              f"recall@10 {s['recall_at_10']:.3f}  plans {dict(result.plans)}"
                              + (f"  short {result.short}" if result.short else ""))
                results.append(result)
            if label == "large" and "large+user" in args.sizes.split(","):
                # one end user's items in the large org (filter user=user0): a selective filter
                rows = rows[data.user_of[rows] == 0]
                queries = make_queries(data, rows, args.queries, rng)
                truth = exact_top(data, rows, queries)
                result = await measure(pool, data, "large+user", org, queries, truth, warmup[:5], "product",
                                       long_term.MemoryFilters(user_id="user0"), len(rows))
                s = result.summary()
                console.print(f"  user=user0 ({len(rows)} rows): p50 {s['p50_ms']:7.2f} ms  p99 {s['p99_ms']:7.2f} ms  "
                              f"recall@10 {s['recall_at_10']:.3f}  plans {dict(result.plans)}")
                results.append(result)
        sweep = None
        if args.every_org:
            console.print(f"one search in each of the {len(data.org_ids)} orgs")
            sweep = await sweep_orgs(pool, data, np.random.default_rng(args.seed + 3))
        writes = await time_writes(pool, url, args.writes) if args.writes else {}
    finally:
        await pool.close()
    return results, writes, sweep


# ---------------------------------------------------------------------------------------------
# Main


def print_table(results: list[Result], items: int) -> None:
    table = Table(title=f"top-{K} search through memory.long_term.search, warm (one client)")
    for col in ("org", "rows", "share", "strategy", "plan used", "p50 ms", "p99 ms", "tx p50 ms", "recall@10",
                "min recall"):
        table.add_column(col, justify="left" if col in ("org", "strategy", "plan used") else "right")
    for r in results:
        s = r.summary()
        plans = ", ".join(f"{k} {v}" for k, v in r.plans.most_common())
        table.add_row(r.org_label, f"{r.rows:,}", f"{r.rows / items:.2%}", r.strategy, plans,
                      f"{s['p50_ms']:.2f}", f"{s['p99_ms']:.2f}", f"{s['tx_p50_ms']:.2f}",
                      f"{s['recall_at_10']:.3f}", f"{s['min_recall']:.1f}")
    console.print(table)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--items", type=int, default=1_000_000, help="memory items in all (1000000; 50000 is quick)")
    p.add_argument("--orgs", type=int, default=100)
    p.add_argument("--queries", type=int, default=200, help="timed searches per org size")
    p.add_argument("--warmup", type=int, default=20, help="untimed searches per org and strategy first")
    p.add_argument("--clusters", type=int, default=300, help="gaussian clusters the vectors are drawn from")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--compare", action="store_true", help="also measure every strategy, forced")
    p.add_argument("--compare-queries", type=int, default=100, help="searches per forced strategy")
    p.add_argument("--writes", type=int, default=1000, help="single remember() calls to time at the end (0: none)")
    p.add_argument("--maintenance-work-mem", default=None, help="for the HNSW build (default: ~3 KiB per item)")
    p.add_argument("--build-workers", type=int, default=1, help="max_parallel_maintenance_workers for the build")
    p.add_argument("--no-index-job", action="store_true",
                   help="skip the per-org index job (memory.index_maintenance, what the watchdog runs) and drop "
                        "the per-org indexes: every org above the exact-search line then uses the shared index")
    p.add_argument("--build-concurrency", type=int, default=1,
                   help="the job's concurrent builds (index_build_concurrency)")
    p.add_argument("--index-work-mem-mb", type=int, default=256,
                   help="maintenance_work_mem of each of the job's builds (index_maintenance_work_mem_mb)")
    p.add_argument("--index-create-rows", type=int, default=MemorySettings().index_create_rows,
                   help="the job's line for an org's own index (dropped below half of it)")
    p.add_argument("--exact-max-rows", type=int, default=long_term.EXACT_SCAN_MAX_ROWS,
                   help="search orgs up to this many items exactly (memory.long_term.EXACT_SCAN_MAX_ROWS); "
                        "lower it with --index-create-rows to try the HNSW path on a small data set")
    p.add_argument("--write-gap-ms", type=float, default=20.0,
                   help="pause between the single writes timed while the job builds")
    p.add_argument("--distribution", choices=("skewed", "zipf"), default="skewed",
                   help="org sizes: skewed (one org 30 %%, the rest Zipf) or zipf (every org Zipf(1.3))")
    p.add_argument("--sizes", default="small,medium,5%,large,large+user", help="which org sizes to measure")
    p.add_argument("--every-org", action=argparse.BooleanOptionalAction, default=True,
                   help="also one search in every org, counting which plan each used (exact or HNSW) and its recall")
    p.add_argument("--database-url", help="an owner/superuser URL of a database to use instead of a new stack")
    p.add_argument("--stack-dir", type=Path, help="keep the embedded stack here (reused when run again)")
    p.add_argument("--json", type=Path, help="write every figure here")
    args = p.parse_args(argv)
    if args.maintenance_work_mem is None:
        args.maintenance_work_mem = f"{max(256, args.items * 3 // 1024)}MB"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    long_term.EXACT_SCAN_MAX_ROWS = args.exact_max_rows
    t_start = time.perf_counter()
    busy = psutil.cpu_percent(interval=0.5)
    if busy > 20:
        console.print(f"[yellow]the CPUs are {busy:.0f}% busy before the start: figures will be noisy[/yellow]")
    stack: LocalStack | None = None
    temp: Path | None = None
    try:
        url = args.database_url
        if url is None:
            if args.stack_dir is None:
                temp = Path(tempfile.mkdtemp(prefix="agentos-bench-memory-"))
            stack_dir = args.stack_dir or temp
            assert stack_dir is not None
            t0 = time.perf_counter()
            stack = LocalStack(stack_dir, database="agentos_bench", durable=False)
            url = stack.start().database_url
            console.print(f"embedded stack up in {time.perf_counter() - t0:.1f}s ({stack_dir})")
        migrate(url, APP_ROLE)
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
            pg = conn.execute("SHOW server_version").fetchone()
        pgvector = row[0] if row else "?"
        console.print(f"PostgreSQL {pg[0] if pg else '?'}, pgvector {pgvector}")
        data = make_dataset(args.items, args.orgs, args.clusters, args.seed, args.distribution)
        times = load(url, data, args)
        job = IndexJob()
        if args.no_index_job:
            drop_org_indexes(url)
        else:
            console.print("running the per-org index job (memory.index_maintenance) until it settles")
            job = asyncio.run(run_index_job(url, args))
        org_index_s = job.seconds
        with psycopg.connect(url) as conn:
            with_sizes(conn, times)
        results, writes, sweep = asyncio.run(run_queries(url, data, args))
        print_table(results, args.items)
        counts = np.bincount(data.org_of, minlength=args.orgs)
        console.print(f"orgs: {args.orgs}, largest {counts.max():,} rows, {int((counts < args.items / 1000).sum())} "
                      f"below 0.1 %, smallest {counts.min():,}")
        if not times.reused:
            console.print(f"insert: COPY {times.copy_s:.1f}s ({args.items / times.copy_s:,.0f} rows/s) + HNSW build "
                          f"{times.index_s:.1f}s + VACUUM ANALYZE {times.vacuum_s:.1f}s = {times.total_s:.1f}s "
                          f"({args.items / times.total_s:,.0f} rows/s overall)")
        if not math.isnan(org_index_s):
            valid = [ix for ix in job.indexes if ix[2] == "valid"]
            console.print(f"per-org index job: settled in {org_index_s:.1f}s ({len(job.passes)} pass(es) with work); "
                          f"{len(valid)} valid per-org indexes of {args.orgs} orgs, "
                          f"{sum(ix[3] for ix in valid) / 2**20:,.0f} MiB together; "
                          f"{int((counts <= long_term.EXACT_SCAN_MAX_ROWS).sum())} orgs at most "
                          f"{long_term.EXACT_SCAN_MAX_ROWS:,} items (exact search)")
            for org_id, items, state, size in job.indexes[:15]:
                console.print(f"  {org_id}: {items:,} items, {state}, {size / 2**20:,.1f} MiB")
            if len(job.indexes) > 15:
                console.print(f"  ... and {len(job.indexes) - 15} more")
            if job.writes_during:
                w = job.writes_during
                console.print(f"single writes while the job built: {w['n']:.0f}, p50 {w['p50_ms']:.2f} ms, "
                              f"p99 {w['p99_ms']:.2f} ms, max {w['max_ms']:.1f} ms")
        if not (times.reused or math.isnan(org_index_s)):
            console.print(f"insert with the per-org indexes: {times.total_s + org_index_s:.1f}s "
                          f"({args.items / (times.total_s + org_index_s):,.0f} rows/s overall)")
        if sweep is not None:
            per_plan = "; ".join(f"{plan} {n} orgs, recall@10 {np.mean(sweep.recall[plan]):.3f} (min "
                                 f"{min(sweep.recall[plan]):.1f})" for plan, n in sweep.plans.most_common())
            console.print(f"one search in every org ({sweep.seconds:.0f}s): {per_plan}; largest org searched exactly "
                          f"{sweep.largest_exact:,} items, smallest through HNSW {sweep.smallest_hnsw:,}")
        console.print(f"sizes: table {times.table_mib:,.0f} MiB, shared HNSW index {times.index_mib:,.0f} MiB, "
                      f"all indexes of memories {times.all_indexes_mib:,.0f} MiB")
        if writes:
            console.print(f"single writes (remember(), one tenant_tx each, HNSW in place): {writes['per_s']:.0f}/s, "
                          f"p50 {writes['p50_ms']:.2f} ms, p99 {writes['p99_ms']:.2f} ms")
        console.print(f"machine: {os.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB, "
                      f"{platform.system()} {platform.release()}, Python {platform.python_version()}, "
                      f"product knobs: EXACT_SCAN_MAX_ROWS={long_term.EXACT_SCAN_MAX_ROWS} "
                      f"ef_search={long_term.HNSW_EF_SEARCH} iterative={long_term.HNSW_ITERATIVE_SCAN} "
                      f"max_scan_tuples={long_term.HNSW_MAX_SCAN_TUPLES}")
        if args.json:
            doc = {"args": {k: str(v) for k, v in vars(args).items()}, "pgvector": pgvector,
                   "load": vars(times) | {"total_s": times.total_s, "org_index_s": org_index_s}, "writes": writes,
                   "index_job": vars(job), "every_org": sweep.summary() if sweep else None,
                   "results": [r.summary() for r in results]}
            args.json.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY))
    except KeyboardInterrupt:
        console.print("[yellow]interrupted; stopping[/yellow]")
        return 130
    finally:
        if stack is not None:
            stack.stop()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    console.print(f"total wall time {time.perf_counter() - t_start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
