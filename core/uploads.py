"""What an upload is called and what it is, decided by the server: the client's file name made
safe (`safe_name`) and the content type read from the bytes themselves (`sniff`), never taken
from the client's headers."""

from __future__ import annotations

import json
import re
import unicodedata

MAX_NAME_CHARS = 200

# Characters kept in a name: letters and digits of any script, and a few separators. Everything
# else (slashes, backslashes, control characters, quotes, shell metacharacters) becomes `_`.
_UNSAFE = re.compile(r"[^\w.\- ]", re.UNICODE)
_RESERVED = {"", ".", ".."}

# (magic prefix, type) — the binary formats worth telling apart; the rest is octet-stream.
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"%PDF-", "application/pdf"),
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
    (b"PAR1", "application/vnd.apache.parquet"),
    (b"PK\x03\x04", "application/zip"),
    (b"\x1f\x8b", "application/gzip"),
    (b"SQLite format 3\x00", "application/vnd.sqlite3"),
)
_TEXT_BY_SUFFIX = {".csv": "text/csv", ".md": "text/markdown", ".markdown": "text/markdown", ".html": "text/html",
                   ".htm": "text/html", ".json": "application/json", ".tsv": "text/tab-separated-values"}


def safe_name(name: str | None) -> str:
    """The last path component of `name`, normalised (NFC), with unsafe characters replaced,
    without leading dots or spaces (no hidden files, no `..`), at most 200 characters; `file`
    when nothing is left."""
    text = unicodedata.normalize("NFC", name or "")
    text = text.replace("\\", "/").rsplit("/", 1)[-1]
    text = _UNSAFE.sub("_", text).strip().lstrip(". ")
    if len(text) > MAX_NAME_CHARS:
        stem, dot, suffix = text.rpartition(".")
        keep = suffix if dot and 0 < len(suffix) <= 16 else ""
        text = (text[: MAX_NAME_CHARS - len(keep) - 1] + "." + keep) if keep else text[:MAX_NAME_CHARS]
    return text if text not in _RESERVED else "file"


def _is_text(data: bytes) -> bool:
    if b"\x00" in data[:8192]:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def sniff(data: bytes, name: str) -> str:
    """The content type of `data`: by its magic bytes, else UTF-8 text (typed by the name's suffix
    when the bytes agree: JSON must parse), else `application/octet-stream`."""
    for magic, kind in _MAGIC:
        if data.startswith(magic):
            return kind
    if not _is_text(data):
        return "application/octet-stream"
    suffix = name[name.rfind("."):].lower() if "." in name else ""
    kind = _TEXT_BY_SUFFIX.get(suffix, "text/plain")
    if kind == "application/json":
        try:
            json.loads(data)
        except ValueError:
            return "text/plain"
    return kind
