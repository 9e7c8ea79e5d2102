"""The text of an uploaded file, for the knowledge base: plain text and markdown as they are, PDF
through pypdf (its text layer; a scan without one has none), HTML through BeautifulSoup (the
visible text, headings kept as markdown headings so chunks know their section)."""

from __future__ import annotations

import io
import logging
from typing import Literal

from bs4 import BeautifulSoup

DocumentType = Literal["text/plain", "text/markdown"]
# What `to_text` reads, by the file's (sniffed) content type.
READABLE = ("text/plain", "text/markdown", "text/csv", "application/json", "text/html", "application/pdf")
_HEADINGS = ("h1", "h2", "h3", "h4", "h5", "h6")
_INVISIBLE = ("script", "style", "noscript", "template", "head")


class UnreadableDocument(ValueError):
    """The file's content does not read as a document."""


class UnsupportedDocument(UnreadableDocument):
    """Files of this type cannot become documents."""


def _html(data: bytes) -> str:
    soup = BeautifulSoup(data, "html.parser")
    for tag in soup.find_all(_INVISIBLE):
        tag.decompose()
    for heading in soup.find_all(_HEADINGS):
        level = int(heading.name[1])
        heading.replace_with(f"\n\n{'#' * level} {heading.get_text(' ', strip=True)}\n\n")
    lines = (line.strip() for line in soup.get_text("\n").splitlines())
    text = "\n".join(lines)
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip()


def _pdf(data: bytes) -> str:
    from pypdf import PdfReader  # imported when a PDF comes: most processes never read one
    from pypdf.errors import PdfReadError

    logging.getLogger("pypdf").setLevel(logging.ERROR)  # it warns about every small malformation
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise UnreadableDocument("the PDF is encrypted; upload it without a password")
        pages = [(page.extract_text() or "").strip() for page in reader.pages]
    except PdfReadError as exc:
        raise UnreadableDocument(f"the PDF does not read ({exc})") from None
    return "\n\n".join(page for page in pages if page)


def to_text(data: bytes, content_type: str) -> tuple[str, DocumentType]:
    """(the text of a file of `content_type`, the document type it is chunked as)."""
    if content_type == "application/pdf":
        text, kind = _pdf(data), "text/plain"
    elif content_type == "text/html":
        text, kind = _html(data), "text/markdown"
    elif content_type in READABLE:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UnreadableDocument("the file is not UTF-8 text") from None
        kind = "text/markdown" if content_type == "text/markdown" else "text/plain"
    else:
        raise UnsupportedDocument(f"a file of type {content_type!r} cannot become a document; upload "
                                  f"{', '.join(READABLE)}")
    text = text.replace("\x00", "")
    if not text.strip():
        raise UnreadableDocument("the file has no text (a scanned PDF needs OCR first)")
    return text, kind  # type: ignore[return-value]
