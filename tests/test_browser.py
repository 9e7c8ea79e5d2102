"""A web app on another origin, in a real browser (headless Chromium driven by Playwright):
its page calls the API through CORS with a key, gets a stream token from its own backend, follows
a run with `EventSource`, and when the test cuts the connection mid-stream it reconnects with a
fresh token and `?after=<last seq>`, so it shows every event exactly once.

Playwright drives Debian's `chromium` (`executable_path`); it never downloads a browser. Outside
CI the test skips when /usr/bin/chromium is missing; in CI (`.ci/run` installs it) it must run."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import sync_playwright
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from api.app import create_app
from core.events import EVENT_TYPES, TERMINAL_TYPES
from tests.helpers import Org, RsaKeys, make_settings, serving, start_run
from tests.sse import read_events
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.usefixtures("worker"), pytest.mark.timeout(120)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 60_000
WRITE = 'call: file_manager {"action": "write", "path": "a.txt", "content": "from the browser"}'

# The web app's page. It never de-duplicates: it records every event it is given, so the test
# sees any event delivered twice. On any stream error (the cut, or a token that expired) it
# closes that EventSource and opens a new one with a fresh token and the last seq it saw.
PAGE = """<!doctype html>
<html><body><pre id="log"></pre><script>
const CONFIG = %(config)s;
window.state = {agents: null, seen: [], opened: 0, tokens: 0, done: false, errors: []};
let last = null;

async function start() {
  const r = await fetch(CONFIG.api + "/v1/agents", {headers: {Authorization: "Bearer " + CONFIG.key}});
  state.agents = {status: r.status, names: (await r.json()).data.map(a => a.name),
                  rateLimit: r.headers.get("RateLimit-Limit")};
  follow();
}

async function follow() {
  let grant;
  try {
    const r = await fetch("/stream-token", {method: "POST", headers: {"Content-Type": "application/json"},
                                            body: JSON.stringify({run_id: CONFIG.run})});
    if (!r.ok) throw new Error("token: " + r.status);
    grant = await r.json();
  } catch (e) {
    state.errors.push(String(e));
    setTimeout(follow, 200);
    return;
  }
  state.tokens++;
  const es = new EventSource(last === null ? grant.url : grant.url + "&after=" + last);
  es.onopen = () => { state.opened++; };
  const show = (m) => {
    const event = JSON.parse(m.data);
    state.seen.push({seq: event.seq, type: event.type, id: m.lastEventId});
    last = event.seq;
    document.getElementById("log").textContent += event.seq + " " + event.type + "\\n";
    if (CONFIG.terminal.includes(event.type)) { state.done = true; es.close(); }
  };
  for (const type of CONFIG.types) es.addEventListener(type, show);
  es.onerror = () => {
    if (state.done) return;
    es.close();
    setTimeout(follow, 200);
  };
}

start();
</script></body></html>
"""


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing; .ci/run installs the chromium package for this test")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); this test runs in CI")


def web_app(api_url: str, key: str, page_config: dict[str, Any], issued: list[str]) -> Starlette:
    """The integrating web app: its page, and the backend route that asks the API for a stream
    token with the org's key (the key a real app would keep on its server)."""

    async def page(request: Request) -> Response:
        return HTMLResponse(PAGE % {"config": json.dumps(page_config)})

    async def stream_token(request: Request) -> Response:
        body = await request.json()
        try:
            async with httpx.AsyncClient(timeout=10) as api:
                r = await api.post(f"{api_url}/v1/stream-tokens", json={"run_id": body["run_id"]},
                                   headers={"Authorization": f"Bearer {key}"})
        except httpx.HTTPError as exc:  # the API is unreachable for a moment (the test cut it): the page retries
            return JSONResponse({"error": str(exc)}, status_code=502)
        if r.status_code == 200:
            issued.append(r.json()["token"])
        return JSONResponse(r.json(), status_code=r.status_code)

    return Starlette(routes=[Route("/", page), Route("/stream-token", stream_token, methods=["POST"])])


@pytest.fixture
def api_url(stack: StackUrls, rsa_keys: RsaKeys) -> Iterator[str]:
    """The API under uvicorn; pages on any 127.0.0.1 port may call it."""
    settings = make_settings(stack, rsa_keys, api={"max_body_bytes": 64 * 1024, "cors_origins": ["http://127.0.0.1:*"]})
    with serving(create_app(settings)) as served:
        yield served.url


def test_a_page_on_another_origin_streams_a_run_through_a_cut_exactly_once(
    client: TestClient, org: Org, api_url: str, tmp_path: Path
):
    _require_chromium()
    agent = org.create_agent(skills=["file_manager"])
    session = org.create_session(str(agent["id"]))
    run = start_run(org, str(session["id"]), WRITE)  # waits for approval halfway: the cut comes then
    issued: list[str] = []
    console: list[str] = []
    # The API's public address, as the page and the web app's backend know it, is a proxy the test can cut.
    with TcpProxy(int(api_url.rsplit(":", 1)[1])) as proxy:
        public = f"http://127.0.0.1:{proxy.port}"
        config = {"api": public, "key": org.key, "run": run["id"], "types": sorted(EVENT_TYPES),
                  "terminal": sorted(TERMINAL_TYPES)}
        with serving(web_app(public, org.key, config, issued)) as web, sync_playwright() as pw:
            assert web.url != public  # the page's origin is not the API's
            browser = pw.chromium.launch_persistent_context(
                str(tmp_path / "profile"), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.on("console", lambda m: console.append(m.text))
                page.goto(web.url + "/")
                page.wait_for_function("state.seen.some(e => e.type === 'confirmation.required')", timeout=WAIT_MS)
                before = page.evaluate("state.seen.length")
                proxy.down()  # every open connection is reset, mid-stream
                proxy.up()
                page.wait_for_function("state.opened >= 2", timeout=WAIT_MS)
                [pending] = [c for c in client.get("/v1/tool-calls", params={"status": "pending"},
                                                   headers=org.headers).json()["data"] if c["run_id"] == run["id"]]
                assert client.post(f"/v1/tool-calls/{pending['id']}/approve", json={},
                                   headers=org.headers).status_code == 200
                page.wait_for_function("state.done", timeout=WAIT_MS)
                state = page.evaluate("state")
            finally:
                browser.close()

    assert state["agents"]["status"] == 200 and agent["name"] in state["agents"]["names"], (state, console)
    assert state["agents"]["rateLimit"], "an exposed header is readable by the page"
    seen = state["seen"]
    seqs = [e["seq"] for e in seen]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gap or repeat: {seqs}"
    assert [e["id"] for e in seen] == [str(s) for s in seqs]
    assert seen[-1]["type"] == "run.succeeded" and 0 < before < len(seen)
    everything = read_events(client, f"/v1/runs/{run['id']}/events", org.headers)
    assert [(e["seq"], e["type"]) for e in everything] == [(e["seq"], e["type"]) for e in seen]
    # One token per stream opened: the reconnect took a fresh one.
    assert state["tokens"] == len(issued) >= 2 and len(set(issued)) == len(issued)
