"""`web_fetch` and `web_search` end to end: the suite's worker runs the offline model's `call:`
script against local pages and fake SearXNG and Brave servers on 127.0.0.1. What differs between
tests is per org (`orgs.settings`: the allowlist, the search provider), since every worker takes
any run. Refusals, timeouts, error statuses and oversize bodies reach the model as text, and the
run goes on."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from tests.fake_web import FakeWeb, Reply, as_json, html, redirect
from tests.helpers import Org, Worker, new_org, start_run, wait
from tests.sse import read_events

PAGE = """<html><head><title>Local  page</title><script>var secret = 1;</script></head>
<body><nav>menu</nav><main><h1>Welcome</h1><p>The answer is <b>42</b>.</p></main></body></html>"""


@pytest.fixture(scope="module")
def web() -> Iterator[FakeWeb]:
    with FakeWeb() as server:
        server.routes["/page"] = lambda _: html(PAGE)
        server.routes["/to-page"] = lambda _: redirect("/page")
        server.routes["/to-loopback"] = lambda _: redirect(f"http://127.0.0.2:{server.port}/page")
        server.routes["/slow"] = lambda _: Reply(200, b"late", {"Content-Type": "text/plain"}, delay_s=3)
        server.routes["/broken"] = lambda _: Reply(500, b"oops", {"Content-Type": "text/plain"})
        server.routes["/huge"] = lambda _: Reply(200, b"y" * 3_000_000, {"Content-Type": "text/plain"}, chunked=True)
        server.routes["/image"] = lambda _: Reply(200, b"\x89PNG", {"Content-Type": "image/png"})
        yield server


def run_script(org: Org, skills: list[str], script: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run `script` with an offline agent that may use `skills`; (the finished run, its tool calls)."""
    agent = org.create_agent(skills=skills, confirm="none")
    session = org.create_session(str(agent["id"]))
    run = wait(org, start_run(org, str(session["id"]), script)["id"], timeout=60)
    calls = org.client.get(f"/v1/runs/{run['id']}/tool-calls", headers=org.headers).json()["data"]
    return run, calls


def call(skill: str, **args: Any) -> str:
    return f"call: {skill} {json.dumps(args)}"


def configure(stack: StackUrls, org: Org, **settings: Any) -> None:
    """Per-org options the operator sets in `orgs.settings` (as `agentos memory reembed` does)."""
    with psycopg.connect(stack.database_url) as conn:
        conn.execute("UPDATE orgs SET settings = settings || %s::jsonb WHERE id = %s", (json.dumps(settings), org.id))


LOCAL = ["127.0.0.1"]


def test_web_fetch_reads_an_allowed_local_page_and_every_failure_is_text(
        client: TestClient, web: FakeWeb, stack: StackUrls, worker: Worker) -> None:
    org = new_org(client, "fetch")
    configure(stack, org, outbound_allow=LOCAL)
    script = "\n".join([
        call("web_fetch", url=web.url("/to-page")),
        call("web_fetch", url=web.url("/slow"), timeout_s=1),
        call("web_fetch", url=web.url("/broken")),
        call("web_fetch", url=web.url("/huge")),
        call("web_fetch", url=web.url("/image")),
        call("web_fetch", url="http://169.254.169.254/latest/meta-data/"),
        call("web_fetch", url=web.url("/to-loopback")),
    ])
    run, calls = run_script(org, ["web_fetch"], script)
    assert run["status"] == "succeeded", run
    assert [c["status"] for c in calls] == ["succeeded"] + ["failed"] * 6
    page = calls[0]["output"]
    assert page["title"] == "Local page" and page["url"].endswith("/page") and page["truncated"] is False
    assert page["text"] == "# Welcome\nThe answer is 42." and "secret" not in page["text"]
    errors = [c["error"]["message"] for c in calls[1:]]
    for message, fragment in zip(errors, ["did not answer within 1 s", "HTTP 500", "limit of 2097152 bytes",
                                          "'image/png'", "cloud metadata address", "127.0.0.2 is a loopback address"],
                                 strict=True):
        assert message.startswith("Could not fetch http") and fragment in message, message


def test_without_the_allowlist_loopback_is_refused_in_every_spelling(
        client: TestClient, web: FakeWeb, worker: Worker) -> None:
    org = new_org(client, "fetch refused")
    before = len(web.seen)
    script = "\n".join([
        call("web_fetch", url=web.url("/page")),
        call("web_fetch", url=web.url("/page", "[::1]")),
        call("web_fetch", url=web.url("/page", "localhost")),
        call("web_fetch", url="file:///etc/passwd"),
    ])
    run, calls = run_script(org, ["web_fetch"], script)
    assert run["status"] == "succeeded"
    errors = [c["error"]["message"] for c in calls]
    assert "127.0.0.1 is a loopback address" in errors[0]
    assert "::1 is a loopback address" in errors[1]
    assert "localhost resolves to" in errors[2] and "loopback" in errors[2]
    assert "only http and https" in errors[3]
    assert len(web.seen) == before  # nothing reached the server


def test_a_redirect_to_loopback_is_refused(client: TestClient, web: FakeWeb, stack: StackUrls,
                                          worker: Worker) -> None:
    """The first hop is allowed by name (`localhost`), the redirect's target (127.0.0.1) is not."""
    web.routes["/hop"] = lambda _: redirect(f"http://127.0.0.1:{web.port}/page")
    org = new_org(client, "redirect")
    configure(stack, org, outbound_allow=["localhost"])
    run, calls = run_script(org, ["web_fetch"], "\n".join([call("web_fetch", url=web.url("/page", "localhost")),
                                                           call("web_fetch", url=web.url("/hop", "localhost"))]))
    assert run["status"] == "succeeded"
    assert calls[0]["status"] == "succeeded" and calls[0]["output"]["title"] == "Local page"
    assert "127.0.0.1 is a loopback address" in calls[1]["error"]["message"]
    assert web.seen[-1].path == "/hop"


def test_web_search_with_the_offline_provider(client: TestClient, worker: Worker) -> None:
    org = new_org(client, "search offline")
    run, calls = run_script(org, ["web_search"], call("web_search", query="agent platforms", count=3))
    assert run["status"] == "succeeded"
    out = calls[0]["output"]
    assert out["provider"] == "offline" and len(out["results"]) == 3
    assert out["results"][0]["url"].startswith("https://example.org/offline/agent-platforms/")
    assert set(out["results"][0]) == {"title", "url", "snippet"}
    _, again = run_script(org, ["web_search"], call("web_search", query="agent platforms", count=3))
    assert again[0]["output"]["results"] == out["results"]  # deterministic


def test_web_search_with_searxng_caches_per_org_and_retries(client: TestClient, web: FakeWeb, stack: StackUrls,
                                                            worker: Worker) -> None:
    hits: list[str] = []

    def searx(seen: Any) -> Reply:
        query = seen.query["q"][0]
        hits.append(query)
        if query == "flaky" and hits.count("flaky") == 1:
            return Reply(503, b"busy")
        if query == "down":
            return Reply(502, b"bad gateway")
        assert seen.query["format"] == ["json"]
        return as_json({"results": [{"title": f"About <b>{query}</b>", "url": "https://example.com/1",
                                     "content": "First &amp; best"}, {"title": "no url"}]})

    web.routes["/searx/search"] = searx
    a, b = new_org(client, "searx A"), new_org(client, "searx B")
    for org in (a, b):
        configure(stack, org, outbound_allow=LOCAL, web_search_provider=f"searxng:{web.url('/searx')}")
    query = "cats " + secrets.token_hex(3)
    script = "\n".join([call("web_search", query=query), call("web_search", query=query),
                        call("web_search", query="flaky"), call("web_search", query="down")])
    run, calls = run_script(a, ["web_search"], script)
    assert run["status"] == "succeeded"
    first, second, flaky, down = calls
    assert first["output"]["results"] == [{"title": f"About {query}", "url": "https://example.com/1",
                                           "snippet": "First & best"}]
    assert first["output"]["cached"] is False and second["output"]["cached"] is True
    assert flaky["status"] == "succeeded" and hits.count("flaky") == 2  # a 503, retried
    assert down["status"] == "failed" and "SearXNG" in down["error"]["message"] and "HTTP 502" in \
        down["error"]["message"] and hits.count("down") == 3
    # Another org's cache is its own.
    _, other = run_script(b, ["web_search"], call("web_search", query=query))
    assert other[0]["output"]["cached"] is False and hits.count(query) == 2


def test_web_search_with_brave_uses_the_org_secret_which_never_leaks(
        client: TestClient, web: FakeWeb, stack: StackUrls, worker: Worker) -> None:
    key = "brave-" + secrets.token_hex(12)
    seen_keys: list[str | None] = []

    def brave(seen: Any) -> Reply:
        token = seen.headers.get("X-Subscription-Token")
        seen_keys.append(token)
        if token != key:
            return as_json({"error": f"bad token {token}"}, 401)
        return as_json({"web": {"results": [{"title": "Brave <strong>one</strong>", "url": "https://example.net/",
                                             "description": "snippet"}]}})

    web.routes["/brave"] = brave
    org, keyless = new_org(client, "brave"), new_org(client, "brave keyless")
    for each in (org, keyless):
        configure(stack, each, outbound_allow=LOCAL, web_search_provider=f"brave:{web.url('/brave')}")
    assert client.put("/v1/secrets/web_search_api_key", json={"value": key}, headers=org.headers).status_code == 200
    run, calls = run_script(org, ["web_search"], call("web_search", query="brave things", count=2))
    _, missing = run_script(keyless, ["web_search"], call("web_search", query="brave things"))
    events = read_events(client, f"/v1/runs/{run['id']}/events", org.headers)
    log = worker.process.log_path.read_text(errors="replace")
    assert run["status"] == "succeeded" and seen_keys == [key]
    assert calls[0]["output"]["results"] == [{"title": "Brave one", "url": "https://example.net/",
                                              "snippet": "snippet"}]
    assert "org secret 'web_search_api_key'" in missing[0]["error"]["message"]
    with psycopg.connect(stack.database_url) as conn:  # everything stored about the org, as text
        stored = [str(conn.execute(f"SELECT coalesce(json_agg(t)::text, '') FROM {table} t WHERE org_id = %s",
                                   (org.id,)).fetchone()) for table in
                  ("run_events", "tool_calls", "messages", "runs", "audit_logs")]
    haystack = json.dumps(events) + json.dumps(calls) + json.dumps(run) + log + "".join(stored)
    assert key not in haystack


def test_web_search_with_tavily_posts_the_query_with_the_orgs_key(
        client: TestClient, web: FakeWeb, stack: StackUrls, worker: Worker) -> None:
    key = "tvly-" + secrets.token_hex(8)
    bodies: list[dict[str, Any]] = []

    def tavily(seen: Any) -> Reply:
        if seen.headers.get("Authorization") != f"Bearer {key}":
            return as_json({"detail": "unauthorized"}, 401)
        bodies.append(json.loads(seen.body))
        return as_json({"results": [{"title": "T", "url": "https://example.com/t", "content": "c", "score": 0.9}]})

    web.routes["/tavily"] = tavily
    org, wrong = new_org(client, "tavily"), new_org(client, "tavily wrong key")
    for each in (org, wrong):
        configure(stack, each, outbound_allow=LOCAL, web_search_provider=f"tavily:{web.url('/tavily')}")
    client.put("/v1/secrets/web_search_api_key", json={"value": key}, headers=org.headers)
    client.put("/v1/secrets/web_search_api_key", json={"value": "tvly-wrong"}, headers=wrong.headers)
    run, calls = run_script(org, ["web_search"], call("web_search", query="tavily things", count=3))
    _, refused = run_script(wrong, ["web_search"], call("web_search", query="tavily things"))
    assert run["status"] == "succeeded"
    assert calls[0]["output"]["results"] == [{"title": "T", "url": "https://example.com/t", "snippet": "c"}]
    assert bodies == [{"query": "tavily things", "max_results": 3, "search_depth": "basic"}]
    assert "refused the API key (HTTP 401)" in refused[0]["error"]["message"]
    assert "tvly-wrong" not in json.dumps(refused)
