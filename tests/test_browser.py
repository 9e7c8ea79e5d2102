"""A web app on another origin, in a real browser (headless Chromium driven by Playwright),
running the recipes of docs/api.md as written: its page calls the API through CORS with a key,
gets a stream token from its own backend and follows a run with `EventSource` (or, the other
recipe, streams with `fetch` and the header); the test cuts every connection mid-stream, the
page reconnects (with a fresh token and `?after=<last seq>`, or `Last-Event-ID`), and it shows
every event exactly once.

Playwright drives Debian's `chromium` (`executable_path`); it never downloads a browser. Outside
CI the tests skip when /usr/bin/chromium is missing; in CI (`.ci/run` installs it) they must run."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
from core.events import EVENT_TYPES
from tests.helpers import Org, RsaKeys, make_settings, serving, start_run
from tests.sse import read_events
from tests.tcp_proxy import TcpProxy

pytestmark = [pytest.mark.usefixtures("worker"), pytest.mark.timeout(120)]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 60_000
WRITE = 'call: file_manager {"action": "write", "path": "a.txt", "content": "from the browser"}'

DOCS = Path(__file__).resolve().parents[1] / "docs" / "api.md"

# The web app's page: the recipes of docs/api.md ("Browsers: CORS and stream tokens") run as
# written, plus a `render` that records every event it is given (never de-duplicating, so the
# test sees any event delivered twice) and the code that starts them.
PAGE = """<!doctype html>
<html><body><script>
const CONFIG = %(config)s;
const AGENTOS = CONFIG.api;
window.state = {agents: null, seen: [], finished: false};
function render(event) { state.seen.push({seq: event.seq, type: event.type}); }
</script>
<script>%(recipe)s</script>
<script>%(start)s</script>
</body></html>
"""

# With a stream token: call the API through CORS with a key, then follow the run (docs' `follow`).
EVENT_SOURCE_START = """
(async () => {
  const r = await fetch(AGENTOS + "/v1/agents", {headers: {Authorization: "Bearer " + CONFIG.key}});
  state.agents = {status: r.status, names: (await r.json()).data.map(a => a.name),
                  rateLimit: r.headers.get("RateLimit-Limit")};
  follow(CONFIG.run);
})();
"""

# With the header: the docs' `stream`, called again after each drop with the last seq seen.
FETCH_START = """
(async () => {
  const terminal = ["run.succeeded", "run.failed", "run.cancelled", "run.timed_out"];
  const ended = () => state.seen.length > 0 && terminal.includes(state.seen.at(-1).type);
  while (!ended()) {
    const after = state.seen.length ? state.seen.at(-1).seq : null;
    try { await stream(`/v1/runs/${CONFIG.run}/events`, CONFIG.key, after, render); }
    catch (e) { await new Promise((resolve) => setTimeout(resolve, 200)); }   // the API is unreachable for a moment
  }
  state.finished = true;
})();
"""


def recipe(heading: str) -> str:
    """The first JavaScript block of docs/api.md after `heading`."""
    text = DOCS.read_text()
    after = text[text.index(heading):]
    start = after.index("```js\n") + len("```js\n")
    return after[start:after.index("```", start)]


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing; .ci/run installs the chromium package for this test")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); this test runs in CI")


def web_app(api_url: str, key: str, page: str, issued: list[str]) -> Starlette:
    """The integrating web app: its page, and the backend route that asks the API for a stream
    token with the org's key (the key a real app keeps on its server)."""

    async def home(request: Request) -> Response:
        return HTMLResponse(page)

    async def stream_token(request: Request) -> Response:
        try:
            async with httpx.AsyncClient(timeout=10) as api:
                r = await api.post(f"{api_url}/v1/stream-tokens", json={"run_id": request.query_params["run_id"]},
                                   headers={"Authorization": f"Bearer {key}"})
        except httpx.HTTPError as exc:  # the API is unreachable for a moment (the test cut it): the page retries
            return JSONResponse({"error": str(exc)}, status_code=502)
        if r.status_code == 200:
            issued.append(r.json()["token"])
        return JSONResponse(r.json(), status_code=r.status_code)

    return Starlette(routes=[Route("/", home), Route("/stream-token", stream_token)])


@pytest.fixture
def api_url(stack: StackUrls, rsa_keys: RsaKeys) -> Iterator[str]:
    """The API under uvicorn; pages on any 127.0.0.1 port may call it."""
    settings = make_settings(stack, rsa_keys, api={"max_body_bytes": 64 * 1024, "cors_origins": ["http://127.0.0.1:*"]})
    with serving(create_app(settings)) as served:
        yield served.url


@dataclass
class Watched:
    """What the page showed of a run it followed through a cut, and what it took."""

    run_id: str
    state: dict[str, Any]
    before_cut: int
    tokens: list[str] = field(default_factory=list)
    connections: int = 0


def _until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_MS / 1000
    while not check():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.05)


def watch_through_a_cut(client: TestClient, org: Org, api_url: str, profile: Path, recipe_js: str,
                        start_js: str, done: str, *, tokens: bool) -> Watched:
    """A page of another origin runs `recipe_js` and `start_js` to follow a run that waits for
    approval halfway; there the test resets every connection to the API, then approves."""
    _require_chromium()
    session = org.create_session(str(org.create_agent(skills=["file_manager"])["id"]))
    run = start_run(org, str(session["id"]), WRITE)
    issued: list[str] = []
    console: list[str] = []
    # The API's public address, as the page and the web app's backend know it: a proxy the test can cut.
    with TcpProxy(int(api_url.rsplit(":", 1)[1])) as proxy:
        public = f"http://127.0.0.1:{proxy.port}"
        config = {"api": public, "key": org.key, "run": run["id"]}
        page_html = PAGE % {"config": json.dumps(config), "recipe": recipe_js, "start": start_js}
        with serving(web_app(public, org.key, page_html, issued)) as web, sync_playwright() as pw:
            assert web.url != public  # the page's origin is not the API's
            browser = pw.chromium.launch_persistent_context(
                str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page()
                page.on("console", lambda m: console.append(m.text))
                page.goto(web.url + "/")
                page.wait_for_function("state.seen.some(e => e.type === 'confirmation.required')", timeout=WAIT_MS)
                before = page.evaluate("state.seen.length")
                tokens_before, connections_before = len(issued), proxy.connections
                proxy.down()  # every open connection is reset, mid-stream
                proxy.up()
                # The page reconnects by itself (with a fresh token, when it uses them)...
                _until(lambda: proxy.connections > connections_before and (not tokens or len(issued) > tokens_before),
                       f"the page reconnected; console: {console}")
                # ...and sees the rest of the run, which goes on only now.
                [pending] = [c for c in client.get("/v1/tool-calls", params={"status": "pending"},
                                                   headers=org.headers).json()["data"] if c["run_id"] == run["id"]]
                assert client.post(f"/v1/tool-calls/{pending['id']}/approve", json={},
                                   headers=org.headers).status_code == 200
                page.wait_for_function(done, timeout=WAIT_MS)
                state = page.evaluate("state")
            finally:
                browser.close()
    watched = Watched(run["id"], state, before, issued, proxy.connections)
    assert_every_event_once(client, org, watched)
    return watched


def assert_every_event_once(client: TestClient, org: Org, watched: Watched) -> None:
    seen = watched.state["seen"]
    seqs = [e["seq"] for e in seen]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gap or repeat: {seqs}"
    assert seen[-1]["type"] == "run.succeeded" and 0 < watched.before_cut < len(seen)
    everything = read_events(client, f"/v1/runs/{watched.run_id}/events", org.headers)
    assert [(e["seq"], e["type"]) for e in everything] == [(e["seq"], e["type"]) for e in seen]


def test_a_page_follows_a_run_with_eventsource_and_stream_tokens_through_a_cut(
    client: TestClient, org: Org, api_url: str, tmp_path: Path
):
    watched = watch_through_a_cut(client, org, api_url, tmp_path / "profile",
                                  recipe("### Following a run from a page: the recipe"), EVENT_SOURCE_START,
                                  "state.seen.some(e => e.type === 'run.succeeded')", tokens=True)
    agents = watched.state["agents"]
    assert agents["status"] == 200 and agents["names"], "the page called the API through CORS with a key"
    assert agents["rateLimit"], "an exposed header is readable by the page"
    # A fresh token for each EventSource: the one before the cut and at least one after.
    assert len(watched.tokens) >= 2 and len(set(watched.tokens)) == len(watched.tokens)


def test_a_page_follows_a_run_with_fetch_and_the_header_through_a_cut(
    client: TestClient, org: Org, api_url: str, tmp_path: Path
):
    watched = watch_through_a_cut(client, org, api_url, tmp_path / "profile",
                                  recipe("### Without a token: `fetch` with the header"), FETCH_START,
                                  "state.finished", tokens=False)
    assert watched.tokens == []


def test_the_recipe_listens_to_every_event_type():
    listed = recipe("### Following a run from a page: the recipe")
    assert all(f'"{t}"' in listed for t in EVENT_TYPES), "a type the page does not listen to is never shown"
