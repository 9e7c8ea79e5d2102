"""Walks over JSON that never recurse: how deep a client's body nests (read from its text, so a
body too deep for any parser still gets a field path), where it holds U+0000, and a copy of
stored data that `orjson` can always render.

Python and orjson both stop at some depth (orjson parses 1024 levels but renders only 254, the
standard library's recursion limit is about 1000), so every walk here keeps its own stack.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable
from datetime import date, datetime, time
from itertools import accumulate, count
from typing import Any

import orjson

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')  # escapes included
# A string or one of the structural characters; everything else is skipped.
_TOKEN = re.compile(_STRING.pattern + rb"|[\[\]{},:]")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_BRACKET_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
_INT64 = range(-(2**63), 2**64)  # what orjson renders as an integer


def _dotted(path: Iterable[str | int]) -> str:
    return ".".join(str(p) for p in path)


def _key(token: bytes) -> str:
    try:
        key = orjson.loads(token)
    except orjson.JSONDecodeError:
        return token[1:-1].decode("utf-8", "replace")
    return key if isinstance(key, str) else str(key)


def too_deep(raw: bytes, max_depth: int) -> str | None:
    """The path of the first array or object in the JSON text `raw` that is nested more than
    `max_depth` levels deep (the outermost value is level 1), or None. Reads the text, not a
    parsed value, so it works on bodies nested past any parser's limit.

    `raw` must be valid JSON, or a prefix of it that ends outside a string: an unterminated
    string would make the string pattern retry from every escaped quote (quadratic time)."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth or _max_nesting(raw) <= max_depth:
        return None
    path: list[str | int] = []  # per open container: the key or index being filled
    is_object: list[bool] = []
    last_string = b'""'
    for match in _TOKEN.finditer(raw):
        token = match.group()
        if token[0] == 0x22:  # '"'
            last_string = token
        elif token in (b"{", b"["):
            if len(is_object) == max_depth:
                return _dotted(path) or "body"
            is_object.append(token == b"{")
            path.append("" if token == b"{" else 0)
        elif token in (b"}", b"]"):
            if is_object:
                is_object.pop()
                path.pop()
        elif is_object and token == b":" and is_object[-1]:
            path[-1] = _key(last_string)
        elif is_object and token == b"," and not is_object[-1]:
            path[-1] = int(path[-1]) + 1
    return None


def _max_nesting(raw: bytes) -> int:
    """How deep the brackets outside strings nest, with C-speed steps only (no Python loop)."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    if not brackets:
        return 0
    # Opening brackets step 2, closing 0: after k brackets the depth is their sum minus k.
    depths: Iterable[int] = map(operator.sub, accumulate(brackets.translate(_BRACKET_STEPS)), count(1))
    return max(depths)


def nul_path(value: Any) -> str | None:
    """The path of the first string or key holding U+0000 (which Postgres cannot store)."""
    stack: list[tuple[Any, str, str | None]] = [(value, "", None)]  # (value, its path, its key)
    while stack:
        item, path, key = stack.pop()
        if key is not None and "\x00" in key:
            return path
        if isinstance(item, str):
            if "\x00" in item:
                return path
        elif isinstance(item, dict):
            children = [(v, f"{path}.{k}" if path else str(k), str(k)) for k, v in item.items()]
            stack.extend(reversed(children))
        elif isinstance(item, list):
            stack.extend(reversed([(v, f"{path}.{i}" if path else str(i), None) for i, v in enumerate(item)]))
    return None


def renderable(value: Any, max_depth: int) -> Any:
    """A copy of `value` that orjson renders whatever it holds: arrays and objects nested deeper
    than `max_depth` become a marker string, integers past 64 bits and strings that are not
    valid Unicode become strings, keys become strings, and unknown objects their `str()`."""
    marker = f"[truncated: nested more than {max_depth} levels deep]"
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any, int]] = [(value, root, 0, 1)]  # (value, parent, slot, depth)
    while stack:
        item, parent, slot, depth = stack.pop()
        if isinstance(item, (dict, list, tuple, set, frozenset)) and depth > max_depth:
            parent[slot] = marker
        elif isinstance(item, dict):
            copy: dict[str, Any] = {}
            parent[slot] = copy
            for k, v in item.items():
                key = _scalar(k) if isinstance(k, str) else str(k)
                copy[key] = None
                stack.append((v, copy, key, depth + 1))
        elif isinstance(item, (list, tuple, set, frozenset)):
            items = sorted(item, key=repr) if isinstance(item, (set, frozenset)) else item
            out: list[Any] = [None] * len(items)
            parent[slot] = out
            stack.extend((v, out, i, depth + 1) for i, v in enumerate(items))
        else:
            parent[slot] = _scalar(item)
    return root[0]


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, (bool, float, datetime, date, time)):
        return value
    if isinstance(value, int):
        return value if value in _INT64 else str(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate
            return value.encode("utf-8", "replace").decode("utf-8")
        return value
    return str(value)
