"""The `web_search` skill: search the web through the configured provider and return results as
`{title, url, snippet}`.

Providers (`AGENTOS_WEB__SEARCH_PROVIDER`, or the org's own `web_search_provider` setting):
`offline:` (deterministic fixture results, for tests and the dev stack; no network),
`searxng:<base URL>` (a SearXNG instance's JSON API), `brave:` (the Brave Search API) and
`tavily:` (the Tavily API, over HTTP through the guard rather than its own client); `brave:<URL>`
and `tavily:<URL>` name another endpoint of the same API. Brave and Tavily need a key: the org's
secret `web_search_api_key` when it has one, else the operator's `AGENTOS_WEB__SEARCH_API_KEY`.
Requests go through `core.outbound` with retries on 429/5xx; results are cached per org and query
in Redis. Failures reach the model as text."""

from __future__ import annotations

import hashlib
import html
import json
import logging
import re
from typing import Annotated, Any, TypedDict

from pydantic import Field

from core.outbound import OutboundError, OutboundResponse
from core.settings import WebSettings
from core.tenancy import web_search_cache_key
from skills.skill import SkillContext, SkillError, skill

log = logging.getLogger("agentos.skills")
MAX_RESULTS = 10
_TAG = re.compile(r"<[^>]+>")


class SearchResult(TypedDict):
    title: str
    url: str
    snippet: str


def _plain(text: object) -> str:
    """Provider snippets may carry markup (`<strong>`) and entities: plain text, one line."""
    return " ".join(html.unescape(_TAG.sub("", str(text or ""))).split())


def offline_results(query: str, count: int) -> list[SearchResult]:
    """Deterministic results for a query: the same query always gives the same list."""
    digest = hashlib.sha256(query.encode()).hexdigest()
    slug = "-".join(re.findall(r"[a-z0-9]+", query.lower()))[:60] or "query"
    return [SearchResult(title=f"{query} ({n}/{count}, offline result)",
                         url=f"https://example.org/offline/{slug}/{digest[:8]}-{n}",
                         snippet=f"Offline search result {n} for {query!r}. The offline provider makes these up "
                                 "for tests and the dev stack; set AGENTOS_WEB__SEARCH_PROVIDER for real results.")
            for n in range(1, count + 1)]


_NAMES = {"offline": "offline", "searxng": "SearXNG", "brave": "Brave", "tavily": "Tavily"}


def parse_provider(spec: str) -> tuple[str, str]:
    """(kind, URL) of a provider spec: `offline:`, `searxng:<base URL>`, `brave:`/`tavily:` (their
    public APIs) or `brave:<URL>`/`tavily:<URL>` (another endpoint of the same API)."""
    kind, _, rest = spec.strip().partition(":")
    if kind not in _NAMES or (kind == "searxng" and not rest):
        raise SkillError(f"web_search is misconfigured: the provider {spec!r} is not 'offline:', "
                         "'searxng:<base URL>', 'brave:' or 'tavily:'. Tell the operator; go on without searching.")
    return kind, rest.rstrip("/")


async def _api_key(ctx: SkillContext, web: WebSettings, name: str) -> str:
    own = await ctx.find_secret(web.search_api_key_secret)
    if own is not None:
        return own
    if web.search_api_key is not None:
        return web.search_api_key.get_secret_value()
    raise SkillError(f"web_search with {name} needs an API key: an admin can store it as the org secret "
                     f"{web.search_api_key_secret!r} (PUT /v1/secrets/{web.search_api_key_secret}), or the operator "
                     "sets AGENTOS_WEB__SEARCH_API_KEY.")


def _checked(response: OutboundResponse, name: str) -> Any:
    if response.status == 429:
        raise SkillError(f"The search provider ({name}) is rate limiting requests (HTTP 429); try again later or "
                         "go on without searching.")
    if response.status in (401, 403):
        raise SkillError(f"The search provider ({name}) refused the API key (HTTP {response.status}); an admin "
                         "should check it. Go on without searching.")
    if not response.ok:
        raise SkillError(f"The search provider ({name}) answered HTTP {response.status}; try again later or go on "
                         "without searching.")
    try:
        return response.json()
    except ValueError:
        raise SkillError(f"The search provider ({name}) sent a reply that is not JSON.") from None


async def _search(ctx: SkillContext, kind: str, base: str, query: str, count: int) -> list[SearchResult]:
    if kind == "offline":
        return offline_results(query, count)
    web = ctx.require_infra().settings.web
    name = _NAMES[kind]
    method, body = "GET", None
    params: dict[str, str | int] = {"q": query}
    headers = {"Accept": "application/json"}
    if kind == "searxng":
        url = f"{base}/search"
        params["format"] = "json"
    elif kind == "brave":
        url = base or web.brave_url
        params["count"] = count
        headers["X-Subscription-Token"] = await _api_key(ctx, web, name)
    else:
        method, url, params = "POST", base or web.tavily_url, {}
        body = {"query": query, "max_results": count, "search_depth": "basic"}
        headers["Authorization"] = f"Bearer {await _api_key(ctx, web, name)}"
    try:
        async with ctx.outbound() as http:
            response = await http.request(method, url, params=params or None, json=body, headers=headers,
                                          timeout_s=web.search_timeout_s, retries=web.search_retries,
                                          content_types=["application/json"])
    except OutboundError as exc:
        raise SkillError(f"The search provider ({name}) could not be reached: {exc} Go on without searching, or "
                         "try again later.") from None
    reply = _checked(response, name)
    found = (reply.get("web") or {}).get("results", []) if kind == "brave" else reply.get("results", [])
    if not isinstance(found, list):
        raise SkillError(f"The search provider ({name}) sent results in an unexpected shape.")
    snippet_key = "description" if kind == "brave" else "content"
    return [SearchResult(title=_plain(item.get("title")), url=str(item.get("url") or ""),
                         snippet=_plain(item.get(snippet_key)))
            for item in found if isinstance(item, dict) and item.get("url")][:count]


@skill(name="web_search", description=(
    "Search the web. Returns up to `count` results, each with a title, a URL and a snippet; "
    "use web_fetch to read a page."
))
async def web_search(
    ctx: SkillContext,
    query: Annotated[str, Field(description="What to search for.", min_length=1, max_length=500)],
    count: Annotated[int, Field(description="How many results at most.", ge=1, le=MAX_RESULTS)] = 5,
) -> dict[str, Any]:
    infra = ctx.require_infra()
    web = infra.settings.web
    # An org may have its own provider (`orgs.settings.web_search_provider`, set by the operator).
    spec = str((await ctx.org_settings()).get("web_search_provider") or web.search_provider)
    kind, base = parse_provider(spec)
    query = " ".join(query.split())
    key = web_search_cache_key(ctx.org_id, f"{spec}\n{count}\n{query}")
    if web.search_cache_ttl_s and kind != "offline":
        try:
            cached = await infra.redis.get(key)
        except Exception as exc:  # the cache is an optimisation: search without it
            log.warning("web_search cache unavailable: %s", type(exc).__name__)
            cached = None
        if cached:
            return {"query": query, "provider": kind, "results": json.loads(cached), "cached": True}
    results = await _search(ctx, kind, base, query, count)
    if web.search_cache_ttl_s and kind != "offline":
        try:
            await infra.redis.set(key, json.dumps(results), ex=web.search_cache_ttl_s)
        except Exception as exc:
            log.warning("web_search cache unavailable: %s", type(exc).__name__)
    return {"query": query, "provider": kind, "results": results, "cached": False}
