"""Driving the web console (`/console`) in headless Chromium for tests/test_console.py: a page
signed in with a key, whose console errors and uncaught exceptions are collected, and
screenshots at the two widths the console is checked at (1280 and 360 px), saved under
`artifacts/console/` (ignored by git) for people to look at."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
WAIT_MS = 60_000
ARTIFACTS = Path(os.environ.get("AGENTOS_ARTIFACTS", Path(__file__).resolve().parents[1] / "artifacts")) / "console"
WIDTHS = (1280, 360)


def require_chromium() -> None:
    if CHROMIUM.exists():
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{CHROMIUM} is missing; .ci/run installs the chromium package for this test")
    pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium); this test runs in CI")


@dataclass
class Console:
    page: Page
    url: str
    errors: list[str] = field(default_factory=list)
    # Failed requests the test provokes on purpose (a viewer's forced write), by URL part.
    # The agent editor asks for the org's providers and falls back to a built-in list on 404.
    expected_failures: list[str] = field(default_factory=lambda: ["/v1/providers"])

    def sign_in(self, key: str) -> None:
        self.page.goto(self.url + "/console")
        self.page.fill("input[name=key]", key)
        self.page.click("#key-sign-in button[type=submit]")
        self.page.wait_for_selector("#top:not([hidden]) #role:not(:empty)", timeout=WAIT_MS)

    def go(self, hash_: str) -> None:
        self.page.evaluate("h => { location.hash = h; }", hash_)

    def screenshot(self, name: str) -> list[Path]:
        """The current page at each width, full length."""
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        paths = []
        for width in WIDTHS:
            self.page.set_viewport_size({"width": width, "height": 900})
            self.page.wait_for_timeout(100)
            path = ARTIFACTS / f"{name}-{width}.png"
            self.page.screenshot(path=str(path), full_page=True)
            paths.append(path)
        self.page.set_viewport_size({"width": 1280, "height": 900})
        return paths

    def assert_clean(self) -> None:
        """No uncaught exception, no unhandled rejection, no console error but the expected ones."""
        unexpected = [e for e in self.errors if not any(part in e for part in self.expected_failures)]
        assert unexpected == [], unexpected


@contextmanager
def console(url: str) -> Iterator[Console]:
    require_chromium()
    for stale in ARTIFACTS.glob("failure.*"):
        stale.unlink()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(WAIT_MS)
            c = Console(page, url)

            def on_console(message: ConsoleMessage) -> None:
                if message.type == "error":
                    c.errors.append(f"{message.text} @ {message.location.get('url', '')}")

            page.on("console", on_console)
            page.on("pageerror", lambda error: c.errors.append(f"pageerror: {error}"))
            try:
                yield c
            except BaseException:
                # What the page showed when the test failed, next to the screenshots.
                ARTIFACTS.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "failure.png"), full_page=True)
                (ARTIFACTS / "failure.txt").write_text(page.inner_text("body") + "\n\nerrors:\n" + "\n".join(c.errors))
                raise
        finally:
            browser.close()


def seqs_in(page: Page) -> list[int]:
    """Every event seq the timeline rendered an element for (each must appear once)."""
    return [int(s) for s in page.eval_on_selector_all("#timeline [data-seq]", "els => els.map(e => e.dataset.seq)")]


def words(n: int) -> str:
    return " ".join(f"word{i}" for i in range(n))

