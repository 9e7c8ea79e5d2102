"""Memory in runs, end to end through the API and a real worker with the offline model:
`remember`, recall across sessions of one end user (and never another user's or org's), the
session window within its token budget, the running summary stored and recalled, rebuild after a
Redis miss, scratch state dropped, and recall degrading with a warning when embeddings fail."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import redis
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from core.tenancy import run_scratch_key, session_window_key
from memory.short_term import estimate_tokens
from tests.helpers import Org
from tests.openai_server import OpenAIServer
from tests.sse import read_events

pytestmark = pytest.mark.usefixtures("worker")

MEMORY_SKILLS = ["remember", "recall"]


@pytest.fixture
def redis_client(stack: StackUrls) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(stack.redis_url)
    yield client
    client.close()


def run(org: Org, session_id: str, text: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start a run, read its events to the end, return (finished run, events)."""
    r = org.client.post(f"/v1/sessions/{session_id}/runs", json={"input": text}, headers=org.headers)
    assert r.status_code == 202, r.text
    run_id = r.json()["id"]
    events = read_events(org.client, f"/v1/runs/{run_id}/events", org.headers)
    r = org.client.get(f"/v1/runs/{run_id}", headers=org.headers)
    assert r.status_code == 200, r.text
    return dict(r.json()), events


def answer(org: Org, session_id: str, text: str) -> str:
    finished, _ = run(org, session_id, text)
    assert finished["status"] == "succeeded", finished
    return str(finished["output"]["text"])


def recalled(events: list[dict[str, Any]]) -> dict[str, Any]:
    found = [e["data"] for e in events if e["type"] == "memory.recalled"]
    assert len(found) == 1, [e["type"] for e in events]
    return found[0]


def memories_of(org: Org, **params: Any) -> list[dict[str, Any]]:
    r = org.client.get("/v1/memories", params=params, headers=org.headers)
    assert r.status_code == 200, r.text
    return list(r.json()["data"])


def test_a_preference_told_in_one_session_is_recalled_in_the_next_for_that_user_only(
    org: Org, other_org: Org
) -> None:
    agent = org.create_agent(name="barista", skills=MEMORY_SKILLS)
    first = org.create_session(str(agent["id"]), user_id="alice")
    finished, events = run(org, str(first["id"]), "Remember that I prefer green tea")
    assert finished["status"] == "succeeded", finished
    calls = [e["data"] for e in events if e["type"] == "tool.call"]
    assert calls and calls[0]["name"] == "remember", calls
    results = [e["data"] for e in events if e["type"] == "tool.result"]
    assert results[0]["output"]["created"] is True and results[0]["output"]["scope"] == "user"
    stored = memories_of(org, user="alice")
    assert [(m["content"], m["kind"], m["scope"]) for m in stored] == [("I prefer green tea", "preference", "user")]

    # A new session of the same end user: recalled and used.
    later = org.create_session(str(agent["id"]), user_id="alice")
    finished, events = run(org, str(later["id"]), "Which tea do I prefer?")
    assert "From memory: I prefer green tea" in finished["output"]["text"]
    items = recalled(events)["items"]
    assert [i["id"] for i in items] == [stored[0]["id"]] and items[0]["score"] > 0.15

    # Another end user of the same org and agent: nothing of alice's.
    bob = org.create_session(str(agent["id"]), user_id="bob")
    finished, events = run(org, str(bob["id"]), "Which tea do I prefer?")
    assert "green tea" not in finished["output"]["text"]
    assert recalled(events)["items"] == []

    # Another org, same user id and the exact words: nothing either.
    their_agent = other_org.create_agent(name="barista", skills=MEMORY_SKILLS)
    theirs = other_org.create_session(str(their_agent["id"]), user_id="alice")
    finished, events = run(other_org, str(theirs["id"]), "I prefer green tea")
    assert "From memory" not in finished["output"]["text"]
    assert recalled(events)["items"] == []
    assert memories_of(other_org) == []


def test_the_recall_skill_searches_only_what_this_user_may_see(org: Org) -> None:
    agent = org.create_agent(name="notes", skills=MEMORY_SKILLS)
    alice = org.create_session(str(agent["id"]), user_id="alice")
    answer(org, str(alice["id"]), "Remember that my cat is called Miso")
    bob = org.create_session(str(agent["id"]), user_id="bob")
    answer(org, str(bob["id"]), "Remember that my dog is called Pixel")

    text = 'call: recall {"query": "what is my pet called"}'
    finished, events = run(org, str(org.create_session(str(agent["id"]), user_id="alice")["id"]), text)
    output = [e["data"]["output"] for e in events if e["type"] == "tool.result"][0]
    contents = [i["content"] for i in output["items"]]
    assert "my cat is called Miso" in contents and all("Pixel" not in c for c in contents)


def test_an_agent_without_long_term_memory_recalls_nothing(org: Org) -> None:
    agent = org.create_agent(name="forgetful", skills=MEMORY_SKILLS, memory={"long_term": False})
    first = org.create_session(str(agent["id"]), user_id="carol")
    answer(org, str(first["id"]), "Remember that I prefer oolong")
    finished, events = run(org, str(org.create_session(str(agent["id"]), user_id="carol")["id"]), "Do I prefer oolong?")
    assert "From memory" not in finished["output"]["text"]
    assert recalled(events)["items"] == []


def test_a_long_conversation_stays_within_budget_and_its_summary_is_stored_and_recalled(
    org: Org, redis_client: redis.Redis
) -> None:
    # Estimated tokens (about 2000 characters): two or three runs of the offline model's canned reply.
    budget = 500
    agent = org.create_agent(name="chatty", memory={"short_term_tokens": budget})
    session = org.create_session(str(agent["id"]), user_id="dave")
    sid = str(session["id"])
    topics = ["sourdough starters", "the Rust borrow checker", "alpine hiking routes", "jazz chord voicings",
              "sailing knots", "Kubernetes autoscaling", "Japanese joinery", "orbital mechanics"]
    sizes = []
    for topic in topics:
        _, events = run(org, sid, f"Tell me everything about {topic}, in detail please.")
        window = recalled(events)
        sizes.append(window["tokens"])
        assert window["tokens"] <= budget, (topic, window)
    assert max(sizes) > budget // 2, "the window grew before it was summarised"

    summaries = memories_of(org, user="dave", scope="user")
    summaries = [m for m in summaries if m["kind"] == "summary"]
    assert len(summaries) == 1, summaries  # a newer summary replaces the session's older one
    summary = summaries[0]["content"]
    assert any(topic in summary for topic in topics[:6]), summary  # what the folded runs were about
    assert estimate_tokens(summary) <= budget // 2

    # A Redis miss rebuilds the same window from Postgres (the summary plus the later runs).
    cached = redis_client.get(session_window_key(org.id, sid))
    assert cached is not None
    redis_client.delete(session_window_key(org.id, sid))
    _, events = run(org, sid, "And one more thing about tea.")
    rebuilt = recalled(events)
    assert rebuilt["summary"] is True and 0 < rebuilt["turns"] and rebuilt["tokens"] <= budget

    # A new session of the same user recalls the summary of this one.
    _, events = run(org, str(org.create_session(str(agent["id"]), user_id="dave")["id"]),
                    "What did we say about Kubernetes autoscaling?")
    kinds = [i["kind"] for i in recalled(events)["items"]]
    assert "summary" in kinds


def test_the_window_holds_earlier_turns_and_tool_results(org: Org) -> None:
    agent = org.create_agent(name="filer", skills=["file_manager"], confirm="none")
    session = org.create_session(str(agent["id"]))
    sid = str(session["id"])
    answer(org, sid, 'call: file_manager {"action": "write", "path": "a.txt", "content": "kiwi"}')
    _, events = run(org, sid, "hello again")
    window = recalled(events)
    assert window["turns"] == 3 and window["summary"] is False  # user, tool result, answer


def test_scratch_state_is_dropped_when_the_run_ends(org: Org, redis_client: redis.Redis) -> None:
    agent = org.create_agent(name="scratchy")
    session = org.create_session(str(agent["id"]), user_id="erin")
    finished, events = run(org, str(session["id"]), "hello")
    assert finished["status"] == "succeeded"
    assert recalled(events) is not None
    assert redis_client.exists(run_scratch_key(org.id, finished["id"])) == 0


def test_recall_failing_warns_and_the_run_goes_on(org: Org, stack: StackUrls, openai_server: OpenAIServer) -> None:
    agent = org.create_agent(name="unlucky", skills=MEMORY_SKILLS)
    with psycopg.connect(stack.database_url, autocommit=True) as conn:
        # The org's embeddings come from the local OpenAI-compatible server...
        conn.execute("UPDATE orgs SET settings = settings || '{\"embedding_model\": \"openai:test-embed\"}' "
                     "WHERE id = %s", (org.id,))
    session = org.create_session(str(agent["id"]), user_id="frank")
    before = len(openai_server.embedding_requests)
    openai_server.fail_next(503, times=2)  # ...which is down for the request and its one retry
    finished, events = run(org, str(session["id"]), "Which tea do I prefer?")
    assert len(openai_server.embedding_requests) - before == 2
    assert finished["status"] == "succeeded", finished
    warnings = [e["data"] for e in events if e["type"] == "run.warning"]
    assert warnings and warnings[0]["code"] == "MEMORY_UNAVAILABLE"
    assert "key" not in warnings[0]["message"].lower()
    assert recalled(events)["items"] == []


def test_memory_events_are_replayable_like_any_other(client: TestClient, org: Org) -> None:
    agent = org.create_agent(name="replay")
    session = org.create_session(str(agent["id"]), user_id="gina")
    finished, events = run(org, str(session["id"]), "hello")
    again = read_events(client, f"/v1/runs/{finished['id']}/events", org.headers)
    assert [e["seq"] for e in again] == [e["seq"] for e in events]


def test_agents_with_knowledge_recall_document_chunks_and_others_do_not(org: Org) -> None:
    doc = "# Travel policy\n\n## Trains\n\nEmployees travel second class by train for trips under four hours.\n\n" \
          "## Hotels\n\nHotel rooms are booked through the travel desk, at most 150 euros a night.\n"
    r = org.client.post("/v1/knowledge", json={"title": "Travel policy", "content": doc,
                                                "content_type": "text/markdown"}, headers=org.headers)
    assert r.status_code == 202, r.text
    doc_id = r.json()["id"]
    for _ in range(100):
        status = org.client.get(f"/v1/knowledge/{doc_id}", headers=org.headers).json()["status"]
        if status != "pending":
            break
        time.sleep(0.1)
    assert status == "ready"

    reader = org.create_agent(name="reader", memory={"knowledge": True})
    finished, events = run(org, str(org.create_session(str(reader["id"]))["id"]), "How much can a hotel night cost?")
    items = recalled(events)["items"]
    assert items and items[0]["kind"] == "document"
    assert "150 euros a night" in finished["output"]["text"]

    plain = org.create_agent(name="plain")
    finished, events = run(org, str(org.create_session(str(plain["id"]))["id"]), "How much can a hotel night cost?")
    assert all(i["kind"] != "document" for i in recalled(events)["items"])
    assert "150 euros" not in finished["output"]["text"]

    assert org.client.delete(f"/v1/knowledge/{doc_id}", headers=org.headers).status_code == 204
    _, events = run(org, str(org.create_session(str(reader["id"]))["id"]), "How much can a hotel night cost?")
    assert recalled(events)["items"] == []


def test_session_notes_stay_in_their_session_in_redis_and_go_with_a_privacy_delete(
    org: Org, redis_client: redis.Redis
) -> None:
    agent = org.create_agent(name="noter", skills=MEMORY_SKILLS)
    session = org.create_session(str(agent["id"]), user_id="hana")
    note = 'call: remember {"content": "The draft lives in chapter-three.md", "scope": "session"}'
    answer(org, str(session["id"]), note)
    assert memories_of(org, user="hana") == [], "session notes are short-term: not in Postgres"
    assert redis_client.keys(f"agentos:{org.id}:memory:item:*")

    _, events = run(org, str(session["id"]), "Where does the draft live?")
    assert [i["scope"] for i in recalled(events)["items"]] == ["session"]
    _, events = run(org, str(org.create_session(str(agent["id"]), user_id="hana")["id"]), "Where does the draft live?")
    assert recalled(events)["items"] == [], "another session of the same user does not see the note"

    admin = {"Authorization": f"Bearer {org.key}"}
    r = org.client.delete("/v1/memories", params={"user": "hana"}, headers=admin)
    assert r.status_code == 200 and r.json()["deleted"] == 1, r.text
    assert not redis_client.keys(f"agentos:{org.id}:memory:item:*")
