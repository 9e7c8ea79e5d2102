"""Knowledge from uploaded files (`POST /v1/knowledge {file_id}`): text, markdown, HTML and PDF
become documents, chunked and embedded like any other; deleting the file deletes the document and
its chunks."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from core.db import open_pool
from core.document_text import to_text
from core.settings import Settings
from core.tenancy import tenant_tx
from memory import knowledge
from tests.helpers import Org, error_of


def tiny_pdf(*pages: str) -> bytes:
    """A valid PDF with one line of Helvetica text per page (offsets computed, so readers agree)."""
    objects = ["<< /Type /Catalog /Pages 2 0 R >>", ""]
    kids = []
    for text in pages:
        stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
        objects.append(f"<< /Length {len(stream)} >>\nstream\n{stream.decode()}\nendstream")
        content = len(objects)
        objects.append(f"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content} 0 R "
                       "/Resources << /Font << /F1 << /Type /Font /Subtype /Type1 /BaseFont /Helvetica >> >> >> >>")
        kids.append(f"{len(objects)} 0 R")
    objects[1] = f"<< /Type /Pages /Kids [{' '.join(kids)}] /Count {len(kids)} >>"
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n{body}\nendobj\n".encode()
    xref = len(out)
    out += f"xref\n0 {len(objects) + 1}\n0000000000 65535 f \n".encode()
    out += "".join(f"{offset:010d} 00000 n \n" for offset in offsets).encode()
    out += f"trailer\n<< /Size {len(objects) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)


HTML = b"""<!doctype html><html><head><title>ignored</title><style>p{color:red}</style></head>
<body><h1>Refunds</h1><p>Refunds take <b>five</b> days.</p><script>var secret = 1;</script>
<h2>Exceptions</h2><p>Gift cards are final.</p></body></html>"""


def upload(org: Org, name: str, data: bytes) -> str:
    r = org.client.post("/v1/files", files={"file": (name, data)}, headers=org.headers)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def ingest(settings: Settings, org_id: str, document_id: str) -> str:
    """Ingest the document here and answer its final status. A worker of the suite may take
    the queued message first (this attempt then finds nothing pending): the status is the
    document's as stored, once it is no longer pending."""
    async def work() -> str:
        pool = await open_pool(settings.database)
        try:
            await knowledge.ingest(pool, settings, org_id, document_id)
            deadline = time.monotonic() + 30
            while True:
                async with tenant_tx(pool, org_id) as conn:
                    row = await (await conn.execute("SELECT status FROM knowledge_documents WHERE id = %s",
                                                    (document_id,))).fetchone()
                status = str(row["status"]) if row else "gone"
                if status != "pending" or time.monotonic() > deadline:
                    return status
                await asyncio.sleep(0.05)
        finally:
            await pool.close()

    return asyncio.run(work())


def chunks(stack: StackUrls, document_id: str) -> list[str]:
    with psycopg.connect(stack.database_url) as conn:
        rows = conn.execute("SELECT content FROM memories WHERE document_id = %s", (document_id,)).fetchall()
    return [str(r[0]) for r in rows]


def test_text_markdown_html_and_pdf_files_become_documents(client: TestClient, org: Org, settings: Settings,
                                                          stack: StackUrls) -> None:
    cases: list[tuple[str, bytes, str, list[str]]] = [
        ("notes.txt", b"Plain notes about shipping.", "text/plain", ["Plain notes about shipping."]),
        ("guide.md", b"# Guide\n\nStep one.", "text/markdown", ["Step one."]),
        ("policy.html", HTML, "text/markdown", ["# Refunds", "five", "## Exceptions", "Gift cards are final."]),
        ("report.pdf", tiny_pdf("Quarterly revenue grew", "Churn fell"), "text/plain",
         ["Quarterly revenue grew", "Churn fell"]),
    ]
    for name, data, kind, expected in cases:
        file_id = upload(org, name, data)
        r = client.post("/v1/knowledge", json={"file_id": file_id, "metadata": {"source": name}}, headers=org.headers)
        assert r.status_code == 202, r.text
        doc = r.json()
        assert (doc["file_id"], doc["title"], doc["content_type"], doc["status"]) == (file_id, name, kind, "pending")
        assert ingest(settings, org.id, doc["id"]) == "ready"
        preview = client.get(f"/v1/knowledge/{doc['id']}", headers=org.headers).json()["content_preview"]
        for text in expected:
            assert text in preview, (name, preview)
        assert "secret" not in preview and "color:red" not in preview and "ignored" not in preview
        assert all(text in " ".join(chunks(stack, doc["id"])) for text in expected[-1:])


def test_deleting_the_file_deletes_its_document_and_chunks(client: TestClient, org: Org, settings: Settings,
                                                           stack: StackUrls) -> None:
    file_id = upload(org, "faq.md", b"# FAQ\n\nThe office opens at nine.")
    doc = client.post("/v1/knowledge", json={"file_id": file_id, "title": "FAQ"}, headers=org.headers).json()
    assert doc["title"] == "FAQ"
    assert ingest(settings, org.id, doc["id"]) == "ready" and chunks(stack, doc["id"])
    other = client.post("/v1/knowledge", json={"content": "Unrelated."}, headers=org.headers).json()
    assert client.delete(f"/v1/files/{file_id}", headers=org.headers).status_code == 204
    error_of(client.get(f"/v1/knowledge/{doc['id']}", headers=org.headers), 404, "NOT_FOUND")
    assert chunks(stack, doc["id"]) == []
    assert client.get(f"/v1/knowledge/{other['id']}", headers=org.headers).status_code == 200


def test_files_that_cannot_become_documents_are_refused(client: TestClient, org: Org, other_org: Org) -> None:
    def post(who: Org, **body: Any) -> Any:
        return client.post("/v1/knowledge", json=body, headers=who.headers)

    png = upload(org, "logo.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 32)
    assert "image/png" in error_of(post(org, file_id=png), 415, "UNSUPPORTED_MEDIA_TYPE")["message"]
    blank = upload(org, "blank.pdf", tiny_pdf(""))
    assert "no text" in str(error_of(post(org, file_id=blank), 422, "VALIDATION_FAILED"))
    text = upload(org, "a.txt", b"hello")
    error_of(post(org, file_id=text, content="both"), 422, "VALIDATION_FAILED")
    error_of(post(org), 422, "VALIDATION_FAILED")
    error_of(post(org, file_id="fil_nope"), 404, "NOT_FOUND")
    error_of(post(other_org, file_id=text), 404, "NOT_FOUND")  # another org's file


def test_html_headings_become_markdown_headings() -> None:
    text, kind = to_text(HTML, "text/html")
    assert kind == "text/markdown"
    assert text.splitlines()[0] == "# Refunds" and "## Exceptions" in text and "var secret" not in text
