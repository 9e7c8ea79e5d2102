"""The knowledge base: chunking (pure), ingestion into long-term memory (real Postgres + pgvector,
the offline embedder), the `/v1/knowledge` API, and ingestion by a real Celery worker, including
an embedding outage retried with backoff until the document is `failed`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from api.app import create_app
from core.db import open_pool
from core.settings import Settings
from core.tenancy import AsyncPool, tenant_tx
from memory import knowledge, long_term
from memory.chunking import chunk_document, split_long
from memory.embeddings import hash_embed
from runtime.watchdog import sweep_once
from tests.helpers import Org, RsaKeys, error_of, make_settings, new_org, running_worker
from tests.openai_server import EMBEDDING_DIMS, OpenAIServer

T = TypeVar("T")

GUIDE = """# Acme handbook

Welcome to the Acme handbook. It explains how the team works.

## Holidays

Every employee gets twenty-five days of paid holiday per year. Unused holiday days carry over
to the next year, up to five days. Request holiday in the HR portal two weeks ahead.

## Expenses

Submit travel expenses with receipts within thirty days. Meals are reimbursed up to forty euros
a day; taxis only after ten in the evening.

## Security

Laptops use full-disk encryption. Report a lost laptop to the security desk within one hour.
"""

# Ingestion retries quickly in these tests' worker and in direct calls.
FAST_RETRY_ENV = {"AGENTOS_MEMORY__INGEST_RETRY_BASE_S": "0.05", "AGENTOS_MEMORY__INGEST_RETRY_MAX_S": "0.2"}


# --- helpers ------------------------------------------------------------------------------------


def run_with_pool(settings: Settings, work: Callable[[AsyncPool], Awaitable[T]]) -> T:
    async def scenario() -> T:
        pool = await open_pool(settings.database)
        try:
            return await work(pool)
        finally:
            await pool.close()

    return asyncio.run(scenario())


def chunk_rows(settings: Settings, org_id: str, document_id: str) -> list[dict[str, Any]]:
    async def work(pool: AsyncPool) -> list[dict[str, Any]]:
        async with tenant_tx(pool, org_id) as conn:
            cur = await conn.execute(
                f"SELECT {long_term.COLUMNS} FROM memories WHERE document_id = %s ORDER BY (metadata->>'chunk')::int",
                (document_id,),
            )
            return list(await cur.fetchall())

    return run_with_pool(settings, work)


def all_chunk_count(stack: StackUrls, document_id: str) -> int:
    """As the database owner (no row-level security): chunks left in any org."""
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM memories WHERE document_id = %s", (document_id,)).fetchone()
    assert row is not None
    return int(row[0])


def post_doc(org: Org, content: str, **fields: Any) -> Any:
    return org.client.post("/v1/knowledge", json={"content": content} | fields, headers=org.headers)


def create_pending(settings: Settings, org_id: str, content: str, content_type: str = "text/markdown",
                   title: str = "doc") -> str:
    """A pending document made straight in the database (no message to the workers)."""

    async def work(pool: AsyncPool) -> str:
        async with tenant_tx(pool, org_id) as conn:
            doc = await knowledge.create(conn, title=title, content_type=content_type, content=content, metadata={})
        return str(doc["id"])

    return run_with_pool(settings, work)


def ingest(settings: Settings, org_id: str, document_id: str) -> knowledge.IngestOutcome:
    return run_with_pool(settings, lambda pool: knowledge.ingest(pool, settings, org_id, document_id))


def wait_for_status(org: Org, document_id: str, statuses: set[str], timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        r = org.client.get(f"/v1/knowledge/{document_id}", headers=org.headers)
        assert r.status_code == 200, r.text
        doc = dict(r.json())
        if doc["status"] in statuses:
            return doc
        if time.monotonic() > deadline:
            raise AssertionError(f"document still {doc['status']} after {timeout_s}s: {doc}")
        time.sleep(0.1)


def set_org_embedding_model(stack: StackUrls, org_id: str, spec: str) -> None:
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("UPDATE orgs SET settings = settings || jsonb_build_object('embedding_model', %s::text) "
                     "WHERE id = %s", (spec, org_id))


@pytest.fixture(scope="module")
def knowledge_worker(stack: StackUrls, openai_server: OpenAIServer,
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A real Celery worker whose ingestion retries are quick. Apart from that it is configured
    like conftest's `worker`, so either may take any message."""
    with running_worker(stack, openai_server, tmp_path_factory.mktemp("knowledge-worker"), FAST_RETRY_ENV):
        yield


@pytest.fixture(scope="module")
def fast_settings(stack: StackUrls, rsa_keys: RsaKeys) -> Settings:
    return make_settings(stack, rsa_keys, memory={"ingest_retry_base_s": 0.01, "ingest_retry_max_s": 0.05,
                                                   "ingest_max_attempts": 3})


# --- chunking -----------------------------------------------------------------------------------


def test_markdown_chunks_follow_sections_and_carry_their_heading_path():
    chunks = chunk_document(GUIDE, "text/markdown", 1200, 150)
    assert [c.heading for c in chunks] == [
        "Acme handbook", "Acme handbook > Holidays", "Acme handbook > Expenses", "Acme handbook > Security",
    ]
    assert [c.index for c in chunks] == [0, 1, 2, 3]
    holidays = chunks[1].text
    assert holidays.startswith("Acme handbook > Holidays\n\nEvery employee gets twenty-five days")
    assert "Expenses" not in holidays and "##" not in holidays
    # deterministic
    assert chunk_document(GUIDE, "text/markdown", 1200, 150) == chunks


def test_markdown_heading_levels_nest_and_reset():
    text = "# A\n\none\n\n## B\n\ntwo\n\n### C\n\nthree\n\n## D\n\nfour\n\n# E\n\nfive\n"
    headings = [c.heading for c in chunk_document(text, "text/markdown", 500, 50)]
    assert headings == ["A", "A > B", "A > B > C", "A > D", "E"]


def test_code_fences_are_not_headings_and_stay_whole():
    text = "# Setup\n\n```sh\n# install it\n\npip install acme\n```\n\nDone.\n"
    chunks = chunk_document(text, "text/markdown", 500, 50)
    assert len(chunks) == 1
    assert chunks[0].heading == "Setup"
    assert "```sh\n# install it\n\npip install acme\n```" in chunks[0].text


def test_paragraphs_are_packed_up_to_the_limit():
    paragraphs = [f"Paragraph {i} " + "word " * 30 for i in range(10)]  # ~170 characters each
    chunks = chunk_document("\n\n".join(paragraphs), "text/plain", 400, 50)
    assert all(len(c.text) <= 400 for c in chunks)
    assert [c.heading for c in chunks] == [None] * len(chunks)
    # two paragraphs fit in a chunk, three do not; none is cut
    assert len(chunks) == 5
    assert all(c.text.count("Paragraph") == 2 for c in chunks)
    assert "\n\n".join(c.text for c in chunks) == "\n\n".join(p.strip() for p in paragraphs)


def test_long_paragraphs_split_at_sentences_with_overlap():
    sentences = [f"Sentence number {i} talks about topic {i}." for i in range(40)]
    paragraph = " ".join(sentences)
    pieces = split_long(paragraph, 200, 60)
    assert len(pieces) > 5 and all(len(p) <= 200 for p in pieces)
    for before, after in zip(pieces, pieces[1:], strict=False):
        assert after.endswith(".")  # cut at sentence ends
        first_sentence = after.split(". ")[0] + "."
        assert before.endswith(first_sentence)  # the overlap: the previous piece's last sentence
    # every sentence is kept, in order
    seen = [s for p in pieces for s in sentences if s in p]
    assert sorted(set(seen), key=sentences.index) == sentences


def test_text_without_sentences_is_cut_hard():
    blob = "".join(chr(ord("a") + i % 26) for i in range(1000))
    pieces = split_long(blob, 300, 50)
    assert len(pieces) >= 4 and all(len(p) <= 300 for p in pieces)
    # each piece (its overlap included) is a run of the text; together they cover all of it
    assert all(p.replace(" ", "") in blob for p in pieces)
    assert pieces[0] == blob[:249] and blob.endswith(pieces[-1].replace(" ", ""))
    assert sum(len(p.replace(" ", "")) for p in pieces) >= len(blob)
    words = " ".join(["alpha"] * 200)
    for piece in split_long(words, 300, 40):
        assert len(piece) <= 300 and not piece.startswith(" ") and "alph " not in piece + " "


def test_chunking_edge_cases():
    assert chunk_document("", "text/plain", 100, 10) == []
    assert chunk_document("\n\n  \n", "text/markdown", 100, 10) == []
    only_headings = chunk_document("# Title\n## Sub\n", "text/markdown", 100, 10)
    assert [c.text for c in only_headings] == ["# Title\n## Sub"]
    crlf = chunk_document("# T\r\n\r\nbody\r\n", "text/markdown", 100, 10)
    assert [(c.heading, c.text) for c in crlf] == [("T", "T\n\nbody")]
    with pytest.raises(ValueError, match="content type"):
        chunk_document("x", "application/pdf", 100, 10)


# --- ingestion (direct) -------------------------------------------------------------------------


def test_ingest_stores_chunks_as_org_document_memories(client: TestClient, org: Org, settings: Settings):
    doc_id = create_pending(settings, org.id, GUIDE)
    outcome = ingest(settings, org.id, doc_id)
    assert (outcome.status, outcome.chunks, outcome.attempts) == ("ready", 4, 1)
    rows = chunk_rows(settings, org.id, doc_id)
    assert len(rows) == 4
    assert {(r["kind"], r["scope"], r["document_id"], r["embedding_model"]) for r in rows} == {
        ("document", "org", doc_id, "offline:hash")
    }
    assert rows[1]["metadata"] == {"document_id": doc_id, "title": "doc", "chunk": 1,
                                   "heading": "Acme handbook > Holidays"}
    doc = org.client.get(f"/v1/knowledge/{doc_id}", headers=org.headers).json()
    assert (doc["status"], doc["chunks"], doc["embedding_model"], doc["error"]) == ("ready", 4, "offline:hash", None)

    # a repeated delivery changes nothing
    assert ingest(settings, org.id, doc_id).status == "gone"
    assert len(chunk_rows(settings, org.id, doc_id)) == 4


def test_recall_finds_the_matching_section(client: TestClient, org: Org, settings: Settings):
    doc_id = create_pending(settings, org.id, GUIDE)
    assert ingest(settings, org.id, doc_id).status == "ready"

    async def search(pool: AsyncPool) -> list[dict[str, Any]]:
        query = hash_embed("how many paid holiday days do employees get per year?")
        async with tenant_tx(pool, org.id) as conn:
            return await long_term.search(conn, query, "offline:hash",
                                          long_term.MemoryFilters(kinds=["document"]), limit=4)

    results = run_with_pool(settings, search)
    assert results[0]["document_id"] == doc_id
    assert results[0]["metadata"]["heading"] == "Acme handbook > Holidays"
    assert "twenty-five days of paid holiday" in results[0]["content"]
    assert results[0]["score"] > results[1]["score"]


def test_identical_paragraphs_in_two_documents_keep_their_own_chunks(client: TestClient, org: Org, settings: Settings):
    text = "The office opens at eight and closes at six."
    first, second = (create_pending(settings, org.id, text, "text/plain") for _ in range(2))
    assert ingest(settings, org.id, first).chunks == 1
    assert ingest(settings, org.id, second).chunks == 1
    (a,), (b,) = chunk_rows(settings, org.id, first), chunk_rows(settings, org.id, second)
    assert a["id"] != b["id"] and a["content"] == b["content"]
    # deleting one document leaves the other's chunk
    assert org.client.delete(f"/v1/knowledge/{first}", headers=org.headers).status_code == 204
    assert chunk_rows(settings, org.id, first) == []
    assert [r["id"] for r in chunk_rows(settings, org.id, second)] == [b["id"]]


def test_a_deleted_document_ends_ingestion_quietly(client: TestClient, org: Org, settings: Settings):
    doc_id = create_pending(settings, org.id, GUIDE)
    assert org.client.delete(f"/v1/knowledge/{doc_id}", headers=org.headers).status_code == 204
    assert ingest(settings, org.id, doc_id).status == "gone"
    assert ingest(settings, org.id, "doc_000000000000" + "0" * 16).status == "gone"


def test_embedding_failures_are_retried_then_fail(client: TestClient, org: Org, stack: StackUrls,
                                                   fast_settings: Settings):
    # a closed port: every embedding request fails to connect
    broken = fast_settings.model_copy(update={"models": fast_settings.models.model_copy(
        update={"openai_base_url": "http://127.0.0.1:9/v1", "max_retries": 0, "request_timeout_s": 2.0})})
    set_org_embedding_model(stack, org.id, "openai:test-embed")
    doc_id = create_pending(broken, org.id, GUIDE)
    first = ingest(broken, org.id, doc_id)
    assert (first.status, first.attempts) == ("retry", 1)
    assert first.retry_after_s == pytest.approx(0.01)
    doc = org.client.get(f"/v1/knowledge/{doc_id}", headers=org.headers).json()
    assert doc["status"] == "pending" and doc["error"]["code"] == "EMBEDDING_FAILED"
    second = ingest(broken, org.id, doc_id)
    assert (second.status, second.retry_after_s) == ("retry", pytest.approx(0.02))
    last = ingest(broken, org.id, doc_id)
    assert (last.status, last.attempts, last.retry_after_s) == ("failed", 3, None)
    doc = org.client.get(f"/v1/knowledge/{doc_id}", headers=org.headers).json()
    assert (doc["status"], doc["attempts"], doc["chunks"]) == ("failed", 3, 0)
    assert doc["error"]["code"] == "EMBEDDING_FAILED"
    assert "openai:test-embed" in doc["error"]["message"] and "3 times" in doc["error"]["message"]
    assert chunk_rows(broken, org.id, doc_id) == []


def test_an_unknown_embedding_model_fails_at_once(client: TestClient, org: Org, stack: StackUrls,
                                                   settings: Settings):
    set_org_embedding_model(stack, org.id, "nope:model")
    doc_id = create_pending(settings, org.id, "Some text.", "text/plain")
    outcome = ingest(settings, org.id, doc_id)
    assert (outcome.status, outcome.attempts) == ("failed", 1)
    doc = org.client.get(f"/v1/knowledge/{doc_id}", headers=org.headers).json()
    assert doc["status"] == "failed" and "unknown embedding model spec" in doc["error"]["message"]


# --- the API ------------------------------------------------------------------------------------


def test_create_list_get_delete(client: TestClient, org: Org, stack: StackUrls):
    r = post_doc(org, GUIDE, title="Handbook", content_type="text/markdown", metadata={"team": "hr"})
    assert r.status_code == 202, r.text
    doc = r.json()
    assert r.headers["location"] == f"/v1/knowledge/{doc['id']}"
    assert doc["id"].startswith("doc_")
    assert (doc["title"], doc["content_type"], doc["status"], doc["chunks"]) == ("Handbook", "text/markdown",
                                                                                 "pending", 0)
    assert doc["size_bytes"] == len(GUIDE.encode()) and doc["metadata"] == {"team": "hr"}
    assert "content" not in doc

    raw = org.client.post("/v1/knowledge", params={"title": "Notes"}, content="plain notes ünïcode".encode(),
                          headers=org.headers | {"Content-Type": "text/plain; charset=utf-8"})
    assert raw.status_code == 202, raw.text
    assert (raw.json()["title"], raw.json()["content_type"]) == ("Notes", "text/plain")
    untitled = org.client.post("/v1/knowledge", content=b"# Release notes\n\nv2 is out.",
                               headers=org.headers | {"Content-Type": "text/markdown"})
    assert untitled.status_code == 202 and untitled.json()["title"] == "Release notes"

    listed = org.client.get("/v1/knowledge", headers=org.headers).json()
    assert [d["id"] for d in listed["data"]] == [untitled.json()["id"], raw.json()["id"], doc["id"]]
    assert all("content" not in d and "content_preview" not in d for d in listed["data"])
    page1 = org.client.get("/v1/knowledge", params={"limit": 2}, headers=org.headers).json()
    page2 = org.client.get("/v1/knowledge", params={"limit": 2, "cursor": page1["next_cursor"]},
                           headers=org.headers).json()
    assert [d["id"] for d in page1["data"] + page2["data"]] == [d["id"] for d in listed["data"]]
    assert page2["next_cursor"] is None

    one = org.client.get(f"/v1/knowledge/{doc['id']}", headers=org.headers).json()
    assert one["content_preview"] == GUIDE[:500] and "content" not in one

    # audited, without the content
    with psycopg.connect(stack.database_url) as conn:
        actions = conn.execute("SELECT action, details FROM audit_logs WHERE org_id = %s AND target_id = %s",
                               (org.id, doc["id"])).fetchall()
    assert actions == [("knowledge.create", {"content_type": "text/markdown", "size_bytes": len(GUIDE.encode())})]

    assert org.client.delete(f"/v1/knowledge/{doc['id']}", headers=org.headers).status_code == 204
    error_of(org.client.get(f"/v1/knowledge/{doc['id']}", headers=org.headers), 404, "NOT_FOUND")
    error_of(org.client.delete(f"/v1/knowledge/{doc['id']}", headers=org.headers), 404, "NOT_FOUND")
    error_of(org.client.get("/v1/knowledge/not-an-id", headers=org.headers), 404, "NOT_FOUND")


def test_status_filter(client: TestClient, org: Org, settings: Settings):
    ready = create_pending(settings, org.id, "Ready text.", "text/plain")
    pending = create_pending(settings, org.id, "Pending text.", "text/plain")
    assert ingest(settings, org.id, ready).status == "ready"
    by_status = {s: [d["id"] for d in org.client.get("/v1/knowledge", params={"status": s},
                                                     headers=org.headers).json()["data"]]
                 for s in ("ready", "pending", "failed")}
    assert by_status == {"ready": [ready], "pending": [pending], "failed": []}
    error_of(org.client.get("/v1/knowledge", params={"status": "done"}, headers=org.headers), 422,
             "VALIDATION_FAILED")


def test_bad_input(client: TestClient, org: Org):
    error_of(post_doc(org, "   \n"), 422, "VALIDATION_FAILED")
    error_of(post_doc(org, "x", title=""), 422, "VALIDATION_FAILED")
    error_of(post_doc(org, "x", extra=1), 422, "VALIDATION_FAILED")
    error_of(post_doc(org, "x\u0000y"), 422, "VALIDATION_FAILED")
    error_of(post_doc(org, "x", content_type="application/pdf"), 415, "UNSUPPORTED_MEDIA_TYPE")
    error_of(org.client.post("/v1/knowledge", content=b"%PDF-1.4", headers=org.headers | {
        "Content-Type": "application/pdf"}), 415, "UNSUPPORTED_MEDIA_TYPE")
    error_of(org.client.post("/v1/knowledge", content=b"", headers=org.headers | {"Content-Type": "text/plain"}),
             422, "VALIDATION_FAILED")
    error_of(org.client.post("/v1/knowledge", content=b"\xff\xfe\xfa", headers=org.headers | {
        "Content-Type": "text/plain"}), 422, "VALIDATION_FAILED")
    error_of(org.client.post("/v1/knowledge", content=b"{", headers=org.headers | {
        "Content-Type": "application/json"}), 400, "BAD_REQUEST")
    assert org.client.get("/v1/knowledge", headers=org.headers).json()["data"] == []


def test_viewers_read_but_cannot_write(client: TestClient, org: Org):
    doc_id = post_doc(org, "Some facts.").json()["id"]
    viewer = {"Authorization": f"Bearer {org.key_with_role('viewer')}"}
    error_of(client.post("/v1/knowledge", json={"content": "x"}, headers=viewer), 403, "FORBIDDEN")
    error_of(client.delete(f"/v1/knowledge/{doc_id}", headers=viewer), 403, "FORBIDDEN")
    assert client.get(f"/v1/knowledge/{doc_id}", headers=viewer).status_code == 200
    assert [d["id"] for d in client.get("/v1/knowledge", headers=viewer).json()["data"]] == [doc_id]
    error_of(client.get("/v1/knowledge"), 401, "UNAUTHENTICATED")


def test_other_orgs_see_nothing(client: TestClient, org: Org, other_org: Org, settings: Settings):
    doc_id = create_pending(settings, org.id, GUIDE)  # no message: a running worker cannot race this test
    assert ingest(settings, org.id, doc_id).status == "ready"
    error_of(other_org.client.get(f"/v1/knowledge/{doc_id}", headers=other_org.headers), 404, "NOT_FOUND")
    error_of(other_org.client.delete(f"/v1/knowledge/{doc_id}", headers=other_org.headers), 404, "NOT_FOUND")
    assert other_org.client.get("/v1/knowledge", headers=other_org.headers).json()["data"] == []
    # org B's worker call for A's document finds nothing either
    assert ingest(settings, other_org.id, doc_id).status == "gone"
    assert chunk_rows(settings, other_org.id, doc_id) == []
    assert len(chunk_rows(settings, org.id, doc_id)) == 4


@pytest.fixture(scope="module")
def limited(stack: StackUrls, rsa_keys: RsaKeys) -> Iterator[Org]:
    """An API whose documents may be 1000 bytes."""
    settings = make_settings(stack, rsa_keys, memory={"max_document_bytes": 1000})
    with TestClient(create_app(settings)) as client:
        yield new_org(client, "limited")


def test_documents_over_the_limit_are_refused(limited: Org):
    org = limited
    error = error_of(post_doc(org, "é" * 501), 413, "PAYLOAD_TOO_LARGE")  # 1002 bytes in UTF-8
    assert error["details"] == {"max_bytes": 1000}
    raw = org.headers | {"Content-Type": "text/markdown"}
    error_of(org.client.post("/v1/knowledge", content=b"a" * 1001, headers=raw), 413, "PAYLOAD_TOO_LARGE")

    def stream() -> Iterator[bytes]:  # no Content-Length: refused while reading
        for _ in range(100):
            yield b"b" * 100

    error_of(org.client.post("/v1/knowledge", content=stream(), headers=raw), 413, "PAYLOAD_TOO_LARGE")
    assert post_doc(org, "a" * 1000).status_code == 202


def test_an_unreachable_broker_leaves_the_document_pending(stack: StackUrls, rsa_keys: RsaKeys, tmp_path: Path):
    settings = make_settings(stack, rsa_keys, redis={"url": "redis://127.0.0.1:9/0", "socket_timeout_s": 0.5})
    with TestClient(create_app(settings)) as client:
        org = new_org(client, "no broker")
        r = post_doc(org, "Kept for later.")
        assert r.status_code == 202, r.text
        assert r.headers["AgentOS-Deferred"] == "broker-unavailable"
        assert r.json()["status"] == "pending"
        doc = org.client.get(f"/v1/knowledge/{r.json()['id']}", headers=org.headers).json()
        assert doc["status"] == "pending"


# --- through a real worker ----------------------------------------------------------------------


def test_a_worker_ingests_a_posted_document(client: TestClient, org: Org, settings: Settings,
                                            stack: StackUrls, knowledge_worker: None):
    r = org.client.post("/v1/knowledge", params={"title": "Handbook"}, content=GUIDE.encode(),
                        headers=org.headers | {"Content-Type": "text/markdown"})
    assert r.status_code == 202, r.text
    assert "AgentOS-Deferred" not in r.headers
    doc = wait_for_status(org, r.json()["id"], {"ready", "failed"})
    assert (doc["status"], doc["chunks"], doc["attempts"], doc["embedding_model"]) == ("ready", 4, 1, "offline:hash")
    rows = chunk_rows(settings, org.id, doc["id"])
    assert len(rows) == 4 and {r["kind"] for r in rows} == {"document"}
    assert all(r["metadata"]["title"] == "Handbook" for r in rows)

    assert org.client.delete(f"/v1/knowledge/{doc['id']}", headers=org.headers).status_code == 204
    assert all_chunk_count(stack, doc["id"]) == 0


def test_a_worker_retries_an_embedding_outage_then_fails_the_document(
    client: TestClient, org: Org, settings: Settings, stack: StackUrls, openai_server: OpenAIServer,
    knowledge_worker: None,
):
    set_org_embedding_model(stack, org.id, "openai:test-embed")
    max_attempts = settings.memory.ingest_max_attempts
    # The workers' OpenAI client tries each request twice (AGENTOS_MODELS__MAX_RETRIES=1): every
    # request of every attempt fails.
    requests_before = len(openai_server.embedding_requests)
    openai_server.fail_next(503, times=2 * max_attempts, message="embeddings are down")
    r = post_doc(org, GUIDE, content_type="text/markdown")
    assert r.status_code == 202, r.text
    # conftest's worker (default backoff) may take it too: allow for its 2+4+8+16 s
    doc = wait_for_status(org, r.json()["id"], {"ready", "failed"}, timeout_s=90)
    assert (doc["status"], doc["attempts"], doc["chunks"]) == ("failed", max_attempts, 0)
    assert doc["error"]["code"] == "EMBEDDING_FAILED"
    message = doc["error"]["message"]
    assert "openai:test-embed" in message and "HTTP 503" in message and f"{max_attempts} times" in message
    assert "Bearer" not in message and "embeddings are down" not in message
    assert chunk_rows(settings, org.id, doc["id"]) == []
    assert len(openai_server.embedding_requests) - requests_before == 2 * max_attempts

    # the outage is over: the same model embeds the next document
    ok = wait_for_status(org, post_doc(org, GUIDE, content_type="text/markdown").json()["id"], {"ready", "failed"})
    assert (ok["status"], ok["attempts"], ok["chunks"], ok["embedding_model"]) == ("ready", 1, 4, "openai:test-embed")
    assert {r["dims"] for r in chunk_rows(settings, org.id, ok["id"])} == {EMBEDDING_DIMS}


def test_the_watchdog_resends_a_document_whose_message_was_lost(
    client: TestClient, org: Org, settings: Settings, stack: StackUrls, knowledge_worker: None
):
    doc_id = create_pending(settings, org.id, GUIDE)  # stored, but never sent to the workers
    recent = create_pending(settings, org.id, "Just added.", "text/plain")
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("UPDATE knowledge_documents SET updated_at = now() - interval '1 hour' WHERE id = %s",
                     (doc_id,))
    report = asyncio.run(sweep_once(settings))
    assert doc_id in report.documents_resent and recent not in report.documents_resent
    doc = wait_for_status(org, doc_id, {"ready", "failed"})
    assert (doc["status"], doc["attempts"], doc["chunks"]) == ("ready", 1, 4)
    assert wait_for_status(org, recent, {"pending", "ready"})["status"] == "pending"
