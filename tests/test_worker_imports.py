"""What a worker imports at start-up: the provider SDKs and `mcp` wait until a run needs them.

Importing `runtime.celery_app` once took ~6 s, half of it the `openai` and `anthropic` SDKs that an
offline run never touches; a chaos-killed worker's replacement paid it before taking a run."""

from __future__ import annotations

import json
import subprocess
import sys

import anthropic
import httpx2
import openai

from core.settings import ModelSettings
from orchestrator.models import describe_error, is_transient, resolve_model

LAZY = ("openai", "anthropic", "langchain_openai", "langchain_anthropic", "mcp")


def _loaded_after(statement: str) -> list[str]:
    probe = f"import sys, json\n{statement}\nprint(json.dumps(sorted(m for m in {LAZY!r} if m in sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


def test_importing_the_worker_app_loads_no_provider_sdk_nor_mcp() -> None:
    assert _loaded_after("import runtime.celery_app") == []


def test_an_offline_model_loads_no_provider_sdk() -> None:
    statement = ("from core.settings import ModelSettings\nfrom orchestrator.models import resolve_model\n"
                 "resolve_model('offline:default', ModelSettings())")
    assert _loaded_after(statement) == []


def test_provider_errors_are_still_classified_once_their_sdk_is_loaded() -> None:
    # This process imported both SDKs above; `is_transient`/`describe_error` see their errors.
    model = resolve_model("openai:gpt-x", ModelSettings(openai_base_url="http://127.0.0.1:9/v1"))
    assert type(model).__module__.startswith("langchain_openai")
    request = httpx2.Request("POST", "http://127.0.0.1:9/v1")
    assert is_transient(openai.APIConnectionError(request=request))
    assert describe_error(anthropic.APITimeoutError(request=request)).startswith("anthropic: timed out")
    limited = openai.RateLimitError("slow down", response=httpx2.Response(429, request=request),
                                    body=None)
    assert is_transient(limited)
    assert describe_error(limited).startswith("openai: rate limited (429)")
