"""JSON responses (orjson; datetimes as RFC 3339 UTC) and the error body.

Rendering cannot fail on stored data: what orjson refuses (nesting past its 254 levels, integers
past 64 bits, strings that are not valid Unicode, all possible in rows written before today's
limits or by other writers) is rendered from a safe copy instead (`json_limits.renderable`), and
logged, never answered with 500.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time
from typing import Any

import orjson
from pydantic import BaseModel
from starlette.responses import Response

from api import json_limits
from core.errors import ApiError

log = logging.getLogger("agentos.api")

# Deep enough for any value the API accepts (settings.api.max_json_depth <= 128, plus the
# envelopes), well under orjson's limit.
RENDER_MAX_DEPTH = 200
_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME  # datetimes come to `_default`, to be made UTC
_fallbacks = 0


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, (date, time)):
        return value.isoformat()
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def render_json(content: Any) -> bytes:
    """`content` as JSON bytes; never raises for data read from the database."""
    global _fallbacks
    try:
        return orjson.dumps(content, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError as exc:
        # Logged in full once per process; later ones would only repeat it on every read.
        _fallbacks += 1
        log.log(logging.WARNING if _fallbacks == 1 else logging.DEBUG,
                "a response held a value JSON cannot render (%s); rendered a safe copy instead "
                "(deep parts truncated, big integers as strings); fallback #%d in this process", exc, _fallbacks)
        return orjson.dumps(json_limits.renderable(content, RENDER_MAX_DEPTH), default=_default, option=_OPTIONS)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return render_json(content)


def json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(content, status_code=status, headers=headers)


def error(exc: ApiError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers or None)


def typed(model: type[BaseModel], content: Any, status: int = 200, headers: dict[str, str] | None = None
          ) -> JSONResponse:
    """`content` as `model` says: only the fields it declares, each of its declared type. What was
    absent stays absent (`exclude_unset`), so the body is exactly what the schema allows."""
    body = model.model_validate(content).model_dump(exclude_unset=True, by_alias=True)
    return JSONResponse(body, status_code=status, headers=headers)
