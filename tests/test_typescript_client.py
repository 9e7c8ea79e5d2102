"""clients/typescript is current with the API: its `openapi.json` is what `/openapi.json` serves
now, its `src/schema.d.ts` is what openapi-typescript makes of it, and the package (the types and
the SSE helper) compiles with `tsc --noEmit`. The node parts skip where node/npm are missing,
except in CI, where they must run."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from api.openapi_export import document, render

PACKAGE = Path(__file__).resolve().parent.parent / "clients" / "typescript"
REGENERATE = "python -m api.openapi_export > clients/typescript/openapi.json && (cd clients/typescript && npm run generate)"


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
