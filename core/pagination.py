"""Cursor pagination over time-ordered ids: newest first, the cursor is the last id seen."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

from core.ids import is_id

# A row with an "id" (a dict from `dict_row`, or one of the stores' TypedDicts).
R = TypeVar("R", bound=Mapping[str, Any])

DEFAULT_LIMIT = 50
MAX_LIMIT = 200


class BadCursor(ValueError):
    pass


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(last_id.encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> str | None:
    if not cursor:
        return None
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = base64.urlsafe_b64decode(padded.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadCursor("cursor is not one this API returned") from exc
    if not is_id(value):
        raise BadCursor("cursor is not one this API returned")
    return value


def page(rows: Sequence[R], limit: int) -> tuple[list[R], str | None]:
    """Rows were fetched with `LIMIT limit + 1`; split off the extra and make the next cursor."""
    data = list(rows[:limit])
    next_cursor = encode_cursor(str(data[-1]["id"])) if len(rows) > limit and data else None
    return data, next_cursor
