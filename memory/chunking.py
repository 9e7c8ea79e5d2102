"""Deterministic chunking of knowledge-base documents: pure functions, no IO.

Markdown (`text/markdown`) is split at ATX headings (`#` … `######`, not inside fenced code),
then at blank lines into paragraphs (a fenced code block stays one paragraph). Each chunk keeps
the path of headings above it (`"Guide > Install > Linux"`): as `Chunk.heading`, and as the first
line of `Chunk.text`, so that the embedding (and whoever reads the recalled chunk) knows which
section it came from. Plain text (`text/plain`) is split into paragraphs only.

Paragraphs are packed into chunks of at most `chunk_chars` characters. A paragraph longer than
that is split at sentence boundaries (then at spaces, then anywhere), and each of its pieces
after the first starts with the last `overlap_chars` of the previous one (from a word boundary),
so that a sentence cut in two is still found whole in one of them. The same input always gives
the same chunks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

CONTENT_TYPES = ("text/plain", "text/markdown")
HEADING_SEPARATOR = " > "

_HEADING_RE = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE_RE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SENTENCE_END_RE = re.compile(r"(?<=[.!?…。！？])[\"')\]]*\s+")


@dataclass(frozen=True)
class Chunk:
    """One piece of a document: `text` is what is embedded and stored (heading line included)."""

    index: int
    text: str
    heading: str | None = None


@dataclass(frozen=True)
class _Section:
    heading: str | None
    paragraphs: list[str]


def chunk_document(content: str, content_type: str, chunk_chars: int, overlap_chars: int) -> list[Chunk]:
    """The chunks of a document of `content_type` (`text/markdown` or `text/plain`)."""
    if content_type not in CONTENT_TYPES:
        raise ValueError(f"unknown content type {content_type!r}: use {' or '.join(CONTENT_TYPES)}")
    if chunk_chars < 1:
        raise ValueError("chunk_chars must be at least 1")
    text = content.replace("\r\n", "\n").replace("\r", "\n")
    sections = _markdown_sections(text) if content_type == "text/markdown" else [_Section(None, _paragraphs(text))]
    pieces: list[tuple[str, str | None]] = []
    for section in sections:
        prefix = f"{section.heading}\n\n" if section.heading else ""
        # The heading line shares the budget, but never leaves less than half of it for the body.
        budget = max(chunk_chars - len(prefix), chunk_chars // 2, 1)
        pieces.extend((prefix + body, section.heading) for body in _pack(section.paragraphs, budget, overlap_chars))
    if not pieces and text.strip():  # headings only: keep them as the text
        pieces = [(body, None) for body in _pack([text.strip()], chunk_chars, overlap_chars)]
    return [Chunk(index=i, text=body, heading=heading) for i, (body, heading) in enumerate(pieces)]


def _markdown_sections(text: str) -> list[_Section]:
    """Sections between ATX headings, each with its heading path and its paragraphs."""
    sections: list[_Section] = []
    path: list[tuple[int, str]] = []
    lines: list[str] = []
    fence: str | None = None

    def close() -> None:
        paragraphs = _paragraphs("\n".join(lines), fenced=True)
        if paragraphs:
            heading = HEADING_SEPARATOR.join(title for _, title in path) or None
            sections.append(_Section(heading, paragraphs))
        lines.clear()

    for line in text.split("\n"):
        fence_match = _FENCE_RE.match(line)
        if fence is not None:
            if fence_match and fence_match.group(1)[0] == fence[0] and len(fence_match.group(1)) >= len(fence):
                fence = None
            lines.append(line)
            continue
        if fence_match:
            fence = fence_match.group(1)
            lines.append(line)
            continue
        heading = _HEADING_RE.match(line)
        if heading:
            close()
            level, title = len(heading.group(1)), (heading.group(2) or "").strip()
            path = [(lvl, t) for lvl, t in path if lvl < level]
            if title:
                path.append((level, title))
            continue
        lines.append(line)
    close()
    return sections


def _paragraphs(text: str, *, fenced: bool = False) -> list[str]:
    """Blocks separated by blank lines, stripped; with `fenced`, a code fence is never split."""
    paragraphs: list[str] = []
    current: list[str] = []
    fence: str | None = None
    for line in text.split("\n"):
        fence_match = _FENCE_RE.match(line) if fenced else None
        if fence is not None:
            current.append(line)
            if fence_match and fence_match.group(1)[0] == fence[0] and len(fence_match.group(1)) >= len(fence):
                fence = None
            continue
        if fence_match:
            fence = fence_match.group(1)
            current.append(line)
            continue
        if line.strip():
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current).strip())
            current = []
    if current:
        paragraphs.append("\n".join(current).strip())
    return [p for p in paragraphs if p]


def _pack(paragraphs: list[str], budget: int, overlap_chars: int) -> list[str]:
    """Whole paragraphs packed up to `budget` characters; a longer one is split on its own."""
    out: list[str] = []
    current = ""
    for paragraph in paragraphs:
        if len(paragraph) > budget:
            if current:
                out.append(current)
                current = ""
            out.extend(split_long(paragraph, budget, overlap_chars))
        elif not current:
            current = paragraph
        elif len(current) + 2 + len(paragraph) <= budget:
            current = f"{current}\n\n{paragraph}"
        else:
            out.append(current)
            current = paragraph
    if current:
        out.append(current)
    return out


def split_long(text: str, budget: int, overlap_chars: int) -> list[str]:
    """`text` in pieces of at most `budget` characters, cut at sentence ends where possible;
    every piece after the first starts with up to `overlap_chars` from the end of the one before."""
    overlap = max(0, min(overlap_chars, budget // 2))
    units: list[str] = []
    for sentence in _sentences(text):
        units.extend(_hard_split(sentence, max(budget - overlap - 1, (budget + 1) // 2, 1)))
    pieces: list[str] = []
    current = ""
    for unit in units:
        if not current:
            current = unit
        elif len(current) + 1 + len(unit) <= budget:
            current = f"{current} {unit}"
        else:
            pieces.append(current)
            tail = _tail(current, overlap)
            current = f"{tail} {unit}" if tail and len(tail) + 1 + len(unit) <= budget else unit
    if current:
        pieces.append(current)
    return pieces


def _sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END_RE.split(text) if s.strip()]


def _hard_split(text: str, size: int) -> list[str]:
    """`text` in pieces of at most `size` characters, cut at the last space in the second half
    of each window, else exactly at `size`."""
    out: list[str] = []
    rest = text
    while len(rest) > size:
        cut = rest.rfind(" ", size // 2, size + 1)
        if cut <= 0:
            cut = size
        out.append(rest[:cut].rstrip())
        rest = rest[cut:].lstrip()
    if rest:
        out.append(rest)
    return out


def _tail(text: str, size: int) -> str:
    """At most the last `size` characters of `text`: whole sentences when one fits, else from a
    word boundary when it can."""
    if size <= 0:
        return ""
    if len(text) <= size:
        return text.strip()
    tail = text[-size:]
    sentence_end = _SENTENCE_END_RE.search(tail)
    if sentence_end and tail[sentence_end.end() :].strip():
        return tail[sentence_end.end() :].strip()
    if not text[-size - 1].isspace():
        space = tail.find(" ")
        if space != -1:
            tail = tail[space + 1 :]
    return tail.strip()
