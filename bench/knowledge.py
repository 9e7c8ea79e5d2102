"""Knowledge retrieval on a small labelled set: recall@5 of vector-only vs hybrid search.

    .venv/bin/python -m bench.knowledge            # an embedded stack of its own, offline:hash
    .venv/bin/python -m bench.knowledge --database-url postgresql://...   # an owner URL, migrated here

`bench/data/knowledge_labelled.json` holds a few documents and questions, each with the heading
path of the chunk that answers it. The documents are ingested through the product's path
(`memory.knowledge.create` + `ingest`: chunking, the offline embedding model, one org), then each
question goes through `memory.knowledge.search_chunks` as `POST /v1/knowledge/search` runs it,
vector only and hybrid (vector + full text, reciprocal rank fusion). A question counts as found
when its expected chunk is among the top 5 (recall@5); MRR is the mean of 1/rank (0 if absent).
These are quality figures, not timings: a busy machine does not change them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import psycopg  # noqa: E402

from agentos.stack.local import LocalStack  # noqa: E402
from core.db import open_pool  # noqa: E402
from core.migrations import migrate  # noqa: E402
from core.settings import Settings, load_settings  # noqa: E402
from core.tenancy import tenant_tx  # noqa: E402
from memory import knowledge  # noqa: E402
from memory.embeddings import resolve_embedder  # noqa: E402

APP_ROLE = "agentos_app"
DATA = REPO / "bench" / "data" / "knowledge_labelled.json"
ORG = "benchknowledge"
K = 5


async def run(settings: Settings, labelled: dict[str, Any]) -> dict[str, dict[str, float]]:
    with psycopg.connect(settings.database.url, autocommit=True) as conn:
        conn.execute("DELETE FROM orgs WHERE id = %s", (ORG,))
        conn.execute("INSERT INTO orgs (id, name) VALUES (%s, 'bench knowledge')", (ORG,))
    pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 2}))
    try:
        for doc in labelled["documents"]:
            async with tenant_tx(pool, ORG) as conn:
                row = await knowledge.create(conn, title=doc["title"], content_type="text/markdown",
                                             content=doc["content"], metadata={})
            outcome = await knowledge.ingest(pool, settings, ORG, row["id"])
            assert outcome.status == "ready", outcome
        embedder = resolve_embedder(settings.memory.embedding_model, settings)
        figures: dict[str, dict[str, float]] = {}
        misses: dict[str, list[str]] = {}
        for mode in ("vector", "hybrid"):
            found, rr = 0, 0.0
            misses[mode] = []
            for q in labelled["questions"]:
                [vector] = await embedder.embed([q["question"]])
                async with tenant_tx(pool, ORG) as conn:
                    rows = await knowledge.search_chunks(conn, vector, embedder.model, K,
                                                         hybrid_text=q["question"] if mode == "hybrid" else None)
                headings = [r["heading"] for r in rows]
                ranks = [headings.index(e) + 1 for e in q["expected"] if e in headings]
                if ranks:
                    found += 1
                    rr += 1 / min(ranks)
                else:
                    misses[mode].append(q["question"])
            n = len(labelled["questions"])
            figures[mode] = {"recall_at_5": found / n, "mrr": rr / n, "questions": n}
        for mode, missed in misses.items():
            for question in missed:
                print(f"  {mode:<6} missed: {question}")
        return figures
    finally:
        await pool.close()
        with psycopg.connect(settings.database.url, autocommit=True) as conn:
            conn.execute("DELETE FROM orgs WHERE id = %s", (ORG,))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--database-url", help="an owner/superuser URL of a database to use instead of a new stack")
    p.add_argument("--data", type=Path, default=DATA, help="the labelled set")
    args = p.parse_args(argv)
    labelled = json.loads(args.data.read_text())
    temp: Path | None = None
    stack: LocalStack | None = None
    try:
        url = args.database_url
        if url is None:
            temp = Path(tempfile.mkdtemp(prefix="agentos-bench-knowledge-"))
            stack = LocalStack(temp, database="agentos_bench", durable=False)
            url = stack.start().database_url
        migrate(url, APP_ROLE)
        settings = load_settings(env="test", database={"url": url, "app_role": APP_ROLE, "require_tls": False})
        figures = asyncio.run(run(settings, labelled))
    finally:
        if stack is not None:
            stack.stop()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)
    n = figures["vector"]["questions"]
    print(f"labelled set: {len(labelled['documents'])} documents, {n:.0f} questions; model "
          f"{settings.memory.embedding_model}; top {K}")
    for mode, f in figures.items():
        print(f"  {mode:<6} recall@5 {f['recall_at_5']:.3f}  MRR {f['mrr']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
