"""Files: uploads named and typed by the server, limits and the org's quota, cross-org isolation,
and attached files in a session's workspace for the skills of a real worker (gone once deleted);
every test against both storage backends (a local directory; moto's S3-compatible server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto.moto_server.threaded_moto_server import ThreadedMotoServer
from starlette.testclient import TestClient

from agentos.stack.local import StackUrls
from agentos.stack.redis import EmbeddedRedis
from api.app import create_app
from tests.helpers import Org, RsaKeys, Worker, error_of, make_settings, new_org, running_worker, start_run, wait
from tests.openai_server import OpenAIServer

MAX_BYTES = 4096
QUOTA = 10_000


@dataclass
class FilesApi:
    client: TestClient
    stack: StackUrls
    base: Path
    backend: str
    env: dict[str, str]  # the file settings, for a worker
    s3: Any = None  # the boto3 client of the S3 backend's server

    def keys(self, org_id: str) -> list[str]:
        """The file ids the storage holds for an org."""
        if self.s3 is not None:
            listed = self.s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{PREFIX}{org_id}/")
            return sorted(o["Key"].rsplit("/", 1)[-1] for o in listed.get("Contents", []))
        directory = self.base / "files" / org_id
        return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


BUCKET = "agentos-test"
PREFIX = "uploads/"


@contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3-compatible server on 127.0.0.1 (a free port); yields its URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture(scope="module", params=["local", "s3"])
def files_api(request: pytest.FixtureRequest, stack: StackUrls, rsa_keys: RsaKeys,
              tmp_path_factory: pytest.TempPathFactory) -> Iterator[FilesApi]:
    """An API with small file limits and its own file storage (a directory, or a bucket of an
    S3-compatible server), on a Redis of its own (the worker of the last test consumes from it)."""
    backend = str(request.param)
    base = tmp_path_factory.mktemp(f"files-{backend}")
    redis = EmbeddedRedis(base, durable=False)
    redis.start()
    with ExitStack() as stack_of:
        stack_of.callback(redis.stop)
        files: dict[str, Any] = {"max_bytes": MAX_BYTES, "org_quota_bytes": QUOTA, "data_dir": str(base / "files")}
        s3 = None
        if backend == "s3":
            url = stack_of.enter_context(s3_server())
            files |= {"backend": "s3", "s3_endpoint_url": url, "s3_bucket": BUCKET, "s3_prefix": PREFIX,
                      "s3_access_key_id": "test", "s3_secret_access_key": "test"}
            s3 = boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="test",
                              aws_secret_access_key="test")
            s3.create_bucket(Bucket=BUCKET)
        own = StackUrls(stack.database_url, redis.url)
        client = stack_of.enter_context(TestClient(create_app(make_settings(own, rsa_keys, files=files))))
        env = {f"AGENTOS_FILES__{k.upper()}": str(v) for k, v in files.items()}
        yield FilesApi(client, own, base, backend, env, s3)


@pytest.fixture
def org(files_api: FilesApi) -> Org:
    return new_org(files_api.client, "files org")


@pytest.fixture
def other_org(files_api: FilesApi) -> Org:
    return new_org(files_api.client, "other files org")


def upload(org: Org, name: str, data: bytes, content_type: str = "application/octet-stream") -> Any:
    return org.client.post("/v1/files", files={"file": (name, data, content_type)}, headers=org.headers)


def uploaded(org: Org, name: str, data: bytes) -> dict[str, Any]:
    r = upload(org, name, data)
    assert r.status_code == 201, r.text
    return dict(r.json())


def stored(files_api: FilesApi, org: Org) -> list[str]:
    return files_api.keys(org.id)


def test_an_upload_is_named_typed_and_read_back(files_api: FilesApi, org: Org) -> None:
    csv = b"region,amount\nnorth,10\n"
    # The client says it is a PNG; the bytes say CSV text.
    r = upload(org, "sales.csv", csv, "image/png")
    assert r.status_code == 201, r.text
    meta = dict(r.json())
    assert meta["id"].startswith("fil_") and meta["name"] == "sales.csv"
    assert meta["content_type"] == "text/csv" and meta["size_bytes"] == len(csv) and "storage_key" not in meta
    assert org.client.get(f"/v1/files/{meta['id']}", headers=org.headers).json() == meta
    assert [f["id"] for f in org.client.get("/v1/files", headers=org.headers).json()["data"]] == [meta["id"]]
    content = org.client.get(f"/v1/files/{meta['id']}/content", headers=org.headers)
    assert content.status_code == 200 and content.content == csv
    assert content.headers["content-type"].startswith("text/csv")
    assert content.headers["x-content-type-options"] == "nosniff"
    assert content.headers["content-disposition"] == "attachment; filename*=UTF-8''sales.csv"
    assert stored(files_api, org) == [meta["id"]]

    for name, data, kind in [("doc.pdf", b"%PDF-1.7\n...", "application/pdf"),
                             ("x.json", b'{"a": 1}', "application/json"),
                             ("x.json", b"{not json", "text/plain"),
                             ("blob.csv", b"\x00\x01\x02binary", "application/octet-stream"),
                             ("pic", b"\x89PNG\r\n\x1a\n....", "image/png")]:
        assert uploaded(org, name, data)["content_type"] == kind, name

    assert org.client.delete(f"/v1/files/{meta['id']}", headers=org.headers).status_code == 204
    error_of(org.client.get(f"/v1/files/{meta['id']}", headers=org.headers), 404, "NOT_FOUND")
    error_of(org.client.get(f"/v1/files/{meta['id']}/content", headers=org.headers), 404, "NOT_FOUND")
    assert meta["id"] not in stored(files_api, org)


@pytest.mark.parametrize(("given", "kept"), [
    ("../../etc/passwd", "passwd"),
    ("..\\..\\windows\\win.ini", "win.ini"),
    ("/absolute/path/report.txt", "report.txt"),
    ("..", "file"),
    ("../", "file"),
    (".bashrc", "bashrc"),
    ("a\x00b\nc.txt", "a_00b_0Ac.txt"),  # the client sends them percent-encoded; '%' is not kept
    ("we;rm -rf $HOME|x.txt", "we_rm -rf _HOME_x.txt"),
    ("résumé.txt", "résumé.txt"),
    ("x" * 300 + ".csv", "x" * 196 + ".csv"),
])
def test_path_traversal_and_odd_names_are_sanitised(files_api: FilesApi, org: Org, given: str, kept: str) -> None:
    meta = uploaded(org, given, b"hello")
    assert meta["name"] == kept
    # The bytes are stored under the server's id, inside the org's directory, whatever the name.
    assert stored(files_api, org) == [meta["id"]]
    assert not any(p.name == "passwd" for p in files_api.base.rglob("*"))


def test_an_upload_over_the_limit_is_413_and_nothing_is_stored(files_api: FilesApi, org: Org) -> None:
    for size in (MAX_BYTES * 2, MAX_BYTES + 1, 200_000):  # twice; just over; over the whole body limit
        error = error_of(upload(org, "big.bin", b"x" * size), 413, "PAYLOAD_TOO_LARGE")
        assert error["details"]["max_bytes"] >= MAX_BYTES
    assert org.client.get("/v1/files", headers=org.headers).json()["data"] == []
    assert stored(files_api, org) == []
    assert uploaded(org, "fits.bin", b"x" * MAX_BYTES)["size_bytes"] == MAX_BYTES


def test_the_org_quota_is_enforced_and_freed_by_deleting(files_api: FilesApi, org: Org, other_org: Org) -> None:
    first = uploaded(org, "a.bin", b"a" * 4000)
    uploaded(org, "b.bin", b"b" * 4000)
    error = error_of(upload(org, "c.bin", b"c" * 4000), 429, "QUOTA_EXCEEDED")
    assert error["details"] == {"quota_bytes": QUOTA, "used_bytes": 8000, "size_bytes": 4000}
    assert len(stored(files_api, org)) == 2
    uploaded(other_org, "c.bin", b"c" * 4000)  # another org's quota is its own
    org.client.delete(f"/v1/files/{first['id']}", headers=org.headers)
    uploaded(org, "c.bin", b"c" * 4000)


def test_requests_that_are_not_an_upload_are_refused(org: Org) -> None:
    error_of(org.client.post("/v1/files", json={"file": "x"}, headers=org.headers), 415, "UNSUPPORTED_MEDIA_TYPE")
    r = org.client.post("/v1/files", files={"other": ("a.txt", b"x", "text/plain")}, headers=org.headers)
    error_of(r, 422, "VALIDATION_FAILED")
    viewer = {"Authorization": f"Bearer {org.key_with_role('viewer')}"}
    error_of(org.client.post("/v1/files", files={"file": ("a.txt", b"x")}, headers=viewer), 403, "FORBIDDEN")


def test_another_orgs_files_are_not_found(org: Org, other_org: Org) -> None:
    meta = uploaded(org, "private.txt", b"org A only")
    agent = other_org.create_agent()
    session = other_org.create_session(str(agent["id"]))
    for method, path in (("GET", f"/v1/files/{meta['id']}"), ("GET", f"/v1/files/{meta['id']}/content"),
                         ("DELETE", f"/v1/files/{meta['id']}")):
        error_of(other_org.client.request(method, path, headers=other_org.headers), 404, "NOT_FOUND")
    r = other_org.client.post(f"/v1/sessions/{session['id']}/files", json={"file_id": meta["id"]},
                              headers=other_org.headers)
    error_of(r, 404, "NOT_FOUND")
    assert other_org.client.get("/v1/files", headers=other_org.headers).json()["data"] == []
    # and org A cannot attach to org B's session
    r = org.client.post(f"/v1/sessions/{session['id']}/files", json={"file_id": meta["id"]}, headers=org.headers)
    error_of(r, 404, "NOT_FOUND")
    assert org.client.get(f"/v1/files/{meta['id']}/content", headers=org.headers).content == b"org A only"


def test_attaching_lists_detaches_and_refuses_a_second_file_of_the_same_name(org: Org) -> None:
    agent = org.create_agent()
    session = org.create_session(str(agent["id"]))
    one, two = uploaded(org, "data.csv", b"a\n1\n"), uploaded(org, "data.csv", b"a\n2\n")
    r = org.client.post(f"/v1/sessions/{session['id']}/files", json={"file_id": one["id"]}, headers=org.headers)
    assert r.status_code == 201 and r.json()["path"] == "files/data.csv"
    again = org.client.post(f"/v1/sessions/{session['id']}/files", json={"file_id": one["id"]}, headers=org.headers)
    assert again.status_code == 201
    r = org.client.post(f"/v1/sessions/{session['id']}/files", json={"file_id": two["id"]}, headers=org.headers)
    error_of(r, 409, "CONFLICT")
    listed = org.client.get(f"/v1/sessions/{session['id']}/files", headers=org.headers).json()["data"]
    assert [a["file_id"] for a in listed] == [one["id"]]
    path = f"/v1/sessions/{session['id']}/files/{one['id']}"
    assert org.client.delete(path, headers=org.headers).status_code == 204
    error_of(org.client.delete(path, headers=org.headers), 404, "NOT_FOUND")
    assert org.client.get(f"/v1/files/{one['id']}", headers=org.headers).status_code == 200  # the file stays


# --- in the workspace of a real worker ------------------------------------------------------------


@pytest.fixture(scope="module")
def files_worker(files_api: FilesApi, openai_server: OpenAIServer) -> Iterator[Worker]:
    """A worker on the files API's Redis, reading the same file storage."""
    base = files_api.base / "worker"
    base.mkdir()
    with running_worker(files_api.stack, openai_server, base, files_api.env) as worker:
        yield worker


def call(skill: str, **args: Any) -> str:
    return f"call: {skill} {json.dumps(args)}"


def run_script(org: Org, session_id: str, lines: list[str]) -> list[dict[str, Any]]:
    run = wait(org, start_run(org, session_id, "\n".join(lines))["id"], timeout=60)
    assert run["status"] == "succeeded", run
    return list(org.client.get(f"/v1/runs/{run['id']}/tool-calls", headers=org.headers).json()["data"])


def test_an_attached_file_is_read_by_the_skills_and_leaves_when_deleted(
        org: Org, files_worker: Worker) -> None:
    csv = b"region,amount\nnorth,10\nsouth,5\nnorth,7\n"
    meta = uploaded(org, "../sales.csv", csv)  # sanitised to sales.csv
    agent = org.create_agent(skills=["file_manager", "data_query"], confirm="none")
    session_id = str(org.create_session(str(agent["id"]))["id"])
    r = org.client.post(f"/v1/sessions/{session_id}/files", json={"file_id": meta["id"]}, headers=org.headers)
    assert r.status_code == 201, r.text

    calls = run_script(org, session_id, [
        call("file_manager", action="read", path="files/sales.csv"),
        call("data_query", source="files/sales.csv",
             sql="SELECT region, sum(amount) AS total FROM data GROUP BY region ORDER BY region"),
    ])
    assert calls[0]["output"]["content"] == csv.decode()
    assert calls[1]["output"]["rows"] == [["north", 17], ["south", 5]]
    on_disk = files_worker.workspace_root / org.id / session_id / "files" / "sales.csv"
    assert on_disk.read_bytes() == csv

    assert org.client.delete(f"/v1/files/{meta['id']}", headers=org.headers).status_code == 204
    calls = run_script(org, session_id, [call("file_manager", action="list", path="files")])
    assert calls[0]["output"]["entries"] == []
    assert not on_disk.exists()
