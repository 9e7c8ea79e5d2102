"""Long-term memory through the API (real Postgres + pgvector, the offline embedder): write, dedup
(also under concurrent writes), search ordering, scope filters, expiry, deletion, bad input, and
isolation between orgs."""

from __future__ import annotations

import asyncio
import math
import threading
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from core.settings import Settings
from memory.embeddings import hash_embed, resolve_embedder
from tests.helpers import Org

FACTS = [
    "The user prefers dark mode in the code editor",
    "Paris is the capital of France",
    "Deployments run on Fly.io in the Amsterdam region",
    "The quarterly report is due on the first Monday of April",
]


def remember(org: Org, content: str, **fields: Any) -> Any:
    return org.client.post("/v1/memories", json={"content": content} | fields, headers=org.headers)


def created(org: Org, content: str, **fields: Any) -> dict[str, Any]:
    r = remember(org, content, **fields)
    assert r.status_code == 201, r.text
    return dict(r.json())


def search(org: Org, query: str, **params: Any) -> dict[str, Any]:
    r = org.client.get("/v1/memories", params={"query": query} | params, headers=org.headers)
    assert r.status_code == 200, r.text
    return dict(r.json())


def listed(org: Org, **params: Any) -> list[dict[str, Any]]:
    r = org.client.get("/v1/memories", params=params, headers=org.headers)
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


def count_rows(stack: Any, org_id: str) -> int:
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT count(*) FROM memories WHERE org_id = %s", (org_id,)).fetchone()
    assert row is not None
    return int(row[0])


# --- the offline embedder -----------------------------------------------------------------------


def test_offline_embedder_is_deterministic_and_normalised(settings: Settings):
    embedder = resolve_embedder("offline:hash", settings)
    assert (embedder.model, embedder.dims) == ("offline:hash", 384)
    a, b, c = asyncio.run(embedder.embed(["Dark mode, please", "Dark mode, please", "Paris in spring"]))
    assert a == b and a != c
    assert len(a) == 384
    for vec in (a, c, hash_embed(""), hash_embed("!!!")):
        assert math.isclose(math.sqrt(sum(v * v for v in vec)), 1.0, rel_tol=1e-9)
    # similar texts are nearer than unrelated ones
    dot = lambda x, y: sum(p * q for p, q in zip(x, y, strict=True))  # noqa: E731
    assert dot(a, hash_embed("please use dark mode")) > dot(a, c)


@pytest.mark.parametrize("spec", ["nope:x", "offline:other", "openai:", ""])
def test_unknown_embedding_specs_are_refused(settings: Settings, spec: str):
    with pytest.raises(ValueError, match="embedding"):
        resolve_embedder(spec, settings)


# --- create, list, search -----------------------------------------------------------------------


def test_create_list_and_search_ordering(client: TestClient, org: Org, stack: Any):
    rows = [created(org, fact, kind="fact") for fact in FACTS]
    first = rows[0]
    assert first["id"].startswith("mem_") and first["scope"] == "org" and first["kind"] == "fact"
    assert first["embedding_model"] == "offline:hash" and first["dims"] == 384
    assert "embedding" not in first and "content_hash" not in first
    assert [m["id"] for m in listed(org)] == [r["id"] for r in reversed(rows)]
    assert client.get(f"/v1/memories/{first['id']}", headers=org.headers).json() == first

    for i, query in enumerate(["which editor theme does the user prefer? dark mode",
                               "what is the capital city of France",
                               "where do deployments run? fly.io",
                               "when is the quarterly report due"]):
        found = search(org, query)
        assert "note" not in found and found["next_cursor"] is None
        data = found["data"]
        assert data[0]["id"] == rows[i]["id"], (query, data)
        scores = [d["score"] for d in data]
        assert scores == sorted(scores, reverse=True) and scores[0] > scores[1]
    exact = search(org, FACTS[1], limit=2)["data"]
    assert len(exact) == 2 and exact[0]["id"] == rows[1]["id"] and exact[0]["score"] == pytest.approx(1.0)
    # writes are audited
    with psycopg.connect(stack.database_url) as conn:
        actions = [r[0] for r in conn.execute(
            "SELECT action FROM audit_logs WHERE org_id = %s AND target_type = 'memory'", (org.id,)).fetchall()]
    assert actions == ["memory.create"] * len(FACTS)


def test_list_paginates_and_filters_by_kind(org: Org):
    ids = [created(org, f"note number {i}", kind="summary" if i % 2 else "fact")["id"] for i in range(5)]
    page1 = org.client.get("/v1/memories", params={"limit": 2}, headers=org.headers).json()
    page2 = org.client.get("/v1/memories", params={"limit": 2, "cursor": page1["next_cursor"]},
                           headers=org.headers).json()
    assert [m["id"] for m in page1["data"] + page2["data"]] == ids[::-1][:4]
    assert {m["id"] for m in listed(org, kind="summary")} == {ids[1], ids[3]}
    assert {m["id"] for m in search(org, "note number", kind="fact")["data"]} == {ids[0], ids[2], ids[4]}


def test_scope_filters_keep_users_apart(org: Org):
    agent = org.create_agent()
    a = created(org, "I like my coffee black", scope="user", user_id="alice", kind="preference",
                agent_id=agent["id"])
    b = created(org, "I like my coffee with oat milk", scope="user", user_id="bob", kind="preference")
    shared = created(org, "Coffee machines are on floor 3", scope="agent", agent_id=agent["id"])
    assert [m["id"] for m in search(org, "how do I like my coffee", user="bob")["data"]] == [b["id"]]
    assert [m["id"] for m in search(org, "how do I like my coffee", user="alice")["data"]] == [a["id"]]
    assert [m["id"] for m in listed(org, user="bob")] == [b["id"]]
    assert {m["id"] for m in listed(org, agent_id=agent["id"])} == {a["id"], shared["id"]}
    assert [m["id"] for m in listed(org, scope="agent")] == [shared["id"]]
    assert search(org, "coffee", user="carol")["data"] == []


# --- dedup --------------------------------------------------------------------------------------


def test_the_same_fact_twice_is_one_row(org: Org, stack: Any):
    first = created(org, "The user's timezone is Europe/Berlin", scope="user", user_id="u1", metadata={"a": 1})
    again = remember(org, "The user's timezone is Europe/Berlin", scope="user", user_id="u1", metadata={"b": 2})
    assert again.status_code == 200, again.text
    assert again.headers["AgentOS-Deduplicated"] == "true"
    assert again.json()["id"] == first["id"] and again.json()["metadata"] == {"a": 1, "b": 2}
    # another user's copy of the same text is another item
    other = remember(org, "The user's timezone is Europe/Berlin", scope="user", user_id="u2")
    assert other.status_code == 201 and "AgentOS-Deduplicated" not in other.headers
    assert count_rows(stack, org.id) == 2


def test_concurrent_writes_of_one_fact_do_not_duplicate(org: Org, stack: Any):
    n = 10
    barrier = threading.Barrier(n)
    responses: list[Any] = [None] * n

    def post(i: int) -> None:
        barrier.wait()
        responses[i] = remember(org, "Concurrent fact: the build uses Python 3.11", scope="org")

    threads = [threading.Thread(target=post, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert all(r is not None for r in responses)
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * (n - 1) + [201], [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 1
    assert count_rows(stack, org.id) == 1


# --- expiry and deletion ------------------------------------------------------------------------


def test_expired_items_are_not_returned(org: Org, stack: Any):
    soon = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    gone = created(org, "A temporary discount code is SPRING24", expires_at=soon)
    kept = created(org, "The discount policy allows 10 percent at most")
    assert {m["id"] for m in listed(org)} == {gone["id"], kept["id"]}
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("UPDATE memories SET expires_at = now() - interval '1 second' WHERE id = %s", (gone["id"],))
    assert [m["id"] for m in listed(org)] == [kept["id"]]
    assert [m["id"] for m in search(org, "temporary discount code SPRING24")["data"]] == [kept["id"]]
    assert org.client.get(f"/v1/memories/{gone['id']}", headers=org.headers).status_code == 404
    # an expiry in the past is refused
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    assert remember(org, "x", expires_at=past).status_code == 422


def test_delete_one(org: Org, stack: Any):
    a = created(org, "Delete me")
    b = created(org, "Keep me")
    assert org.client.delete(f"/v1/memories/{a['id']}", headers=org.headers).status_code == 204
    assert org.client.get(f"/v1/memories/{a['id']}", headers=org.headers).status_code == 404
    assert org.client.delete(f"/v1/memories/{a['id']}", headers=org.headers).status_code == 404
    assert [m["id"] for m in listed(org)] == [b["id"]]
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT actor FROM audit_logs WHERE org_id = %s AND action = 'memory.delete' "
                           "AND target_id = %s", (org.id, a["id"])).fetchone()
    assert row is not None


def test_delete_all_of_one_user(org: Org, stack: Any):
    for i in range(3):
        created(org, f"Alice's memory {i}", scope="user", user_id="alice")
    bob = created(org, "Bob's memory", scope="user", user_id="bob")
    general = created(org, "An org-wide memory")
    member = {"Authorization": f"Bearer {org.key_with_role('member')}"}
    assert org.client.delete("/v1/memories", params={"user": "alice"}, headers=member).status_code == 403
    assert org.client.delete("/v1/memories", headers=org.headers).status_code == 422
    r = org.client.delete("/v1/memories", params={"user": "alice"}, headers=org.headers)
    assert r.status_code == 200 and r.json() == {"deleted": 3}
    assert {m["id"] for m in listed(org)} == {bob["id"], general["id"]}
    assert org.client.delete("/v1/memories", params={"user": "alice"}, headers=org.headers).json() == {"deleted": 0}
    with psycopg.connect(stack.database_url) as conn:
        row = conn.execute("SELECT details FROM audit_logs WHERE org_id = %s AND action = 'memory.delete_user' "
                           "ORDER BY id LIMIT 1", (org.id,)).fetchone()
    assert row is not None and row[0] == {"deleted": 3}


# --- bad input and roles ------------------------------------------------------------------------


def test_bad_input(org: Org, settings: Settings, stack: Any):
    limit = settings.memory.max_content_chars
    r = remember(org, "x" * (limit + 1))
    assert r.status_code == 413 and r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE", r.text
    assert remember(org, "x" * limit).status_code == 201
    assert remember(org, "hello", scope="galaxy").status_code == 422
    assert remember(org, "hello", kind="rumour").status_code == 422
    for scope, field in (("agent", "agent_id"), ("user", "user_id"), ("session", "session_id")):
        r = remember(org, "hello", scope=scope)
        assert r.status_code == 422 and r.json()["error"]["details"]["fields"][0]["field"] == field, r.text
    assert remember(org, "   ").status_code == 422
    for agent_id in ("agt_0000000000000000000000000000", "not-an-id"):
        r = remember(org, "hello", scope="agent", agent_id=agent_id)
        assert r.status_code == 404 and r.json()["error"]["code"] == "NOT_FOUND", r.text
    r = remember(org, "hello", scope="session", session_id="ses_0000000000000000000000000000")
    assert r.status_code == 404
    assert org.client.get("/v1/memories", params={"scope": "galaxy"}, headers=org.headers).status_code == 422
    assert org.client.get("/v1/memories", params={"kind": "rumour"}, headers=org.headers).status_code == 422
    assert org.client.get("/v1/memories/mem_0000000000000000000000000000", headers=org.headers).status_code == 404
    assert org.client.get("/v1/memories/garbage", headers=org.headers).status_code == 404
    assert count_rows(stack, org.id) == 1  # only the one at the limit


def test_roles(org: Org):
    viewer = {"Authorization": f"Bearer {org.key_with_role('viewer')}"}
    member = {"Authorization": f"Bearer {org.key_with_role('member')}"}
    assert org.client.post("/v1/memories", json={"content": "v"}, headers=viewer).status_code == 403
    r = org.client.post("/v1/memories", json={"content": "m"}, headers=member)
    assert r.status_code == 201
    assert org.client.get("/v1/memories", params={"query": "m"}, headers=viewer).status_code == 200
    assert org.client.delete(f"/v1/memories/{r.json()['id']}", headers=viewer).status_code == 403
    assert org.client.get("/v1/memories").status_code == 401


def test_an_org_without_items_of_the_model_gets_a_note(org: Org, stack: Any):
    found = search(org, "anything at all")
    assert found["data"] == [] and "no memories embedded with 'offline:hash'" in found["note"]
    created(org, "Something to find")
    assert "note" not in search(org, "anything at all")
    # items of another model are never compared with the offline model's queries
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("UPDATE memories SET embedding_model = 'openai:other' WHERE org_id = %s", (org.id,))
    found = search(org, "Something to find")
    assert found["data"] == [] and "note" in found


# --- isolation ----------------------------------------------------------------------------------


def test_org_b_never_sees_org_a_memories(org: Org, other_org: Org):
    secret = "Org A's launch code is 7-4-1-9"
    a_row = created(org, secret, scope="user", user_id="shared-user")
    created(other_org, "Org B's own note", scope="user", user_id="shared-user")
    b_ids = {m["id"] for m in listed(other_org)}
    assert a_row["id"] not in b_ids and len(b_ids) == 1
    for params in ({}, {"user": "shared-user"}, {"scope": "user"}, {"limit": 200}):
        assert a_row["id"] not in {m["id"] for m in search(other_org, secret, **params)["data"]}
        assert a_row["id"] not in {m["id"] for m in listed(other_org, **params)}
    b = other_org.headers
    assert other_org.client.get(f"/v1/memories/{a_row['id']}", headers=b).status_code == 404
    assert other_org.client.delete(f"/v1/memories/{a_row['id']}", headers=b).status_code == 404
    r = other_org.client.delete("/v1/memories", params={"user": "shared-user"}, headers=b)
    assert r.json() == {"deleted": 1}
    # B writing A's exact content makes B's own item, never returns A's row
    mine = remember(other_org, secret, scope="user", user_id="shared-user")
    assert mine.status_code == 201 and mine.json()["id"] != a_row["id"]
    # A's item is untouched by all of it
    assert org.client.get(f"/v1/memories/{a_row['id']}", headers=org.headers).json() == a_row
    assert search(org, secret)["data"][0]["id"] == a_row["id"]
