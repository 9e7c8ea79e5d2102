"""The `web_fetch` skill: fetch a URL and return its readable text.

The request goes through `core.outbound` (the SSRF guard, the operator's timeouts and size
limit), accepts text-like content types only, and turns HTML into plain text with Beautiful Soup
(scripts, styles and navigation dropped; headings, paragraphs and list items kept as lines).
Every failure is a SkillError the model reads; the run goes on."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from bs4 import BeautifulSoup
from pydantic import Field

from core.outbound import OutboundError, OutboundResponse
from skills.skill import SkillContext, SkillError, skill

# What can be read as text. Anything else (images, PDFs, archives) is refused unread.
TEXT_TYPES = ("text/", "application/json", "application/xhtml+xml", "application/xml", "application/rss+xml",
              "application/atom+xml", "application/ld+json")
_ACCEPT = "text/html,application/xhtml+xml,text/plain;q=0.9,application/json;q=0.8,*/*;q=0.1"
# Elements that never hold the page's text.
_DROP = ("script", "style", "noscript", "template", "svg", "canvas", "iframe", "object", "embed", "nav", "footer",
         "aside", "form", "button", "select")
_HEADINGS = {"h1": "# ", "h2": "## ", "h3": "### "}
_BLOCKS = ("p", "div", "section", "article", "main", "header", "h1", "h2", "h3", "h4", "h5", "h6", "li", "ul",
           "ol", "dl", "dt", "dd", "tr", "table", "pre", "blockquote", "hr", "figure", "figcaption", "address")
_BREAK = "\u2029"  # a paragraph separator no page text needs: marks block boundaries until the end

DESCRIPTION = (
    "Fetch a web page (http or https URL) and return its readable text: title, then the text with "
    "headings marked '#'. Only text content (HTML, plain text, JSON, XML) can be fetched; internal "
    "network addresses are refused. Long pages are cut at `max_chars` (see `truncated`)."
)


def html_to_text(markup: str) -> tuple[str, str]:
    """(title, readable text) of an HTML document: one line per block (paragraph, heading, list
    item, ...), the words inside a block joined by single spaces."""
    soup = BeautifulSoup(markup, "html.parser")
    title = " ".join(soup.title.get_text(" ").split()) if soup.title else ""
    for tag in soup.find_all(["head", *_DROP]):
        tag.decompose()
    for name, mark in _HEADINGS.items():
        for heading in soup.find_all(name):
            heading.insert(0, mark)
    for item in soup.find_all("li"):
        item.insert(0, "- ")
    for cell in soup.find_all(["td", "th"]):
        cell.insert_after(" ")
    for tag in soup.find_all(_BLOCKS):
        tag.insert_before(_BREAK)
        tag.insert_after(_BREAK)
    for tag in soup.find_all("br"):
        tag.replace_with(_BREAK)
    root = soup.find("main") or soup.find("article") or soup.body or soup
    blocks = (" ".join(block.split()) for block in root.get_text("").split(_BREAK))
    return title, "\n".join(block for block in blocks if block)


def _readable(response: OutboundResponse) -> tuple[str, str]:
    body = response.text()
    if response.content_type in ("text/html", "application/xhtml+xml") or body.lstrip()[:15].lower().startswith(
            ("<!doctype html", "<html")):
        return html_to_text(body)
    return "", body


@skill(name="web_fetch", description=DESCRIPTION)
async def web_fetch(
    ctx: SkillContext,
    url: Annotated[str, Field(description="The http(s) URL to fetch.", min_length=1, max_length=2000)],
    max_chars: Annotated[int | None, Field(description="Cut the text at this many characters (default: the "
                                                       "operator's limit).", ge=100)] = None,
    timeout_s: Annotated[float | None, Field(description="Give up after this many seconds (default and upper "
                                                         "bound: the operator's limit).", gt=0)] = None,
) -> dict[str, Any]:
    settings = ctx.require_infra().settings
    limit = min(max_chars or settings.web.fetch_max_chars, settings.web.fetch_max_chars)
    timeout = min(timeout_s or settings.outbound.timeout_s, settings.outbound.timeout_s)
    try:
        async with ctx.outbound() as http:
            response = await http.request("GET", url, headers={"Accept": _ACCEPT}, content_types=TEXT_TYPES,
                                          timeout_s=timeout)
        response.raise_for_status("The page's server")
    except OutboundError as exc:
        raise SkillError(f"Could not fetch {url}: {exc}") from None
    # Parsing a large page takes a moment: off the event loop, which also serves the run's heartbeat.
    title, text = await asyncio.to_thread(_readable, response)
    return {"url": response.url, "status": response.status, "content_type": response.content_type,
            "title": title, "text": text[:limit], "truncated": len(text) > limit}
