"""Where uploaded files' bytes are kept: a small interface with two backends, the local
filesystem (default, under `AGENTOS_FILES__DATA_DIR`) and S3-compatible object storage.

Keys are made by the server only (`key_for(org, file id)`), never from a client's file name, so
no name can reach outside the org's prefix. Metadata and quotas live in Postgres
(`core.store.files`); a backend only stores, returns and removes bytes.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

from core.settings import FileSettings


class StoredFileMissing(Exception):
    """The bytes of a file are not in the storage (removed behind its back)."""


class FileStorage(Protocol):
    async def put(self, key: str, data: bytes) -> None: ...

    async def get(self, key: str) -> bytes: ...

    async def delete(self, key: str) -> None:
        """Remove the object; no error if it is already gone."""
        ...

    async def delete_org(self, org_id: str) -> int:
        """Remove every object under the org's prefix (org deletion: also what no row names any
        more, e.g. an upload whose row was rolled back); how many there were."""
        ...


def key_for(org_id: str, file_id: str) -> str:
    return f"{org_id}/{file_id}"


class LocalStorage:
    """Files under `root/<org>/<file id>`, written atomically (a temporary file, then a rename)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, key: str) -> Path:
        org, _, name = key.partition("/")
        if not org or not name or "/" in name or name.startswith(".") or org.startswith("."):
            raise ValueError(f"not a storage key: {key!r}")
        return self.root / org / name

    def _put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise StoredFileMissing(key) from None

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put, key, data)

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self._get, key)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)

    def _delete_org(self, org_id: str) -> int:
        directory = self._path(key_for(org_id, "x")).parent
        if not directory.is_dir():
            return 0
        count = sum(1 for p in directory.iterdir() if not p.name.startswith("."))
        shutil.rmtree(directory)
        return count

    async def delete_org(self, org_id: str) -> int:
        return await asyncio.to_thread(self._delete_org, org_id)


class S3Storage:
    """Objects `<prefix><key>` in one bucket of an S3-compatible service (boto3, in a thread)."""

    def __init__(self, settings: FileSettings) -> None:
        import boto3  # only a deployment that chose S3 loads it

        secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
        self._client: Any = boto3.client(
            "s3", endpoint_url=settings.s3_endpoint_url, region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id, aws_secret_access_key=secret,
        )
        self._bucket = settings.s3_bucket
        self._prefix = settings.s3_prefix

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._client.put_object, Bucket=self._bucket, Key=self._prefix + key, Body=data)

    def _get(self, key: str) -> bytes:
        try:
            answer = self._client.get_object(Bucket=self._bucket, Key=self._prefix + key)
        except self._client.exceptions.NoSuchKey:
            raise StoredFileMissing(key) from None
        body: bytes = answer["Body"].read()
        return body

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self._get, key)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._client.delete_object, Bucket=self._bucket, Key=self._prefix + key)

    def _delete_org(self, org_id: str) -> int:
        removed = 0
        pages = self._client.get_paginator("list_objects_v2").paginate(
            Bucket=self._bucket, Prefix=self._prefix + key_for(org_id, ""))
        for listing in pages:
            keys = [{"Key": o["Key"]} for o in listing.get("Contents", [])]
            if keys:  # a listing page holds at most 1000 keys, what one delete_objects takes
                self._client.delete_objects(Bucket=self._bucket, Delete={"Objects": keys, "Quiet": True})
                removed += len(keys)
        return removed

    async def delete_org(self, org_id: str) -> int:
        return await asyncio.to_thread(self._delete_org, org_id)


def open_storage(settings: FileSettings) -> FileStorage:
    if settings.backend == "s3":
        return S3Storage(settings)
    return LocalStorage(Path(settings.data_dir).resolve())
