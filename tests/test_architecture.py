"""The import edges of ARCHITECTURE.md, enforced by reading every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("agentos", "core", "memory", "skills", "orchestrator", "runtime", "api")
ALLOWED = {
    "core": set(),
    "memory": {"core"},
    "skills": {"core", "memory"},
    "orchestrator": {"core", "memory", "skills"},
    "runtime": {"core", "memory", "skills", "orchestrator"},
    "api": {"core", "memory"},
    "agentos": set(PACKAGES) - {"agentos"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_packages_import_only_what_the_architecture_allows():
    violations = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")) if (ROOT / package).exists() else []:
            for imported in _imports(path) & set(PACKAGES):
                if imported != package and imported not in ALLOWED[package]:
                    violations.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert violations == []


def test_api_never_loads_langchain_or_langgraph():
    heavy = {"langchain", "langchain_core", "langgraph", "celery"}
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "api").rglob("*.py") if _imports(p) & heavy]
    assert offenders == []


def test_no_package_named_platform():
    assert not (ROOT / "platform").exists()


def test_the_checker_itself_sees_a_forbidden_edge(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from runtime.tasks import execute\nimport api.app\n")
    assert {"runtime", "api"} <= _imports(bad)


def _imported_names(path: Path, package: str) -> set[str]:
    """Every module name `path` imports (at any depth, in functions too), with relative imports
    resolved against `package` (the dotted package `path` belongs to); `from x import y` names
    both `x` and `x.y`, since y may be a module."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                base = ".".join(parts[: len(parts) - (node.level - 1)] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def test_no_test_module_imports_conftest_or_another_test_module():
    """Shared helpers live in tests/helpers.py (and fixtures in conftest); a test module that
    imports conftest or another test module runs that module's import-time code twice over and
    couples test files to each other."""
    offenders = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for name in _imported_names(path, "tests"):
            leaf = name.split(".")[-1]
            if name.startswith("tests.") or "." not in name:
                if leaf == "conftest" or leaf.startswith("test_"):
                    offenders.append(f"{path.name} imports {name}")
    assert offenders == []


def test_the_test_import_checker_sees_a_test_module_import(tmp_path):
    bad = tmp_path / "test_bad.py"
    bad.write_text("from tests.test_runs import wait\nfrom .conftest import Org\n"
                   "def f():\n    from tests import test_skills\n")
    assert {"tests.test_runs", "tests.conftest", "tests.test_skills"} <= _imported_names(bad, "tests")
