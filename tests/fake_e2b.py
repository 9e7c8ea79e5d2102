"""A local fake of the E2B HTTP APIs the `e2b` backend uses, on 127.0.0.1 (a Starlette app run
by uvicorn in a thread), for the hosted backends' contract tests.

Modelled on the API of the `e2b` Python SDK 2.63.0 (see skills/sandbox/e2b.py for the shapes):
the control plane (`POST /sandboxes`, `DELETE /sandboxes/{id}`, `X-API-Key`, errors
`{"code", "message"}`) and envd (`POST|GET /files`, `POST /process.Process/Start` as a Connect
JSON server stream) on the same server. A "sandbox" is a directory under /tmp; its processes run
here, in their own process group, killed when the stream ends. Behaviours for error tests:
the template `missing` is 404, `busy` is 429, `dies` drops the process stream mid-way.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import shutil
import signal
import struct
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from agentos.stack.process import free_port

API_KEY = "e2b_test_" + secrets.token_hex(8)


@dataclass
class FakeSandbox:
    id: str
    token: str
    home: Path
    template: str


@dataclass
class FakeE2B:
    url: str = ""
    sandboxes: dict[str, FakeSandbox] = field(default_factory=dict)
    created: list[dict[str, Any]] = field(default_factory=list)  # the create bodies
    deleted: list[str] = field(default_factory=list)

    @property
    def alive(self) -> list[str]:
        return [sid for sid in self.sandboxes if sid not in self.deleted]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"code": status, "message": message}, status_code=status)


def _envelope(message: dict[str, Any], flags: int = 0) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack(">BI", flags, len(body)) + body


def build_app(state: FakeE2B) -> Starlette:
    async def create(request: Request) -> Response:
        if request.headers.get("x-api-key") != API_KEY:
            return _error(401, "Invalid API key")
        body = await request.json()
        state.created.append(body)
        template = body.get("templateID")
        if template == "missing":
            return _error(404, f"template '{template}' not found")
        if template == "busy":
            return _error(429, "You have reached the maximum number of concurrent E2B sandboxes")
        sid = "i" + secrets.token_hex(8)
        home = Path(tempfile.mkdtemp(prefix="fake-e2b-"))
        home.chmod(0o755)  # the launcher drops to uid 65534 when it runs as root, as here
        state.sandboxes[sid] = FakeSandbox(sid, secrets.token_hex(8), home, str(template))
        return JSONResponse({"sandboxID": sid, "templateID": template, "clientID": "fake", "envdVersion": "0.4.0",
                             "envdAccessToken": state.sandboxes[sid].token, "domain": "localhost"}, status_code=201)

    async def delete(request: Request) -> Response:
        if request.headers.get("x-api-key") != API_KEY:
            return _error(401, "Invalid API key")
        sid = request.path_params["sandbox_id"]
        box = state.sandboxes.get(sid)
        if box is None or sid in state.deleted:
            return _error(404, f"sandbox {sid} not found")
        state.deleted.append(sid)
        shutil.rmtree(box.home, ignore_errors=True)
        return Response(status_code=204)

    def sandbox_of(request: Request) -> FakeSandbox | Response:
        sid = request.headers.get("e2b-sandbox-id", "")
        box = state.sandboxes.get(sid)
        if box is None or sid in state.deleted or request.headers.get("e2b-sandbox-port") != "49983":
            return _error(502, f"The sandbox {sid} was not found")
        if request.headers.get("x-access-token") != box.token:
            return _error(401, "invalid access token")
        return box

    def resolve(box: FakeSandbox, path: str) -> Path | None:
        target = (box.home / path).resolve()  # envd resolves a relative path under the user's home
        return target if target.is_relative_to(box.home) else None

    async def files(request: Request) -> Response:
        box = sandbox_of(request)
        if isinstance(box, Response):
            return box
        target = resolve(box, request.query_params.get("path", ""))
        if target is None or request.query_params.get("username") != "user":
            return _error(400, "bad path or user")
        if request.method == "GET":
            if not target.is_file():
                return _error(404, f"path '{request.query_params['path']}' does not exist")
            return Response(target.read_bytes(), media_type="application/octet-stream")
        form = await request.form()
        upload = form["file"]
        assert not isinstance(upload, str)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(await upload.read())
        return JSONResponse([{"name": target.name, "type": "file", "path": str(target)}])

    async def start(request: Request) -> Response:
        box = sandbox_of(request)
        if isinstance(box, Response):
            return box
        if request.headers.get("content-type") != "application/connect+json":
            return _error(415, "unsupported content type")
        raw = await request.body()
        flags, length = struct.unpack(">BI", raw[:5])
        config = json.loads(raw[5:5 + length])["process"]
        timeout_s = int(request.headers.get("connect-timeout-ms", "60000")) / 1000
        dies = box.template == "dies"
        return StreamingResponse(_run(box, config, timeout_s, dies), media_type="application/connect+json")

    return Starlette(routes=[
        Route("/sandboxes", create, methods=["POST"]),
        Route("/sandboxes/{sandbox_id}", delete, methods=["DELETE"]),
        Route("/files", files, methods=["GET", "POST"]),
        Route("/process.Process/Start", start, methods=["POST"]),
    ])


async def _run(box: FakeSandbox, config: dict[str, Any], timeout_s: float, dies: bool) -> AsyncIterator[bytes]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(box.home), **config.get("envs", {})}
    proc = await asyncio.create_subprocess_exec(config["cmd"], *config.get("args", []), cwd=box.home, env=env,
                                                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE, start_new_session=True)
    queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

    async def pump(name: str, stream: asyncio.StreamReader) -> None:
        while chunk := await stream.read(65536):
            await queue.put((name, chunk))

    assert proc.stdout is not None and proc.stderr is not None
    pumps = [asyncio.create_task(pump("stdout", proc.stdout)), asyncio.create_task(pump("stderr", proc.stderr))]
    deadline = time.monotonic() + timeout_s
    try:
        yield _envelope({"event": {"start": {"pid": proc.pid}}})
        if dies:
            raise ConnectionAbortedError("the fake envd drops the stream")
        while not (all(p.done() for p in pumps) and queue.empty()):
            try:
                name, chunk = await asyncio.wait_for(queue.get(), max(0.0, min(0.2, deadline - time.monotonic())))
            except TimeoutError:
                if time.monotonic() >= deadline:
                    yield _envelope({"error": {"code": "deadline_exceeded", "message": "deadline exceeded"}}, 2)
                    return
                continue
            yield _envelope({"event": {"data": {name: base64.b64encode(chunk).decode()}}})
        code = await proc.wait()
        end: dict[str, Any] = {"exited": True, "status": f"exit status {code}"}
        if code:  # proto3 JSON leaves out zero values
            end["exitCode"] = code
        yield _envelope({"event": {"end": end}})
        yield _envelope({}, 2)
    finally:
        for p in pumps:
            p.cancel()
        if proc.returncode is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()


class RunningFake:
    """FakeE2B served on 127.0.0.1 until `stop`."""

    def __init__(self) -> None:
        self.state = FakeE2B()
        port = free_port()
        self.state.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(build_app(self.state), host="127.0.0.1", port=port, log_level="warning",
                                lifespan="off", ws="none")
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-e2b", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the fake E2B server did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        for box in self.state.sandboxes.values():
            shutil.rmtree(box.home, ignore_errors=True)
