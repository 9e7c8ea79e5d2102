"""The web console (`/console`, api/console): served by the API with a strict CSP, small, and
working end to end in headless Chromium (Debian's `chromium`, never a downloaded browser)
against the real API (uvicorn) and a real worker: sign in with a key, create an agent, chat with
the answer streaming in, approve a sub-agent's tool call from the inbox with edited arguments,
reload mid-run without losing or repeating anything, a viewer's limits, memory search and a
knowledge upload. Screenshots at 1280 and 360 px go to artifacts/console/ (not committed)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from api.app import create_app
from api.console import STATIC
from tests.console_page import console, seqs_in, words
from tests.helpers import Org, RsaKeys, make_settings, open_loopback, serving, start_run, wait
from tests.openai_server import OpenAIServer
from tests.sse import read_events
from tests.tcp_proxy import TcpProxy

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def api_url(stack: StackUrls, rsa_keys: RsaKeys) -> Iterator[str]:
    """The API under uvicorn, serving the console."""
    settings = make_settings(stack, rsa_keys, api={"max_body_bytes": 256 * 1024,
                                                   "console_trace_url": "http://traces.test/trace/{trace_id}"})
    with serving(create_app(settings)) as served:
        yield served.url


# --- served ---------------------------------------------------------------------------------

def test_the_console_is_served_with_a_strict_policy_and_revalidated(client: TestClient):
    moved = client.get("/console", follow_redirects=False)
    assert moved.status_code == 308 and moved.headers["location"] == "console/"
    page = client.get("/console/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert page.headers["cache-control"] == "no-cache"
    assert '<script type="module" src="assets/app.js">' in page.text
    script = client.get("/console/assets/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert script.headers["cache-control"] == "no-cache" and script.headers["etag"]
    assert script.headers["content-security-policy"] == csp
    assert client.get("/console/assets/app.js", headers={"If-None-Match": script.headers["etag"]}).status_code == 304
    assert client.get("/console/assets/nothing.js").status_code == 404


def test_the_console_can_be_turned_off(stack: StackUrls, rsa_keys: RsaKeys):
    settings = make_settings(stack, rsa_keys, api={"console": False})
    with TestClient(create_app(settings)) as off:
        assert off.get("/console/").status_code == 404
        assert off.get("/console/assets/app.js").status_code == 404


def test_the_first_load_is_small_and_everything_is_package_data():
    files = sorted(p for p in STATIC.iterdir() if p.is_file())
    compressed = sum(len(gzip.compress(p.read_bytes())) for p in files)
    assert compressed < 300 * 1024, f"{compressed} bytes gzipped"
    # Every file would be in the wheel: pyproject's package-data patterns cover each suffix.
    pyproject = (ROOT / "pyproject.toml").read_text()
    for p in files:
        assert f'"console/static/*{p.suffix}"' in pyproject, p.name
    # No CDN, no remote anything: every reference is relative.
    for p in files:
        text = p.read_text()
        assert "http://" not in text.replace("http://127.0.0.1", "") and "https://" not in text, p.name


def test_me_names_the_org(client: TestClient, org: Org):
    me = client.get("/v1/me", headers=org.headers).json()
    assert me["org_name"].startswith("org A") and me["role"] == "owner"


# --- in the browser ---------------------------------------------------------------------------

@pytest.mark.usefixtures("worker")
@pytest.mark.timeout(240)
def test_sign_in_create_an_agent_and_chat_with_the_answer_streaming(client: TestClient, org: Org, api_url: str,
                                                                    stack: StackUrls, openai_server: OpenAIServer):
    # The org's own provider (the suite's local OpenAI-compatible server): the model field offers its models.
    open_loopback(stack, org.id)
    provider = client.post("/v1/providers", json={"name": "local", "kind": "openai_compatible",
                                                  "base_url": openai_server.base_url}, headers=org.headers)
    assert provider.status_code == 201, provider.text
    with console(api_url) as c:
        page = c.page
        page.goto(api_url + "/console")
        page.wait_for_selector("input[name=key]")
        c.screenshot("sign-in")
        # A key that does not work: the API's message and code, and no way in.
        page.fill("input[name=key]", "aos_nope")
        page.click("#key-sign-in button[type=submit]")
        page.wait_for_selector(".error")
        assert "UNAUTHENTICATED" in page.inner_text(".error")
        c.expected_failures.append("/v1/me")  # the refused key's 401, provoked above
        c.sign_in(org.key)
        assert page.inner_text("#org-name").startswith("org A") and page.inner_text("#role") == "owner"

        # Create an agent; an out-of-range limit is shown under its field first.
        page.click("text=New agent")
        page.wait_for_selector("datalist#models option[value='local:test-model']", state="attached")
        page.fill("input[name=name]", "echoer")
        page.fill("input[name=model]", "offline:echo")
        page.fill("input[name='limits.max_steps']", "0")
        page.click("button:has-text('Create agent')")
        problem = page.wait_for_selector("[data-field='limits.max_steps'] .field-error:not(:empty)")
        assert "greater than or equal to 1" in problem.inner_text()
        assert "VALIDATION_FAILED" in page.inner_text("#form-status")
        c.expected_failures.append("/v1/agents")  # that 422, provoked
        c.screenshot("agent-form-error")
        page.fill("input[name='limits.max_steps']", "10")
        page.click("button:has-text('Create agent')")
        page.wait_for_selector("h1:has-text('Agent echoer')")
        [agent] = [a for a in client.get("/v1/agents", headers=org.headers).json()["data"] if a["name"] == "echoer"]
        assert agent["model"] == "offline:echo" and agent["limits"]["max_steps"] == 10

        # A second version, and its diff.
        page.fill("textarea[name=instructions]", "Answer in one line.")
        page.click("button:has-text('Save')")
        page.wait_for_selector("h1:has-text('Agent echoer') + .badge:has-text('v2')")
        page.click("text=Version history")
        diff = page.wait_for_selector("#diff .add")
        assert "Answer in one line." in diff.inner_text()
        assert page.locator("#diff .del").count() >= 1
        c.screenshot("agent-versions")

        # Chat: the answer arrives in pieces, each shown as it comes.
        c.go(f"#/chat/{agent['id']}")
        page.click("button:has-text('New session')")
        page.wait_for_selector("#connection[data-state=live]")
        page.evaluate("""() => {
          window.answerUpdates = 0;
          // Each time the answer's text changes (a delta appended, or the final message set).
          new MutationObserver((records) => {
            window.answerUpdates += records.filter((r) => r.target.classList?.contains("answer")).length;
          })
            .observe(document.getElementById("timeline"), {subtree: true, characterData: true, childList: true});
        }""")
        message = words(4000)
        page.fill("textarea[name=input]", message)
        page.keyboard.press("Control+Enter")  # the keyboard path
        page.wait_for_selector(".run .end-succeeded")
        answer = page.inner_text(".run .answer")
        assert answer.strip() == message
        run_id = page.get_attribute(".run", "data-run")
        events = read_events(client, f"/v1/runs/{run_id}/events", org.headers)
        deltas = [e for e in events if e["type"] == "message.delta"]
        assert len(deltas) > 1, "the offline model's answer should stream in several deltas"
        assert page.evaluate("window.answerUpdates") > len(deltas), "each delta updated the answer as it came"
        assert page.inner_text(".run .status") == "succeeded"
        c.screenshot("chat")
        c.assert_clean()


WRITE = 'call: file_manager {"action": "write", "path": "a.txt", "content": "proposed"}'


@pytest.mark.usefixtures("worker")
@pytest.mark.timeout(240)
def test_a_sub_agents_call_approved_from_the_inbox_with_edited_arguments_and_a_reload_mid_run(
        client: TestClient, org: Org, api_url: str):
    scribe = org.create_agent(name="scribe", skills=["file_manager"])
    lead = org.create_agent(name="lead", subagents=[scribe["id"]])
    session = org.create_session(str(lead["id"]))
    with console(api_url) as c:
        page = c.page
        c.sign_in(org.key)
        c.go(f"#/chat/{lead['id']}/{session['id']}")
        page.wait_for_selector("#connection[data-state=live]")
        page.fill("textarea[name=input]", f"delegate: scribe {WRITE}")
        page.click("button:has-text('Send')")
        page.wait_for_selector(".subagent .tool.pending")
        assert json.loads(page.input_value(".subagent .tool.pending textarea[name=args]"))["content"] == "proposed"
        assert page.inner_text(".run .status") == "awaiting approval"
        c.screenshot("chat-waiting")

        # Reload mid-run: the whole timeline again, each event once.
        before = seqs_in(page)
        page.reload()
        page.wait_for_selector(".subagent .tool.pending")
        page.wait_for_selector("#connection[data-state=live]")
        after = seqs_in(page)
        assert len(after) == len(set(after)), f"an event shown twice: {after}"
        assert sorted(after) == sorted(before), "the reloaded timeline differs"
        assert page.locator(".tool").count() == 1 and page.locator(".subagent").count() == 1
        run_id = page.get_attribute(".run", "data-run")

        # The inbox: edit the arguments, approve.
        c.go("#/approvals")
        item = page.wait_for_selector("#inbox li")
        assert "scribe" in item.inner_text()  # whose call: the sub-agent's
        assert json.loads(page.input_value("#inbox textarea[name=args]"))["content"] == "proposed"
        c.screenshot("approvals")
        args = json.loads(page.input_value("#inbox textarea[name=args]"))
        args["content"] = "edited in the console"
        page.fill("#inbox textarea[name=args]", json.dumps(args))
        page.click("#inbox button:has-text('Approve')")
        page.wait_for_selector("#inbox li", state="detached")

        # Back in the chat: the decision, the edited arguments and the result, once each.
        page.go_back()
        page.wait_for_selector(".run .end-succeeded")
        tool = page.inner_text(".subagent .tool")
        assert "edited in the console" in tool and "(edited arguments)" in tool and "result:" in tool
        shown = seqs_in(page)
        assert len(shown) == len(set(shown)), f"an event shown twice: {shown}"
        assert page.locator(".tool").count() == 1 and page.locator(".subagent").count() == 1
        events = read_events(client, f"/v1/runs/{run_id}/events", org.headers)
        for e in events:
            if e["type"] in ("step.started", "subagent.started", "subagent.completed", "confirmation.resolved",
                             "tool.result", "run.succeeded"):
                assert e["seq"] in shown, f"{e['type']} {e['seq']} is not shown"
        c.screenshot("chat-approved")

        # The run page: duration, tokens, cost, trace id linked to the trace UI.
        c.go(f"#/runs/{run_id}")
        page.wait_for_selector("#timeline .end-succeeded")
        facts = page.inner_text("#run-facts")
        run = wait(org, run_id)
        assert str(run["usage"]["total_tokens"]) in facts and "$" in facts
        link = page.get_attribute("#run-facts a[href^='http://traces.test']", "href")
        assert link == f"http://traces.test/trace/{run['trace_id']}"
        c.screenshot("run")
        c.go("#/runs")
        page.wait_for_selector(f"#runs a[href='#/runs/{run_id}']")
        page.select_option("select[name=status]", "failed")
        page.click("button:has-text('Filter')")
        page.wait_for_selector("#runs td.muted:has-text('No runs match')")
        c.screenshot("runs")
        c.go("#/usage")  # the owner may see usage: the run's tokens, per day and per agent
        page.wait_for_selector("#usage .bars")
        assert page.locator("#usage table.bars").count() == 2 and "lead" in page.inner_text("#usage")
        c.screenshot("usage")
        c.assert_clean()
    [stored] = client.get(f"/v1/runs/{run_id}/tool-calls", headers=org.headers).json()["data"]
    assert stored["args"]["content"] == "edited in the console" and stored["proposed_args"]["content"] == "proposed"


@pytest.mark.usefixtures("worker")
@pytest.mark.timeout(240)
def test_a_viewer_sees_no_edit_controls_and_a_forced_write_is_refused(client: TestClient, org: Org, api_url: str):
    agent = org.create_agent(name="shown")
    session = org.create_session(str(agent["id"]))
    run = start_run(org, str(session["id"]), "hello")
    wait(org, run["id"])
    viewer = org.key_with_role("viewer")
    with console(api_url) as c:
        page = c.page
        c.sign_in(viewer)
        assert page.inner_text("#role") == "viewer"
        page.wait_for_selector("#agent-list")
        for hash_ in ("#/agents", f"#/agents/{agent['id']}", f"#/chat/{agent['id']}/{session['id']}", "#/memory"):
            c.go(hash_)
            page.wait_for_selector("main h1")
            page.wait_for_load_state("networkidle")
            assert page.locator("[data-edit]").count() == 0, f"an edit control on {hash_}"
            assert page.locator("main button[type=submit]:has-text('Save'), textarea[name=input]").count() == 0
        c.go(f"#/agents/{agent['id']}")
        page.wait_for_selector("input[name=name][disabled]")
        c.go(f"#/chat/{agent['id']}/{session['id']}")
        page.wait_for_selector(".run .end-succeeded")  # a viewer follows conversations
        c.screenshot("viewer-chat")
        # Forcing a write with the viewer's key anyway: the API refuses it.
        c.expected_failures.append("/v1/agents")
        refused = page.evaluate("""async () => {
          const r = await fetch("/v1/agents", {method: "POST", headers: {
            Authorization: "Bearer " + sessionStorage.getItem("agentos.key"), "Content-Type": "application/json"},
            body: JSON.stringify({name: "sneaky"})});
          return {status: r.status, body: await r.json()};
        }""")
        assert refused["status"] == 403 and refused["body"]["error"]["code"] == "FORBIDDEN"
        # Usage is for admins: the API's refusal is shown with its code, not a broken page.
        c.expected_failures.append("/v1/usage")
        c.go("#/usage")
        assert "FORBIDDEN" in page.inner_text("#usage .error")
        c.assert_clean()
    assert [a["name"] for a in client.get("/v1/agents", headers=org.headers).json()["data"]] == ["shown"]


@pytest.mark.usefixtures("worker")
@pytest.mark.timeout(240)
def test_search_memories_and_upload_knowledge_until_ready(client: TestClient, org: Org, api_url: str):
    for content in ("The office plant is a fern.", "Invoices are due on the 5th of each month."):
        assert client.post("/v1/memories", json={"content": content}, headers=org.headers).status_code == 201
    with console(api_url) as c:
        page = c.page
        c.sign_in(org.key)
        c.go("#/memory")
        page.wait_for_selector("#memories li[data-memory]")
        page.fill("input[name=query]", "When are invoices due?")
        page.click("#memory-search button[type=submit]")
        page.wait_for_selector("#memories .score")
        first = page.inner_text("#memories li:first-child")
        assert "Invoices are due" in first and "score" in first

        page.fill("#knowledge-upload input[name=title]", "Handbook")
        page.fill("#knowledge-upload textarea[name=content]", "# Handbook\n\nHolidays are booked in the HR tool.\n")
        page.click("#knowledge-upload button[type=submit]")
        page.wait_for_selector("#documents li[data-status=ready]:has-text('Handbook')")
        c.screenshot("memory")

        # Delete a memory from the page.
        page.click("#memories li:first-child button:has-text('Delete')")
        page.wait_for_function("() => document.querySelectorAll('#memories li[data-memory]').length === 1")
        c.assert_clean()
    left = client.get("/v1/memories", headers=org.headers).json()["data"]
    assert [m["content"] for m in left if m["document_id"] is None] == ["The office plant is a fern."]


@pytest.mark.usefixtures("worker")
@pytest.mark.timeout(240)
def test_the_chat_resumes_after_a_cut_without_gaps_shows_a_queued_place_and_cancels(
        client: TestClient, org: Org, api_url: str):
    agent = org.create_agent(name="writer", skills=["file_manager"])
    session = org.create_session(str(agent["id"]))
    # The page reaches the API through a proxy the test can cut.
    with TcpProxy(int(api_url.rsplit(":", 1)[1])) as proxy, console(f"http://127.0.0.1:{proxy.port}") as c:
        page = c.page
        c.sign_in(org.key)
        c.go(f"#/chat/{agent['id']}/{session['id']}")
        page.wait_for_selector("#connection[data-state=live]")
        page.fill("textarea[name=input]", WRITE)
        page.click("button:has-text('Send')")
        page.wait_for_selector(".tool.pending")
        # A second message waits behind the first: its place shows.
        page.fill("textarea[name=input]", "hello")
        page.click("button:has-text('Send')")
        page.wait_for_selector(".run:nth-child(2) .status:has-text('queued · place 2')")
        c.screenshot("chat-queued")
        assert page.inner_text(".run:nth-child(2) .status") == "queued · place 2"  # still, once the run was read

        # The connection drops; meanwhile the call is approved and both runs go on.
        c.expected_failures.append("net::ERR_")  # the page's requests while the API is unreachable
        proxy.down()
        [pending] = client.get("/v1/tool-calls", params={"status": "pending"}, headers=org.headers).json()["data"]
        assert client.post(f"/v1/tool-calls/{pending['id']}/approve", json={}, headers=org.headers).status_code == 200
        second = client.get(f"/v1/sessions/{session['id']}/runs", headers=org.headers).json()["data"][0]
        wait(org, second["id"])
        proxy.up()
        page.wait_for_selector(".run:nth-child(2) .end-succeeded")
        assert page.locator(".end-succeeded").count() == 2

        # Cancel a run while it works.
        page.fill("textarea[name=input]", "wait: 30")
        page.click("button:has-text('Send')")
        page.wait_for_selector(".run:nth-child(3) .status:has-text('running')")
        page.click("#cancel")
        page.wait_for_selector(".run:nth-child(3) .end-cancelled")
        assert page.is_hidden("#cancel")

        shown = seqs_in(page)
        runs = page.eval_on_selector_all(".run", "els => els.map(e => e.dataset.run)")
        c.assert_clean()
    assert len(shown) == len(set(shown)), f"an event shown twice: {shown}"
    # Nothing missed, the events of the cut included: each event that makes an element has one.
    for run_id in runs:
        for e in read_events(client, f"/v1/runs/{run_id}/events", org.headers):
            if e["type"] in MARKED:
                assert e["seq"] in shown, f"{e['type']} {e['seq']} of {run_id} is not shown"


# The event types for which the timeline always makes an element of their own.
MARKED = {"step.started", "memory.recalled", "tool.result", "confirmation.required", "confirmation.resolved",
          "subagent.started", "subagent.completed", "run.warning", "budget.warning",
          "run.succeeded", "run.failed", "run.cancelled", "run.timed_out"}
