"""clients/typescript is current with the API: its `openapi.json` is what `/openapi.json` serves
now, its `src/schema.d.ts` is what openapi-typescript makes of it, and the package (the types and
the SSE helper) compiles with `tsc --noEmit`. The node parts skip where node/npm are missing,
except in CI, where they must run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from api.app import create_app
from api.openapi_export import document, render
from tests.helpers import new_org, serving, start_run

PACKAGE = Path(__file__).resolve().parent.parent / "clients" / "typescript"
REGENERATE = ("python -m api.openapi_export > clients/typescript/openapi.json && "
              "(cd clients/typescript && npm run generate)")


@pytest.fixture(scope="module")
def npm() -> str:
    """npm, with the package's devDependencies installed (`npm ci` once; node_modules is kept)."""
    found = shutil.which("npm")
    if found is None or shutil.which("node") is None:
        if os.environ.get("CI"):
            pytest.fail("node and npm are needed in CI to check the TypeScript client")
        pytest.skip("node/npm not installed")
    bins = PACKAGE / "node_modules" / ".bin"
    if not ((bins / "tsc").exists() and (bins / "openapi-typescript").exists()):
        subprocess.run([found, "ci", "--no-audit", "--no-fund"], cwd=PACKAGE, check=True, timeout=110,
                       capture_output=True)
    return found


def test_the_checked_in_document_is_the_served_one(client):
    served = client.get("/openapi.json").json()
    assert served == document()
    assert (PACKAGE / "openapi.json").read_bytes() == render(served), f"stale: regenerate with `{REGENERATE}`"


def test_the_generated_types_are_current(npm, tmp_path):
    out = tmp_path / "schema.d.ts"
    subprocess.run([npm, "exec", "--", "openapi-typescript", "openapi.json", "--output", str(out)], cwd=PACKAGE,
                   check=True, timeout=110, capture_output=True)
    assert out.read_text() == (PACKAGE / "src" / "schema.d.ts").read_text(), f"stale: regenerate with `{REGENERATE}`"


def test_the_package_compiles(npm):
    done = subprocess.run([npm, "exec", "--", "tsc", "--noEmit", "-p", "tsconfig.json"], cwd=PACKAGE,
                          timeout=110, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# Streams a session through sse.ts; the first connection is cut right after its first event, as
# a dropped network would, and the helper must resume from there.
RESUME_SCRIPT = """
import { streamEvents } from "./js/sse.js";

const [url, token, total] = [process.argv[2], process.argv[3], Number(process.argv[4])];
const lastEventIds = [];
let connections = 0;

async function cutOnce(input, init) {
  lastEventIds.push(init.headers["Last-Event-ID"] ?? null);
  const response = await fetch(input, init);
  if (++connections > 1) return response;
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let text = "";
  const body = new ReadableStream({
    async pull(controller) {
      const { value, done } = await reader.read();
      if (done) return controller.close();
      text += decoder.decode(value, { stream: true });
      const end = text.replace(/\\r\\n/g, "\\n").indexOf("\\n\\n", text.indexOf("data:"));
      if (text.includes("data:") && end >= 0) {
        controller.enqueue(new TextEncoder().encode(text.replace(/\\r\\n/g, "\\n").slice(0, end + 2)));
        controller.error(new TypeError("network connection lost"));
        reader.cancel();
      }
    },
  });
  return new Response(body, { status: response.status, headers: response.headers });
}

const seqs = [];
for await (const event of streamEvents(url, { token, fetch: cutOnce, retryMs: 50 })) {
  seqs.push(event.seq);
  if (seqs.length === total) break;
}
console.log(JSON.stringify({ seqs, lastEventIds }));
process.exit(0);
"""


def test_the_sse_helper_resumes_after_a_drop_with_no_gap_and_no_repeat(npm, settings, client, tmp_path):
    org = new_org(client, "typescript sse")
    session = org.create_session(str(org.create_agent()["id"]))
    for i in range(3):  # each run: run.queued, then run.cancelled
        run = start_run(org, str(session["id"]), f"run {i}")
        assert client.post(f"/v1/runs/{run['id']}/cancel", headers=org.headers).status_code == 202
    subprocess.run([npm, "exec", "--", "tsc", "-p", "tsconfig.json", "--noEmit", "false", "--outDir",
                    str(tmp_path / "js")], cwd=PACKAGE, check=True, timeout=110, capture_output=True)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "resume.mjs").write_text(RESUME_SCRIPT)
    with serving(create_app(settings)) as served:
        done = subprocess.run(["node", "resume.mjs", f"{served.url}/v1/sessions/{session['id']}/events?after=0",
                               org.key, "6"], cwd=tmp_path, timeout=60, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["seqs"] == [1, 2, 3, 4, 5, 6]  # every event once, in order, across the drop
    assert result["lastEventIds"] == [None, "1"]  # the reconnect resumed after the one event it had


# Starts a run and streams it through streamNewRun; the first connection (the POST) is cut right
# after its first event, and the helper must go on with the run's GET from there.
NEW_RUN_SCRIPT = RESUME_SCRIPT.replace('import { streamEvents } from "./js/sse.js";',
                                       'import { streamNewRun } from "./js/sse.js";').replace(
    "lastEventIds.push(init.headers[\"Last-Event-ID\"] ?? null);",
    "lastEventIds.push([init.method ?? \"GET\", input.replace(process.argv[2], \"\"), "
    "init.headers[\"Last-Event-ID\"] ?? null, init.headers[\"Idempotency-Key\"] ? \"key\" : null]);").replace(
    "for await (const event of streamEvents(url, { token, fetch: cutOnce, retryMs: 50 })) {\n  seqs.push(event.seq);\n"
    "  if (seqs.length === total) break;\n}",
    "const session = process.argv[4];\n"
    "for await (const event of streamNewRun(url, session, { input: \"hello\" }, { token, fetch: cutOnce, retryMs: 50 "
    "})) {\n  seqs.push([event.seq, event.type, event.run_id]);\n}")


@pytest.mark.usefixtures("worker")
def test_the_new_run_helper_starts_one_run_and_resumes_its_stream_with_a_get(npm, settings, client, tmp_path):
    assert "streamNewRun(url, session" in NEW_RUN_SCRIPT  # every replacement above applied
    org = new_org(client, "typescript new run")
    session = org.create_session(str(org.create_agent()["id"]))
    subprocess.run([npm, "exec", "--", "tsc", "-p", "tsconfig.json", "--noEmit", "false", "--outDir",
                    str(tmp_path / "js")], cwd=PACKAGE, check=True, timeout=110, capture_output=True)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    (tmp_path / "new_run.mjs").write_text(NEW_RUN_SCRIPT)
    with serving(create_app(settings)) as served:
        done = subprocess.run(["node", "new_run.mjs", served.url, org.key, str(session["id"])], cwd=tmp_path,
                              timeout=60, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    seqs, types, run_ids = zip(*result["seqs"], strict=True)
    assert types[0] == "run.queued" and types[-1] == "run.succeeded" and len(set(run_ids)) == 1
    assert list(seqs) == list(range(seqs[0], seqs[0] + len(seqs)))  # every event once, in order
    run_id = run_ids[0]
    assert result["lastEventIds"] == [["POST", f"/v1/sessions/{session['id']}/runs", None, "key"],
                                      ["GET", f"/v1/runs/{run_id}/events", str(seqs[0]), None]]
    listed = client.get(f"/v1/sessions/{session['id']}/runs", headers=org.headers).json()["data"]
    assert [r["id"] for r in listed] == [run_id]
