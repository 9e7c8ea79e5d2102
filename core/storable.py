"""Text Postgres can store: no NUL (U+0000) and no unpaired UTF-16 surrogates (U+D800–U+DFFF).

A model (or a provider's JSON) can produce both: `"\\u0000"` and `"\\ud800"` are valid JSON
escapes, but a `text` column refuses NUL, `jsonb` refuses `\\u0000`, and a lone surrogate is not
UTF-8 at all. The orchestrator decides at the model boundary what to do with such text (a tool
call carrying it is refused as a tool error the model reads; answer text is kept with the
characters replaced), and `core.events.append` passes every event payload through `storable`,
so no such character can end a run inside an insert.
"""

from __future__ import annotations

import re
from typing import Any, TypeVar

REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
# Shown to the model (and stored as the call's error) when a call's arguments hold such text.
REFUSAL = ("This call was not run: {where} holds characters that cannot be stored (NUL U+0000 or an unpaired "
           "surrogate U+D800-U+DFFF). Call the tool again without them.")

T = TypeVar("T")


def storable_text(text: str) -> str:
    """`text` with surrogate pairs joined into the character they encode and every NUL and
    unpaired surrogate replaced by U+FFFD."""
    if _UNSTORABLE.search(text) is None:
        return text
    joined = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    return joined.replace("\x00", REPLACEMENT)


def storable(value: T) -> T:
    """`value` (JSON-like: dicts, lists, strings, numbers) with `storable_text` applied to every
    string and key; the same object when nothing needed replacing."""
    found: Any = _clean(value)
    return found  # type: ignore[no-any-return]


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        items = [(_clean(k), _clean(v)) for k, v in value.items()]
        if all(k is k0 and v is v0 for (k, v), (k0, v0) in zip(items, value.items(), strict=True)):
            return value
        return dict(items)
    if isinstance(value, list | tuple):
        cleaned = [_clean(v) for v in value]
        if all(c is v for c, v in zip(cleaned, value, strict=True)):
            return value
        return type(value)(cleaned) if isinstance(value, tuple) else cleaned
    return value


def unstorable_at(value: Any, path: str = "args") -> str | None:
    """The path (`args.content`, `args.items[2]`) of the first string or key in `value` that
    holds a character Postgres cannot store; None when there is none."""
    if isinstance(value, str):
        return path if _UNSTORABLE.search(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            name = str(key)
            if _UNSTORABLE.search(name):
                return f"{path} (a key)"
            found = unstorable_at(item, f"{path}.{storable_text(name)}")
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            found = unstorable_at(item, f"{path}[{index}]")
            if found is not None:
                return found
    return None


def refusal(name: str, args: Any) -> str | None:
    """The tool error for a call whose name or arguments cannot be stored; None when they can."""
    where = "the tool name" if _UNSTORABLE.search(name) else unstorable_at(args)
    return None if where is None else REFUSAL.format(where=where)
