"""Embeddings by spec string, like models: `offline:hash` or `openai:<model>`.

`offline:hash` is deterministic and needs nothing but the standard library: 384-d signed feature
hashing of lowercased word tokens and character trigrams, L2-normalised. It matches texts that
share words and spellings, not meanings ("car" and "automobile" are unrelated to it): its quality
is for trying things out, tests and offline development, not for production recall.

`openai:<model>` uses langchain-openai's `OpenAIEmbeddings` (imported only when such a spec is
resolved), with the key and base URL of `ModelSettings`, so any OpenAI-compatible server works.

`local:<model name or path>` runs a sentence-transformers model in-process (the optional extra
`agentos[local-embeddings]`, imported only when such a spec is resolved).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from psycopg import AsyncConnection
from psycopg.rows import DictRow

if TYPE_CHECKING:
    from core.settings import Settings

OFFLINE_MODEL = "offline:hash"
OFFLINE_DIMS = 384

_WORD_RE = re.compile(r"\w+", re.UNICODE)


@runtime_checkable
class Embedder(Protocol):
    model: str
    dims: int

    async def embed(self, texts: list[str]) -> list[list[float]]: ...


def _features(text: str) -> list[tuple[str, float]]:
    words = _WORD_RE.findall(text.lower())
    feats: list[tuple[str, float]] = []
    for word in words:
        feats.append(("w:" + word, 1.0))
        padded = f" {word} "
        feats.extend(("t:" + padded[i : i + 3], 0.5) for i in range(len(padded) - 2))
    if not feats:  # punctuation or symbols only: fall back to the raw characters
        raw = text.strip().lower()
        feats.extend(("r:" + raw[i : i + 3], 1.0) for i in range(max(len(raw) - 2, 0)))
        if raw and not feats:
            feats.append(("r:" + raw, 1.0))
    return feats


def hash_embed(text: str, dims: int = OFFLINE_DIMS) -> list[float]:
    """The offline embedding of one text: a unit vector of `dims` floats."""
    vec = [0.0] * dims
    for feature, weight in _features(text):
        digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
        value = int.from_bytes(digest, "big")
        index = value % dims
        sign = 1.0 if (value >> 63) & 1 else -1.0
        vec[index] += sign * weight
    norm = math.sqrt(sum(v * v for v in vec))
    if norm == 0.0:  # the empty text (or features that cancelled out): a fixed unit vector
        vec[0] = 1.0
        return vec
    return [v / norm for v in vec]


class HashEmbedder:
    """`offline:hash`: deterministic, dependency-free, for trying things out."""

    model = OFFLINE_MODEL
    dims = OFFLINE_DIMS

    async def embed(self, texts: list[str]) -> list[list[float]]:
        return [hash_embed(t, self.dims) for t in texts]


class OpenAIEmbedder:
    """`openai:<model>` through langchain-openai (any OpenAI-compatible base URL)."""

    def __init__(self, model_name: str, settings: Settings) -> None:
        from langchain_openai import OpenAIEmbeddings  # lazy: only processes that use it load it

        self.model = f"openai:{model_name}"
        self.dims = settings.memory.embedding_dims or 0  # 0: learnt from the first response
        models = settings.models
        kwargs: dict[str, Any] = {
            "model": model_name,
            "timeout": models.request_timeout_s,
            "max_retries": models.max_retries,
            # OpenAI-compatible servers rarely accept token arrays; send the text itself.
            "check_embedding_ctx_length": False,
        }
        if models.openai_api_key is not None:
            kwargs["api_key"] = models.openai_api_key
        else:  # a local server without auth still needs some key for the client to start
            kwargs["api_key"] = "not-needed"
        if models.openai_base_url:
            kwargs["base_url"] = models.openai_base_url
        if settings.memory.embedding_dims:
            kwargs["dimensions"] = settings.memory.embedding_dims
        self._client = OpenAIEmbeddings(**kwargs)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        vectors = [list(map(float, v)) for v in await self._client.aembed_documents(texts)]
        if vectors and not self.dims:
            self.dims = len(vectors[0])
        return vectors


class LocalEmbedder:
    """`local:<model name or path>`: a sentence-transformers model in this process (the optional
    extra `local-embeddings`). A name not on disk is fetched from the Hugging Face hub on first use;
    pass a local path to stay offline. Encoding runs in a thread, off the event loop."""

    def __init__(self, name: str) -> None:
        try:
            from sentence_transformers import SentenceTransformer  # lazy: heavy, and optional
        except ImportError:
            raise ValueError(
                f"embedding spec 'local:{name}' needs sentence-transformers: "
                "pip install 'agentos[local-embeddings]'"
            ) from None
        self.model = f"local:{name}"
        self._model = SentenceTransformer(name)
        self.dims = int(self._model.get_sentence_embedding_dimension() or 0)

    async def embed(self, texts: list[str]) -> list[list[float]]:
        vectors = await asyncio.to_thread(self._model.encode, texts, normalize_embeddings=True)
        return [[float(v) for v in vector] for vector in vectors]


def resolve_embedder(spec: str, settings: Settings) -> Embedder:
    """The embedder named by `spec` (`offline:hash`, `openai:<model>`, `local:<model>`); ValueError
    otherwise (also when `local:` lacks its optional extra)."""
    provider, _, name = spec.partition(":")
    if provider == "offline":
        if name == "hash":
            return HashEmbedder()
        raise ValueError(f"unknown offline embedding model {spec!r}; the offline one is 'offline:hash'")
    if provider == "openai":
        if not name:
            raise ValueError("embedding spec 'openai:' needs a model name, e.g. 'openai:text-embedding-3-small'")
        return OpenAIEmbedder(name, settings)
    if provider == "local":
        if not name:
            raise ValueError("embedding spec 'local:' needs a model name or path, e.g. 'local:all-MiniLM-L6-v2'")
        return LocalEmbedder(name)
    raise ValueError(
        f"unknown embedding model spec {spec!r}: use 'offline:hash', 'openai:<model>' or 'local:<model>'"
    )


ORG_EMBEDDING_SQL = "SELECT settings->>'embedding_model' AS model FROM orgs WHERE id = agentos_current_org()"


async def org_embedding_spec(conn: AsyncConnection[DictRow], default: str) -> str:
    """The embedding model of the org of `conn` (a `core.tenancy.tenant_tx` connection): its
    `settings.embedding_model` once `agentos memory reembed` moved it, else `default`
    (`memory.embedding_model`)."""
    row = await (await conn.execute(ORG_EMBEDDING_SQL)).fetchone()
    return str(row["model"]) if row and row["model"] else default
