"""`python -m api.openapi_export`: print `/openapi.json` (sorted keys, two-space indent) without
starting a server, for clients to generate from (`clients/typescript/openapi.json`)."""

from __future__ import annotations

import sys
from typing import Any

import orjson

from api.app import _routes, _version
from api.openapi import build_openapi


def document() -> dict[str, Any]:
    return build_openapi(_routes(), _version())


def render(doc: dict[str, Any]) -> bytes:
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


if __name__ == "__main__":
    sys.stdout.buffer.write(render(document()))
