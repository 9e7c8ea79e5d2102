"""Moving an org's memories to another embedding model (`memory.reembed`, `agentos memory reembed`),
against real Postgres and the test OpenAI-compatible server; the `openai:` embedder itself; and the
`local:` spec without its optional extra."""

from __future__ import annotations

import asyncio
import importlib.util
import math
import socket
from pathlib import Path
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient
from typer.testing import CliRunner

from agentos.cli import app
from core.db import open_pool
from core.settings import Settings
from core.tenancy import tenant_tx
from memory.embeddings import hash_embed, org_embedding_spec, resolve_embedder
from memory.long_term import MemoryItem
from memory.reembed import ReembedError, ReembedProgress, reembed
from memory.store import PostgresMemoryStore
from tests.helpers import Org, new_org
from tests.openai_server import EMBEDDING_DIMS, OpenAIServer

TARGET = "openai:test-embed"
FACTS = [
    "The user prefers dark mode in the code editor",
    "Paris is the capital of France",
    "Deployments run on Fly.io in the Amsterdam region",
    "The quarterly report is due on the first Monday of April",
    "Standup is at 9:30 every weekday",
]


def openai_settings(settings: Settings, base_url: str, **memory: Any) -> Settings:
    models = settings.models.model_copy(update={"openai_base_url": base_url, "max_retries": 0})
    return settings.model_copy(update={"models": models, "memory": settings.memory.model_copy(update=memory)})


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def remember_all(org: Org, facts: list[str]) -> list[str]:
    ids = []
    for fact in facts:
        r = org.client.post("/v1/memories", json={"content": fact}, headers=org.headers)
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    return ids


def models_of(stack: Any, org_id: str) -> dict[str, tuple[str, int]]:
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute("SELECT id, embedding_model, dims FROM memories WHERE org_id = %s", (org_id,)).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def staged_of(stack: Any, org_id: str) -> dict[str, tuple[str, int]]:
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute("SELECT memory_id, embedding_model, dims FROM memory_staged_embeddings WHERE org_id = %s",
                            (org_id,)).fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}


def org_setting(stack: Any, org_id: str) -> str | None:
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT settings->>'embedding_model' FROM orgs WHERE id = %s", (org_id,)).fetchone()
    assert row is not None
    return None if row[0] is None else str(row[0])


async def run_reembed(settings: Settings, org_id: str, **kwargs: Any) -> tuple[ReembedProgress, list[ReembedProgress]]:
    seen: list[ReembedProgress] = []
    user_progress = kwargs.pop("progress", None)

    def progress(p: ReembedProgress) -> None:
        seen.append(ReembedProgress(p.total, p.done, p.merged, p.skipped))
        if user_progress:
            user_progress(p)

    pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 2}))
    try:
        counts = await reembed(pool, settings, org_id, TARGET, progress=progress, **kwargs)
    finally:
        await pool.close()
    return counts, seen


# --- the openai: embedder -----------------------------------------------------------------------


def test_openai_embedder_learns_dims_from_the_first_reply(settings: Settings, openai_server: OpenAIServer):
    embedder = resolve_embedder(TARGET, openai_settings(settings, openai_server.base_url))
    assert (embedder.model, embedder.dims) == (TARGET, 0)
    vectors = asyncio.run(embedder.embed(["hello world", "Paris in spring"]))
    assert embedder.dims == EMBEDDING_DIMS and [len(v) for v in vectors] == [EMBEDDING_DIMS] * 2
    for got, text in zip(vectors, ["hello world", "Paris in spring"], strict=True):
        assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(got, hash_embed(text, EMBEDDING_DIMS),
                                                                     strict=True))
    assert openai_server.embedding_requests[-1]["model"] == "test-embed"
    # a configured dimension is asked for, and known before any reply
    sized = resolve_embedder(TARGET, openai_settings(settings, openai_server.base_url, embedding_dims=16))
    assert sized.dims == 16
    assert [len(v) for v in asyncio.run(sized.embed(["x"]))] == [16]
    assert openai_server.embedding_requests[-1]["dimensions"] == 16


def test_openai_embedder_on_a_closed_port_fails_readably(settings: Settings):
    embedder = resolve_embedder(TARGET, openai_settings(settings, closed_port_url()))
    with pytest.raises(Exception, match="[Cc]onnection"):
        asyncio.run(embedder.embed(["hello"]))


def test_local_spec_without_the_extra_is_a_clear_error(settings: Settings):
    if importlib.util.find_spec("sentence_transformers") is not None:
        pytest.skip("sentence-transformers is installed; this test checks the message without it")
    with pytest.raises(ValueError, match=r"pip install 'agentos\[local-embeddings\]'"):
        resolve_embedder("local:all-MiniLM-L6-v2", settings)
    with pytest.raises(ValueError, match="needs a model name"):
        resolve_embedder("local:", settings)


# --- reembed ------------------------------------------------------------------------------------


def test_reembed_moves_one_org_to_the_new_model(client: TestClient, settings: Settings, stack: Any,
                                                openai_server: OpenAIServer):
    a, b = new_org(client, "reembed A"), new_org(client, "reembed B")
    a_ids = remember_all(a, FACTS)
    b_ids = remember_all(b, FACTS[:2])
    target_settings = openai_settings(settings, openai_server.base_url)

    async def already_on_target() -> str:
        # the same fact as a_ids[1], already stored under the target model: the old one merges into it
        embedder = resolve_embedder(TARGET, target_settings)  # one per event loop: its HTTP client is bound to it
        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
        try:
            vec = (await embedder.embed([FACTS[1]]))[0]
            row, created = await PostgresMemoryStore(pool).remember(a.id, MemoryItem(FACTS[1]), vec, TARGET)
            assert created
            return str(row["id"])
        finally:
            await pool.close()

    survivor = asyncio.run(already_on_target())
    counts, seen = asyncio.run(run_reembed(target_settings, a.id, batch=2))
    assert (counts.total, counts.done, counts.merged, counts.skipped) == (5, 4, 1, 0)
    # start, after each batch of 2 (staged beside the items), then the switch
    assert [(p.done + p.merged) for p in seen] == [0, 2, 4, 5, 5]

    moved = models_of(stack, a.id)
    assert set(moved) == (set(a_ids) - {a_ids[1]}) | {survivor}
    assert set(moved.values()) == {(TARGET, EMBEDDING_DIMS)}
    assert org_setting(stack, a.id) == TARGET
    # org B is untouched
    assert set(models_of(stack, b.id).values()) == {("offline:hash", 384)} and len(models_of(stack, b.id)) == 2
    assert org_setting(stack, b.id) is None

    async def search_and_spec() -> tuple[list[list[str]], str, str]:
        embedder = resolve_embedder(TARGET, target_settings)
        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
        try:
            store = PostgresMemoryStore(pool)
            found = []
            for fact in FACTS:
                vec = (await embedder.embed([fact]))[0]
                found.append([r["id"] for r in await store.search(a.id, vec, TARGET, limit=3)])
            async with tenant_tx(pool, a.id) as conn:
                spec_a = await org_embedding_spec(conn, "offline:hash")
            async with tenant_tx(pool, b.id) as conn:
                spec_b = await org_embedding_spec(conn, "offline:hash")
            return found, spec_a, spec_b
        finally:
            await pool.close()

    found, spec_a, spec_b = asyncio.run(search_and_spec())
    expected_first = [a_ids[0], survivor, *a_ids[2:]]
    assert [ids[0] for ids in found] == expected_first
    assert (spec_a, spec_b) == (TARGET, "offline:hash")
    assert b_ids  # (B's items were checked above)

    # running it again changes nothing
    before = len(openai_server.embedding_requests)
    again, _ = asyncio.run(run_reembed(target_settings, a.id, batch=2))
    assert (again.total, again.done, again.merged, again.skipped) == (0, 0, 0, 0)
    assert len(openai_server.embedding_requests) == before
    assert models_of(stack, a.id) == moved
    assert staged_of(stack, a.id) == {}  # nothing left beside the items


def test_searches_find_every_item_while_the_move_is_under_way(client: TestClient, settings: Settings, stack: Any,
                                                              openai_server: OpenAIServer):
    # Issue #22: the org keeps searching its current model until every item has its new embedding,
    # then switches at once; moving items one batch at a time made a search miss those already moved.
    org = new_org(client, "reembed never miss")
    ids = remember_all(org, FACTS)
    target_settings = openai_settings(settings, openai_server.base_url)

    def search_all() -> tuple[list[str], str]:
        found, models = [], set()
        for fact in FACTS:
            r = org.client.get("/v1/memories", params={"query": fact, "limit": 1}, headers=org.headers)
            assert r.status_code == 200, r.text
            found += [item["id"] for item in r.json()["data"]]
            models.add(r.json()["embedding_model"])
        assert len(models) == 1
        return found, models.pop()

    mid_move: list[tuple[list[str], str]] = []

    class PausingEmbedder:
        """The target model; before each batch after the first, a user searches the org."""

        def __init__(self) -> None:
            self.inner = resolve_embedder(TARGET, target_settings)
            self.model, self.calls = self.inner.model, 0

        @property
        def dims(self) -> int:
            return self.inner.dims

        async def embed(self, texts: list[str]) -> list[list[float]]:
            self.calls += 1
            if self.calls > 1:  # the earlier batches are written
                mid_move.append(search_all())
            return await self.inner.embed(texts)

    counts, _ = asyncio.run(run_reembed(target_settings, org.id, batch=2, embedder=PausingEmbedder()))
    assert (counts.total, counts.done, counts.merged, counts.skipped) == (5, 5, 0, 0)
    assert len(mid_move) == 2  # between batches 1 and 2, and 2 and 3
    for found, model in mid_move:
        assert (found, model) == (ids, "offline:hash")  # every item, each the best match for its own text

    async def search_after() -> list[str]:  # after the switch: every item, on the new model
        embedder = resolve_embedder(TARGET, target_settings)
        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
        try:
            store = PostgresMemoryStore(pool)
            vectors = await embedder.embed(FACTS)
            return [str(r["id"]) for v in vectors for r in await store.search(org.id, v, TARGET, limit=1)]
        finally:
            await pool.close()

    assert asyncio.run(search_after()) == ids and org_setting(stack, org.id) == TARGET
    assert set(models_of(stack, org.id).values()) == {(TARGET, EMBEDDING_DIMS)} and staged_of(stack, org.id) == {}


def test_items_written_during_the_move_and_copies_of_a_third_model_move_too(
        client: TestClient, settings: Settings, stack: Any, openai_server: OpenAIServer):
    org = new_org(client, "reembed late items")
    ids = remember_all(org, FACTS[:3])
    target_settings = openai_settings(settings, openai_server.base_url)

    async def third_model_copy() -> None:  # FACTS[0] again, embedded by a model the org no longer uses
        pool = await open_pool(settings.database.model_copy(update={"pool_min": 1, "pool_max": 1}))
        try:
            _, created = await PostgresMemoryStore(pool).remember(org.id, MemoryItem(FACTS[0]), [1.0, 0.0],
                                                                  "openai:retired")
            assert created
        finally:
            await pool.close()

    asyncio.run(third_model_copy())
    late = "mem_00000000000000000000000000"  # before every id: the scan has passed it

    def write_behind_the_scan(p: ReembedProgress) -> None:
        if p.done == 4 and not p.switched:  # the last batch is staged: a writer adds an item on the old model
            with psycopg.connect(stack.database_url) as conn:
                conn.execute("INSERT INTO memories (id, org_id, scope, kind, content, content_hash, embedding, "
                             "embedding_model, dims) SELECT %s, org_id, scope, kind, %s, md5(%s), embedding, "
                             "embedding_model, dims FROM memories WHERE id = %s",
                             (late, FACTS[4], FACTS[4], ids[1]))
        if p.switched and not at_switch:
            at_switch.update(models_of(stack, org.id))

    at_switch: dict[str, tuple[str, int]] = {}
    counts, _ = asyncio.run(run_reembed(target_settings, org.id, batch=10, progress=write_behind_the_scan))
    # the switch found the late item without a new embedding, so it was staged first; the third
    # model's copy of FACTS[0] merged into the offline one
    assert (counts.total, counts.done, counts.merged, counts.skipped) == (4, 4, 1, 0)
    models = models_of(stack, org.id)
    assert set(models) == {*ids, late} and set(models.values()) == {(TARGET, EMBEDDING_DIMS)}
    assert at_switch == models  # moved by the switch itself, not after it
    assert staged_of(stack, org.id) == {}


def test_reembed_resumes_after_the_embedder_fails(client: TestClient, settings: Settings, stack: Any,
                                                  openai_server: OpenAIServer):
    org = new_org(client, "reembed resume")
    remember_all(org, FACTS)
    target_settings = openai_settings(settings, openai_server.base_url)

    def fail_after_first_batch(p: ReembedProgress) -> None:
        if p.done == 2:
            openai_server.fail_next(500, message="the embedding backend fell over")

    with pytest.raises(ReembedError, match="openai:test-embed.*fell over"):
        asyncio.run(run_reembed(target_settings, org.id, batch=2, progress=fail_after_first_batch))
    # every item still on the old model, which the org still searches; the first batch's new
    # embeddings are kept beside them
    assert set(models_of(stack, org.id).values()) == {("offline:hash", 384)}
    assert sorted(staged_of(stack, org.id).values()) == [(TARGET, EMBEDDING_DIMS)] * 2
    assert org_setting(stack, org.id) is None  # the org moves only once every item has

    before = len(openai_server.embedding_requests)
    counts, seen = asyncio.run(run_reembed(target_settings, org.id, batch=2))
    assert len(openai_server.embedding_requests) - before == 2  # only the 3 items without one: 2 batches
    assert (counts.total, counts.done, counts.merged) == (5, 5, 0)
    assert seen[0].done == 2  # the bar starts where the failed run stopped
    assert set(models_of(stack, org.id).values()) == {(TARGET, EMBEDDING_DIMS)}
    assert org_setting(stack, org.id) == TARGET and staged_of(stack, org.id) == {}


def test_reembed_refuses_an_unknown_org_and_a_bad_batch(settings: Settings, openai_server: OpenAIServer):
    target_settings = openai_settings(settings, openai_server.base_url)
    with pytest.raises(ValueError, match="no organisation"):
        asyncio.run(run_reembed(target_settings, "org_0000000000000000000000000000"))
    with pytest.raises(ValueError, match="batch"):
        asyncio.run(run_reembed(target_settings, "org_0000000000000000000000000000", batch=0))


# --- the command --------------------------------------------------------------------------------


def cli(stack: Any, tmp_path: Path, base_url: str, *args: str) -> Any:
    env = {"AGENTOS_DATABASE_URL": stack.database_url, "AGENTOS_REDIS_URL": stack.redis_url, "AGENTOS_ENV": "test",
           "AGENTOS_MODELS__OPENAI_BASE_URL": base_url, "AGENTOS_MODELS__MAX_RETRIES": "0"}
    return CliRunner().invoke(app, ["memory", "reembed", *args, "--data-dir", str(tmp_path)], env=env)


def test_the_command_reembeds_and_reports(client: TestClient, stack: Any, tmp_path: Path,
                                          openai_server: OpenAIServer):
    org = new_org(client, "reembed cli")
    remember_all(org, FACTS[:3])
    result = cli(stack, tmp_path, openai_server.base_url, "--org", org.id, "--model", TARGET, "--batch", "2")
    assert result.exit_code == 0, result.output
    assert f"3 re-embedded, 0 merged into an existing item, 0 skipped; its embedding model is now {TARGET}" in (
        " ".join(result.output.split()))
    assert set(models_of(stack, org.id).values()) == {(TARGET, EMBEDDING_DIMS)}


def test_the_command_fails_readably(client: TestClient, stack: Any, tmp_path: Path, openai_server: OpenAIServer):
    org = new_org(client, "reembed cli errors")
    remember_all(org, FACTS[:2])
    cases = [
        (["--model", "nope:x"], 2, "unknown embedding model spec 'nope:x'"),
        (["--model", "local:some-model"], 2, "agentos[local-embeddings]"),
        (["--model", TARGET, "--org", "org_0000000000000000000000000000"], 2, "no organisation"),
    ]
    for args, code, message in cases:
        full = ["--org", org.id, *args] if "--org" not in args else args
        result = cli(stack, tmp_path, openai_server.base_url, *full)
        assert result.exit_code == code, (args, result.output)
        assert message in " ".join(result.output.split()) and "Traceback" not in result.output, result.output
    # the embedding server is down: non-zero, a readable message, nothing changed
    result = cli(stack, tmp_path, closed_port_url(), "--org", org.id, "--model", TARGET)
    assert result.exit_code == 1, result.output
    output = " ".join(result.output.split())
    assert f"the embedding model '{TARGET}' failed: APIConnectionError" in output, output
    assert "run the command again" in output and "Traceback" not in result.output
    assert set(models_of(stack, org.id).values()) == {("offline:hash", 384)}
