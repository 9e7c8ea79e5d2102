"""The knowledge base: add a text or markdown document, list, read and delete documents.

`POST /v1/knowledge` stores the document `pending` and sends it to the workers, which chunk and
embed it (`memory.knowledge.ingest`); its chunks become memories of kind `document`. The body is
JSON (`{title?, content, content_type?, metadata?}` or `{title?, file_id, metadata?}` for an
uploaded text, markdown, HTML or PDF file, converted to text by `core.document_text`) or the
document itself, sent with `Content-Type: text/plain` or `text/markdown` (its title in `?title=`).
"""

from __future__ import annotations

import codecs
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from api.deferred import HEADER as DEFERRED
from api.deferred import send_or_defer
from api.endpoint import Call, Param, endpoint, parse_body, resource, validation_failed
from api.routes.memories import embed_query
from api.schemas.base import page_of
from api.schemas.knowledge import KnowledgeDocument, KnowledgeSearchResult
from api.state import state_of
from core import ids
from core.document_text import READABLE, UnreadableDocument, UnsupportedDocument, to_text
from core.errors import ApiError
from core.file_storage import StoredFileMissing
from core.pagination import page
from core.store import audit, files
from core.tenancy import tenant_tx
from memory import knowledge

TITLE_MAX = 300
# Room for the JSON around the content (title, metadata, escapes) when checking Content-Length.
JSON_SLACK_BYTES = 64 * 1024
RAW_TYPES = ("text/plain", "text/markdown")


class KnowledgeCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Without a title, the document's first heading or line (cut to 120 characters) is used.
    title: str | None = Field(default=None, min_length=1, max_length=TITLE_MAX)
    # Its size limit (settings.memory.max_document_bytes) is checked in the handler: 413, not 422.
    content: str | None = None
    # Or an uploaded file (POST /v1/files): text, markdown, HTML or PDF; the document goes with it.
    file_id: str | None = None
    # `text/plain` or `text/markdown`; anything else is 415 (so not a Literal, which would be 422).
    content_type: str = Field(default="text/plain", json_schema_extra={"enum": list(RAW_TYPES)})
    metadata: dict[str, Any] = Field(default_factory=dict)


def _too_large(limit: int, what: str) -> ApiError:
    return ApiError("PAYLOAD_TOO_LARGE", f"{what} is larger than {limit} bytes, the limit for a document.",
                    details={"max_bytes": limit})


def _unsupported(ctype: str) -> ApiError:
    return ApiError("UNSUPPORTED_MEDIA_TYPE",
                    f"Documents are {' or '.join(RAW_TYPES)}, not {ctype!r}: send one of those raw, or JSON "
                    "with 'content' and 'content_type'.", details={"supported": list(RAW_TYPES)})


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


async def _read_capped(request: Request, limit: int) -> bytes:
    """The body, refused with 413 as soon as it passes `limit` bytes (never read whole first)."""
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        raise _too_large(limit, "The document")
    chunks: list[bytes] = []
    size = 0
    async for part in request.stream():
        size += len(part)
        if size > limit:
            raise _too_large(limit, "The document")
        chunks.append(part)
    return b"".join(chunks)


def _default_title(content: str) -> str:
    for line in content.splitlines():
        text = line.strip().lstrip("#").strip()
        if text:
            return text[:120]
    return "Untitled"


async def _raw_document(request: Request, media_type: str, limit: int) -> KnowledgeCreate:
    charset = "utf-8"
    for param in request.headers.get("content-type", "").split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            charset = value.strip().strip('"').lower() or "utf-8"
    try:
        codecs.lookup(charset)
    except LookupError:
        raise ApiError("UNSUPPORTED_MEDIA_TYPE", f"Unknown charset {charset!r}; send UTF-8.") from None
    raw = await _read_capped(request, limit)
    try:
        content = raw.decode(charset)
    except UnicodeDecodeError:
        raise validation_failed([{"field": "body", "message": f"is not valid {charset} text"}]) from None
    title = request.query_params.get("title")
    if title is not None and not 1 <= len(title) <= TITLE_MAX:
        raise validation_failed([{"field": "title", "message": f"must be 1 to {TITLE_MAX} characters"}])
    return KnowledgeCreate(title=title, content=content, content_type=media_type)


async def _document(request: Request, limit: int) -> KnowledgeCreate:
    """The document of a POST, from a raw text body or a JSON one."""
    ctype = request.headers.get("content-type", "")
    media_type = ctype.split(";")[0].strip().lower()
    if media_type in RAW_TYPES:
        return await _raw_document(request, media_type, limit)
    if media_type and media_type != "application/json" and not media_type.endswith("+json"):
        raise _unsupported(media_type)
    declared = _declared_length(request)
    cap = limit * 2 + JSON_SLACK_BYTES
    if declared is not None and declared > cap:
        raise _too_large(cap, "The JSON body")
    return await parse_body(request, KnowledgeCreate)


def _no_file(file_id: str) -> ApiError:
    return ApiError("NOT_FOUND", f"No file with id {file_id!r} in this organisation (upload it with POST /v1/files).",
                    details={"field": "file_id"})


async def _from_file(call: Call[Any], body: KnowledgeCreate) -> KnowledgeCreate:
    """`body` with the text of its uploaded file as content (its title the file's name by default)."""
    file_id = str(body.file_id)
    if not ids.looks_like("file", file_id):
        raise _no_file(file_id)
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await files.get(conn, file_id)
    if row is None:
        raise _no_file(file_id)
    try:
        data = await state_of(call.request).storage.get(row["storage_key"])
    except StoredFileMissing:
        raise _no_file(file_id) from None
    try:
        text, kind = to_text(data, row["content_type"])
    except UnsupportedDocument as exc:
        raise ApiError("UNSUPPORTED_MEDIA_TYPE", f"The file {file_id}: {exc}.",
                       details={"supported": list(READABLE)}) from None
    except UnreadableDocument as exc:
        raise validation_failed([{"field": "file_id", "message": str(exc)}]) from None
    return body.model_copy(update={"content": text, "content_type": kind, "title": body.title or row["name"]})


@endpoint("Add a document to the knowledge base (`202`): JSON `{title?, content, content_type?, metadata?}` "
          "or `{title?, file_id, metadata?}` (an uploaded text, markdown, HTML or PDF file, converted to text; "
          "deleting the file deletes the document), or the raw text with `Content-Type: text/plain` or "
          "`text/markdown` and `?title=`. It is chunked "
          "and embedded by a worker: poll it until `status` is `ready` (or `failed`).",
          role="member", status=202, response=KnowledgeDocument, headers=("Location", DEFERRED),
          body=KnowledgeCreate, parse=False, raw_types=RAW_TYPES, errors=("NOT_FOUND",),
          params=(Param("title", {"type": "string", "minLength": 1, "maxLength": TITLE_MAX},
                        "The title of a document sent raw."),))
async def create_document(call: Call[Any]) -> Response:
    settings = call.settings
    limit = settings.memory.max_document_bytes
    body = await _document(call.request, limit)
    if (body.content is None) == (body.file_id is None):
        raise validation_failed([{"field": "content", "message": "give content or file_id (one of them)"}])
    if body.file_id is not None:
        body = await _from_file(call, body)
    assert body.content is not None
    if body.content_type not in RAW_TYPES:
        raise _unsupported(body.content_type)
    size = len(body.content.encode("utf-8"))
    if size > limit:
        raise _too_large(limit, f"The document ({size} bytes)")
    if not body.content.strip():
        raise validation_failed([{"field": "content", "message": "must not be blank"}])
    if "\x00" in body.content:
        raise validation_failed([{"field": "content", "message": "must not contain the NUL character"}])
    title = body.title if body.title is not None else _default_title(body.content)
    if not title.strip() or "\x00" in title:
        raise validation_failed([{"field": "title", "message": "must not be blank"}])
    principal = call.principal
    async with tenant_tx(call.pool, principal.org_id) as conn:
        if body.file_id is not None and await files.get(conn, body.file_id) is None:  # deleted meanwhile
            raise _no_file(body.file_id)
        doc = await knowledge.create(conn, title=title, content_type=body.content_type, content=body.content,
                                     metadata=body.metadata, file_id=body.file_id)
        await audit.record(conn, principal.actor, "knowledge.create", "document", doc["id"],
                           {"content_type": body.content_type, "size_bytes": size,
                            **({"file_id": body.file_id} if body.file_id else {})})
    deferral = await send_or_defer(call.infra.jobs.enqueue_ingest(doc["id"], principal.org_id),
                                   f"document {doc['id']}")
    return call.reply(doc, headers={"Location": f"/v1/knowledge/{doc['id']}", **deferral})


@endpoint("Knowledge-base documents, newest first (without their content); `?status=pending|ready|failed`.",
          paginated=True, response=page_of(KnowledgeDocument),
          params=(Param("status", {"type": "string", "enum": list(knowledge.STATUSES)}),))
async def list_documents(call: Call[Any]) -> Response:
    status = call.request.query_params.get("status") or None
    if status is not None and status not in knowledge.STATUSES:
        raise validation_failed([{"field": "status", "message": f"must be one of {', '.join(knowledge.STATUSES)}"}])
    cursor, limit = call.page_params()
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        rows = await knowledge.list_documents(conn, status, cursor, limit)
    data, next_cursor = page(rows, limit)
    return call.page(data, next_cursor)


class KnowledgeSearch(BaseModel):
    model_config = ConfigDict(extra="forbid")
    # Its length limit (settings.memory.max_content_chars) is checked in the handler: 413, not 422.
    query: str = Field(min_length=1)
    # Default: settings.memory.search_limit.
    limit: int | None = Field(default=None, ge=1, le=50)
    # Only chunks of these documents (ids of documents of another org match nothing).
    document_ids: list[str] | None = Field(default=None, min_length=1, max_length=100)
    # Only chunks whose metadata (the document's, plus `document_id`, `title`, `chunk`, `heading`)
    # contains this object: for each top-level key an equal value, or an array/object holding it.
    filter: dict[str, Any] | None = None
    # `hybrid`: vector and full-text search fused by rank (memory/hybrid.py); `vector`: vector only.
    mode: Literal["vector", "hybrid"] = "vector"


@endpoint("Search the knowledge base by meaning: the chunks nearest to `query`, best first, with their "
          "document and heading path (the same chunks a run's recall sees); `document_ids` and a metadata "
          "`filter` narrow it; `mode: hybrid` adds full-text search, fused by rank.", body=KnowledgeSearch,
          response=KnowledgeSearchResult,
          errors=("PAYLOAD_TOO_LARGE",))
async def search_knowledge(call: Call[KnowledgeSearch]) -> Response:
    body, settings = call.body, call.settings
    if len(body.query) > settings.memory.max_content_chars:
        raise ApiError("PAYLOAD_TOO_LARGE", f"'query' is longer than {settings.memory.max_content_chars} characters.",
                       details={"field": "query", "max_chars": settings.memory.max_content_chars})
    if not body.query.strip():
        raise validation_failed([{"field": "query", "message": "must not be blank"}])
    bad = [d for d in body.document_ids or [] if not ids.looks_like("document", d)]
    if bad:
        raise validation_failed([{"field": "document_ids", "message": f"{bad[0]!r} is not a document id"}])
    model, vector = await embed_query(call, body.query)
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        rows = await knowledge.search_chunks(conn, vector, model, body.limit or settings.memory.search_limit,
                                             document_ids=body.document_ids, metadata=body.filter,
                                             hybrid_text=body.query if body.mode == "hybrid" else None)
    result: dict[str, Any] = {"data": rows, "embedding_model": model, "mode": body.mode}
    if not rows:
        result["note"] = (f"No chunk matched. Chunks are compared only with queries of the same embedding model "
                          f"({model!r}); documents still pending have none yet.")
    return call.reply(result)


def _not_found(document_id: str) -> ApiError:
    return ApiError("NOT_FOUND", f"No document with id {document_id!r} in this organisation.")


@endpoint("Read one document, with the start of its content (`content_preview`).",
          response=KnowledgeDocument)
async def get_document(call: Call[Any]) -> Response:
    document_id = call.path_id("document_id", "document")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        row = await knowledge.get(conn, document_id)
    if row is None:
        raise _not_found(document_id)
    return call.reply(row)


@endpoint("Delete a document and all its chunks.", role="member", status=204)
async def delete_document(call: Call[Any]) -> Response:
    document_id = call.path_id("document_id", "document")
    async with tenant_tx(call.pool, call.principal.org_id) as conn:
        deleted = await knowledge.delete(conn, document_id)
        if deleted is None:
            raise _not_found(document_id)
        await audit.record(conn, call.principal.actor, "knowledge.delete", "document", document_id,
                           {"chunks": deleted["chunks"]})
    return Response(status_code=204)


routes = [
    resource("/v1/knowledge", POST=create_document, GET=list_documents),
    resource("/v1/knowledge/search", POST=search_knowledge),
    resource("/v1/knowledge/{document_id}", GET=get_document, DELETE=delete_document),
]
