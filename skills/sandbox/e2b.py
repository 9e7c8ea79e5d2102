"""The `e2b` provider: a fresh E2B sandbox (a Firecracker microVM) per execution, over E2B's
HTTP APIs with httpx; the E2B SDK is not needed.

Modelled on the API that the `e2b` Python SDK 2.63.0 speaks (read from its source):

- control plane, `X-API-Key`: `POST {api_url}/sandboxes` `{"templateID", "timeout",
  "allow_internet_access": false, "secure": true, "metadata"}` → 201 `{"sandboxID",
  "envdAccessToken", "domain", ...}`; `DELETE /sandboxes/{id}` → 204. Errors are
  `{"code", "message"}`.
- envd, the agent inside the sandbox, at `https://sandbox.<domain>` with the headers
  `E2b-Sandbox-Id`, `E2b-Sandbox-Port: 49983` and `X-Access-Token`:
  `POST /files?path=&username=user` (multipart field `file`), `GET /files?path=&username=user`,
  and `POST /process.Process/Start`, a Connect server stream in JSON: enveloped messages
  (1 flag byte, 4 length bytes) `{"event": {"start" | "data" | "end" | "keepalive": …}}`, data
  in base64, ending with an end-of-stream message (flag 2) that may hold `{"error": …}`.

`tests/fake_e2b.py` implements exactly these, and the contract tests run against it.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import struct
import time
from typing import Any

import httpx

from core.settings import E2BSettings, SandboxLimits
from skills.sandbox.backend import BackendUnavailable
from skills.sandbox.execution import Stream
from skills.sandbox.hosted import OVERHEAD_S, HostedError

log = logging.getLogger("agentos.sandbox.e2b")
ENVD_PORT = 49983
USER = "user"
END_STREAM = 0x02


class E2BProvider:
    name = "e2b"
    # The sandbox's disk is its template's; `ulimit -f` bounds one file only.
    unenforced = frozenset({"disk_mb"})

    def __init__(self, settings: E2BSettings, transport: httpx.BaseTransport | None = None) -> None:
        self.settings = settings
        self._transport = transport

    def ready(self) -> None:
        if self.settings.api_key is None or not self.settings.api_key.get_secret_value():
            raise BackendUnavailable("the e2b backend needs an API key: set AGENTOS_SANDBOX__E2B__API_KEY")

    def open(self, limits: SandboxLimits) -> E2BBox:
        s = self.settings
        key = s.api_key.get_secret_value() if s.api_key else ""
        api = httpx.Client(base_url=s.api_url.rstrip("/"), headers={"X-API-Key": key}, transport=self._transport,
                           timeout=s.request_timeout_s)
        body = {"templateID": s.template, "timeout": math.ceil(limits.wall_s + OVERHEAD_S),
                "allow_internet_access": False, "secure": True, "metadata": {"created_by": "agentos-sandbox"}}
        try:
            response = api.post("/sandboxes", json=body)
        except httpx.HTTPError as exc:
            api.close()
            raise HostedError(f"the E2B API at {s.api_url} is unreachable ({type(exc).__name__})") from None
        if response.status_code != 201:
            api.close()
            raise HostedError(_api_error("creating a sandbox", response, s.template))
        try:
            created = response.json()
            sandbox_id = str(created["sandboxID"])
        except (ValueError, KeyError, TypeError):
            api.close()
            raise HostedError(f"the E2B API answered 201 without a sandbox id: {response.text[:200]}") from None
        envd_url = s.sandbox_url or f"https://sandbox.{created.get('domain') or 'e2b.app'}"
        headers = {"E2b-Sandbox-Id": sandbox_id, "E2b-Sandbox-Port": str(ENVD_PORT)}
        if created.get("envdAccessToken"):
            headers["X-Access-Token"] = str(created["envdAccessToken"])
        envd = httpx.Client(base_url=envd_url.rstrip("/"), headers=headers, transport=self._transport,
                            timeout=s.request_timeout_s)
        return E2BBox(sandbox_id, api, envd)


class E2BBox:
    base = "agentos"  # relative: under the user's home directory, where envd resolves relative paths

    def __init__(self, sandbox_id: str, api: httpx.Client, envd: httpx.Client) -> None:
        self.sandbox_id = sandbox_id
        self._api = api
        self._envd = envd

    def put(self, path: str, data: bytes) -> None:
        response = self._call("uploading a file", "POST", "/files", params={"path": path, "username": USER},
                              files={"file": (path.rsplit("/", 1)[-1], data)})
        if response.status_code != 200:
            raise HostedError(_envd_error("uploading a file", response))

    def get(self, path: str) -> bytes | None:
        response = self._call("downloading a file", "GET", "/files", params={"path": path, "username": USER})
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise HostedError(_envd_error("downloading a file", response))
        return response.content

    def run(self, argv: list[str], timeout_s: float, stdout: Stream, stderr: Stream) -> int | None:
        request = {"process": {"cmd": argv[0], "args": argv[1:], "envs": {}}, "stdin": False}
        body = json.dumps(request).encode()
        headers = {"Content-Type": "application/connect+json", "Connect-Protocol-Version": "1",
                   "Connect-Timeout-Ms": str(int(timeout_s * 1000)),
                   "Authorization": "Basic " + base64.b64encode(f"{USER}:".encode()).decode()}
        deadline = time.monotonic() + timeout_s
        try:
            with self._envd.stream("POST", "/process.Process/Start", content=struct.pack(">BI", 0, len(body)) + body,
                                   headers=headers, timeout=httpx.Timeout(timeout_s + 5, connect=10)) as response:
                if response.status_code != 200:
                    response.read()
                    raise HostedError(_envd_error("starting the process", response))
                return _read_process(response, deadline, stdout, stderr)
        except httpx.TimeoutException:
            return None
        except httpx.HTTPError as exc:
            raise HostedError(f"the connection to E2B sandbox {self.sandbox_id} broke while the code ran "
                              f"({type(exc).__name__}); its result is lost") from None

    def close(self) -> None:
        try:
            response = self._api.delete(f"/sandboxes/{self.sandbox_id}")
            if response.status_code not in (200, 204, 404):
                log.warning("E2B did not delete sandbox %s (HTTP %s); it expires by its timeout",
                            self.sandbox_id, response.status_code)
        except httpx.HTTPError as exc:
            log.warning("E2B sandbox %s not deleted (%s); it expires by its timeout", self.sandbox_id, exc)
        finally:
            self._envd.close()
            self._api.close()

    def _call(self, what: str, method: str, url: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._envd.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise HostedError(f"E2B sandbox {self.sandbox_id}: {what} failed ({type(exc).__name__})") from None


def _read_process(response: httpx.Response, deadline: float, stdout: Stream, stderr: Stream) -> int | None:
    """Follow a Process/Start stream to its end; the exit code, or None past the deadline."""
    buffer = b""
    exit_code: int | None = None
    for chunk in response.iter_bytes():
        buffer += chunk
        while len(buffer) >= 5:
            flags, length = struct.unpack(">BI", buffer[:5])
            if len(buffer) < 5 + length:
                break
            message: dict[str, Any] = json.loads(buffer[5:5 + length] or b"{}")
            buffer = buffer[5 + length:]
            if flags & END_STREAM:
                error = message.get("error")
                if error:
                    if error.get("code") == "deadline_exceeded":
                        return None
                    raise HostedError(f"E2B ended the process with an error ({error.get('code')}: "
                                      f"{error.get('message', '')})")
                return exit_code
            event = (message.get("event") or {})
            if "data" in event:
                data = event["data"]
                if "stdout" in data:
                    stdout.feed(base64.b64decode(data["stdout"]))
                if "stderr" in data:
                    stderr.feed(base64.b64decode(data["stderr"]))
            elif "end" in event:
                # proto3 JSON leaves out zero values: no exitCode means 0.
                exit_code = int(event["end"].get("exitCode", 0))
        if time.monotonic() > deadline:
            return None
    if exit_code is None:
        raise HostedError("E2B's process stream ended before the process did; the code's result is lost")
    return exit_code


def _message(response: httpx.Response) -> str:
    try:
        body = response.json()
        return str(body.get("message") or body)
    except ValueError:
        return response.text[:200]


def _api_error(what: str, response: httpx.Response, template: str) -> str:
    status, message = response.status_code, _message(response)
    if status in (401, 403):
        return f"E2B refused the API key (AGENTOS_SANDBOX__E2B__API_KEY): {message}"
    if status == 429:
        return f"E2B is rate limiting or at the team's limit of concurrent sandboxes ({message}); retry later"
    if status in (400, 404):
        return f"E2B refused {what} from template {template!r} (AGENTOS_SANDBOX__E2B__TEMPLATE): {message}"
    return f"E2B failed {what} (HTTP {status}: {message})"


def _envd_error(what: str, response: httpx.Response) -> str:
    if response.status_code == 502:
        return f"the E2B sandbox stopped or cannot be reached ({what}: {_message(response)})"
    return f"E2B sandbox: {what} failed (HTTP {response.status_code}: {_message(response)})"
