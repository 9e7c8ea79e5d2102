"""POST /v1/knowledge/search and metadata filters, against the real stack: chunks with scores,
document id, title and heading path; documents' metadata inherited by their chunks; filters by
document and by metadata (equality and containment, through the GIN index); another org's
chunks never found; bad input refused with stable codes; hybrid retrieval (vector + full text,
reciprocal rank fusion) on the labelled set of bench/data, and in recall."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import psycopg
import pytest

from core.db import open_pool
from core.infra import open_redis
from core.settings import Settings
from core.tenancy import tenant_tx
from memory import hybrid, knowledge
from memory.embeddings import resolve_embedder
from memory.reembed import reembed
from memory.service import MemoryService, Who
from tests.helpers import Org, error_of

GUIDE = """# Acme handbook

Welcome to the Acme handbook. It explains how the team works.

## Holidays

Every employee gets twenty-five days of paid holiday per year. Unused holiday days carry over
to the next year, up to five days.

## Expenses

Submit travel expenses with receipts within thirty days. Meals are reimbursed up to forty euros.
"""
LAPTOPS = """# IT guide

## Laptops

Laptops use full-disk encryption. Report a lost laptop to the security desk within one hour.
"""


def add_document(settings: Settings, org: Org, content: str, title: str, metadata: dict[str, Any]) -> str:
    """A document stored through the API and ingested here, at once (not by a worker)."""
    r = org.client.post("/v1/knowledge", json={"content": content, "title": title, "content_type": "text/markdown",
                                               "metadata": metadata}, headers=org.headers)
    assert r.status_code == 202, r.text
    document_id = str(r.json()["id"])

    async def go() -> knowledge.IngestOutcome:
        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
        try:
            return await knowledge.ingest(pool, settings, org.id, document_id)
        finally:
            await pool.close()

    outcome = asyncio.run(go())
    assert outcome.status in ("ready", "gone"), outcome  # gone: a worker of the suite was quicker
    assert org.client.get(f"/v1/knowledge/{document_id}", headers=org.headers).json()["status"] == "ready"
    return document_id


def search(org: Org, status: int = 200, **body: Any) -> dict[str, Any]:
    r = org.client.post("/v1/knowledge/search", json=body, headers=org.headers)
    assert r.status_code == status, r.text
    return dict(r.json())


@pytest.fixture
def library(settings: Settings, org: Org, other_org: Org) -> dict[str, str]:
    return {
        "guide": add_document(settings, org, GUIDE, "Handbook", {"team": "hr", "tags": ["policy", "2026"]}),
        "laptops": add_document(settings, org, LAPTOPS, "IT", {"team": "it"}),
        "other": add_document(settings, other_org, GUIDE, "Their handbook", {"team": "hr"}),
    }


def test_search_finds_chunks_with_their_document_and_heading(org: Org, library: dict[str, str]) -> None:
    found = search(org, query="how many days of paid holiday per year", limit=3)
    assert found["embedding_model"] == "offline:hash" and 1 <= len(found["data"]) <= 3
    best = found["data"][0]
    assert best["document_id"] == library["guide"] and best["title"] == "Handbook"
    assert best["heading"] == "Acme handbook > Holidays" and "twenty-five days" in best["content"]
    assert isinstance(best["chunk"], int) and best["id"].startswith("mem")
    assert best["metadata"]["team"] == "hr" and best["metadata"]["tags"] == ["policy", "2026"]  # inherited
    scores = [c["score"] for c in found["data"]]
    assert scores == sorted(scores, reverse=True)
    # only this org's documents, never the other org's copy of the same text
    every = search(org, query="handbook holiday expenses laptops", limit=50)["data"]
    assert {c["document_id"] for c in every} == {library["guide"], library["laptops"]}


def test_another_org_sees_only_its_own_chunks(other_org: Org, library: dict[str, str]) -> None:
    every = search(other_org, query="lost laptop encryption holiday", limit=50)["data"]
    assert every and {c["document_id"] for c in every} == {library["other"]}
    assert search(other_org, query="laptop", document_ids=[library["laptops"]])["data"] == []


def test_filters_by_document_and_metadata(org: Org, library: dict[str, str]) -> None:
    only = search(org, query="holiday", document_ids=[library["laptops"]], limit=10)["data"]
    assert only and {c["document_id"] for c in only} == {library["laptops"]}
    it = search(org, query="holiday", filter={"team": "it"}, limit=10)["data"]
    assert it and {c["document_id"] for c in it} == {library["laptops"]}
    tagged = search(org, query="laptop", filter={"tags": ["policy"]}, limit=10)["data"]  # containment
    assert tagged and {c["document_id"] for c in tagged} == {library["guide"]}
    both = search(org, query="holiday", filter={"team": "hr", "heading": "Acme handbook > Holidays"})["data"]
    assert [c["heading"] for c in both] == ["Acme handbook > Holidays"]
    none = search(org, query="holiday", filter={"team": "finance"})
    assert none["data"] == [] and "No chunk matched" in none["note"]


def test_memory_search_and_list_take_a_metadata_filter(org: Org, library: dict[str, str]) -> None:
    r = org.client.post("/v1/memories", json={"content": "Standup is at 9:30", "metadata": {"team": "hr"}},
                        headers=org.headers)
    assert r.status_code == 201, r.text
    params = {"query": "standup holiday", "metadata": json.dumps({"team": "hr"}), "limit": "50"}
    found = org.client.get("/v1/memories", params=params, headers=org.headers).json()["data"]
    assert {m["document_id"] for m in found} == {library["guide"], None}
    listed = org.client.get("/v1/memories", params={"metadata": '{"team": "hr"}', "kind": "fact"},
                            headers=org.headers).json()["data"]
    assert [m["content"] for m in listed] == ["Standup is at 9:30"]
    for bad in ("[1]", "{nope", '"hr"'):
        r = org.client.get("/v1/memories", params={"metadata": bad}, headers=org.headers)
        assert error_of(r, 422, "VALIDATION_FAILED")["details"]["fields"][0]["field"] == "metadata"


def test_bad_searches_are_refused(org: Org, settings: Settings) -> None:
    for body in ({"query": "   "}, {"query": "x", "limit": 0}, {"query": "x", "limit": 51}, {"query": "x", "nope": 1},
                 {"query": "x", "document_ids": []}, {"query": "x", "document_ids": ["mem_1"]}, {},
                 {"query": "x", "filter": [1]}):
        r = org.client.post("/v1/knowledge/search", json=body, headers=org.headers)
        error_of(r, 422, "VALIDATION_FAILED")
    long = "x" * (settings.memory.max_content_chars + 1)
    error_of(org.client.post("/v1/knowledge/search", json={"query": long}, headers=org.headers), 413,
             "PAYLOAD_TOO_LARGE")


def test_metadata_filters_can_use_the_gin_index(settings: Settings) -> None:
    with psycopg.connect(settings.database.url) as conn:
        conn.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in conn.execute(
            """EXPLAIN SELECT id FROM memories WHERE metadata @> '{"team": "hr"}'""").fetchall())
    assert "memories_metadata_idx" in plan, plan


# --- hybrid retrieval ---------------------------------------------------------------------------

LABELLED = json.loads((Path(__file__).resolve().parent.parent / "bench" / "data" / "knowledge_labelled.json")
                      .read_text())


def test_fusion_ranks_by_reciprocal_rank() -> None:
    a, b, c, d = ({"id": x, "score": s} for x, s in (("a", 0.9), ("b", 0.8), ("c", 0.1), ("d", 0.5)))
    # b is second in both lists: it beats a (first in one list only) and c (first in the other)
    assert [r["id"] for r in hybrid.fuse([[a, b, d], [c, b]], 3)] == ["b", "a", "c"]
    assert hybrid.fuse([[], []], 5) == []


def test_hybrid_search_finds_every_labelled_chunk(settings: Settings, org: Org) -> None:
    for doc in LABELLED["documents"]:
        add_document(settings, org, doc["content"], doc["title"], {})
    found = {"vector": 0, "hybrid": 0}
    for q in LABELLED["questions"]:
        for mode in found:
            result = search(org, query=q["question"], limit=5, mode=mode)
            assert result["mode"] == mode
            headings = [c["heading"] for c in result["data"]]
            found[mode] += any(e in headings for e in q["expected"])
    assert found["hybrid"] == len(LABELLED["questions"]) >= found["vector"]


def test_recall_of_a_hybrid_agent_finds_chunks_by_their_words(settings: Settings, org: Org) -> None:
    add_document(settings, org, LAPTOPS, "IT", {})
    add_document(settings, org, GUIDE, "Handbook", {})

    async def go() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 2}))
        redis = open_redis(settings.redis)
        try:
            service = MemoryService(settings, pool, redis)
            who = Who(org.id, "agent_x", None, "session_x")
            query = "are disks encrypted?"  # "encrypted" and "encryption" share the stem "encrypt"
            return (await service.recall(who, query, limit=3, knowledge=True, hybrid=True),
                    await service.recall(who, query, limit=3, knowledge=True, hybrid=False))
        finally:
            await redis.aclose()
            await pool.close()

    with_text, _vector_only = asyncio.run(go())
    assert with_text and "full-disk encryption" in with_text[0]["content"]
    assert all(isinstance(r["score"], float) for r in with_text)  # still cosine similarity


# --- re-chunking on reembed -----------------------------------------------------------------------


def test_reembed_rechunks_documents_when_the_chunking_settings_changed(settings: Settings, org: Org) -> None:
    document_id = add_document(settings, org, GUIDE, "Handbook", {"team": "hr"})
    before = org.client.get(f"/v1/knowledge/{document_id}", headers=org.headers).json()["chunks"]
    small = settings.model_copy(update={"memory": settings.memory.model_copy(
        update={"chunk_chars": 100, "chunk_overlap_chars": 20})})

    async def go() -> tuple[int, int, list[int]]:
        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 3}))
        embedder = resolve_embedder("offline:hash", settings)
        [vector] = await embedder.embed(["holiday expenses handbook"])
        seen: list[int] = []
        moving = asyncio.Event()

        async def searcher() -> None:  # searches while the chunks are replaced: never empty-handed
            while not moving.is_set():
                async with tenant_tx(pool, org.id) as conn:
                    rows = await knowledge.search_chunks(conn, vector, "offline:hash", 50, document_ids=[document_id])
                seen.append(len(rows))
                await asyncio.sleep(0)

        try:
            task = asyncio.create_task(searcher())
            await asyncio.sleep(0.05)
            first = await reembed(pool, small, org.id, "offline:hash")
            again = await reembed(pool, small, org.id, "offline:hash")
            moving.set()
            await task
            return first.rechunked, again.rechunked, seen
        finally:
            await pool.close()

    first, again, seen = asyncio.run(go())
    assert (first, again) == (1, 0)  # chunked again once; then the recorded settings match
    assert seen and min(seen) > 0
    doc = org.client.get(f"/v1/knowledge/{document_id}", headers=org.headers).json()
    assert doc["chunks"] > before and doc["status"] == "ready"
    with psycopg.connect(settings.database.url) as conn:
        row = conn.execute("SELECT chunking FROM knowledge_documents WHERE id = %s", (document_id,)).fetchone()
    assert row is not None and row[0] == {"chars": 100, "overlap": 20}
    found = search(org, query="how many days of paid holiday", limit=50, document_ids=[document_id])["data"]
    assert len(found) == doc["chunks"] and all(len(c["content"]) < 300 for c in found)
    assert all(c["metadata"]["team"] == "hr" for c in found)
