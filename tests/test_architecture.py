"""The import edges of docs/architecture.md ("Import direction"), enforced by reading every
module's imports: layers, no import cycles, no test module importing another, and what the API
process loads."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
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


def test_api_modules_import_no_langchain_langgraph_or_celery_themselves():
    heavy = {"langchain", "langchain_core", "langgraph", "celery"}
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "api").rglob("*.py") if _imports(p) & heavy]
    assert offenders == []


# Run in a fresh interpreter: what the API process loads, by import and by building the app
# (which opens nothing until its lifespan starts, so no servers are needed).
_API_PROCESS = """
import json, sys
from api.app import create_app
from core.settings import load_settings
app = create_app(load_settings(env="test"))
print(json.dumps({"routes": len(app.routes), "modules": sorted(sys.modules)}))
"""


def test_the_api_process_loads_no_langchain_langgraph_or_worker_code():
    """The API stays small: it sends jobs by name through a Celery client (celery may load) and
    never loads the orchestrator's libraries or the worker's packages."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTOS_")}
    done = subprocess.run([sys.executable, "-c", _API_PROCESS], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.splitlines()[-1])
    assert loaded["routes"] > 0
    tops = {m.split(".")[0] for m in loaded["modules"]}
    heavy = {t for t in tops if t.startswith(("langchain", "langgraph")) or t in ("orchestrator", "runtime", "skills")}
    assert heavy == set()


def test_no_package_named_platform():
    assert not (ROOT / "platform").exists()


def test_the_checker_itself_sees_a_forbidden_edge(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from runtime.tasks import execute\nimport api.app\n")
    assert {"runtime", "api"} <= _imports(bad)


def _imported_names(path: Path, package: str) -> set[str]:
    """Every module name `path` imports (at any depth, in functions too), with relative imports
    resolved against `package` (the dotted package `path` belongs to); `from x import y` gives
    `x.y`, which names a module or else an attribute of module `x`."""
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
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the modules of `packages` it imports. An import of `a.b.c` counts as one of the
    deepest of `a.b.c`, `a.b`, `a` that is a module here (importing a submodule also runs its
    parents' `__init__`, but every module does that, so it is no edge)."""
    paths = {_module_name(p, root): p for package in packages if (root / package).exists()
             for p in sorted((root / package).rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for imported in _imported_names(path, package):
            parts = imported.split(".")
            found = next((".".join(parts[:n]) for n in range(len(parts), 0, -1) if ".".join(parts[:n]) in paths), None)
            if found is not None and found != name:
                targets.add(found)
        graph[name] = targets
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected group of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    cycles = []
    for group in groups:
        start = min(group)
        paths = {start: [start]}
        queue = [start]
        while queue:  # breadth-first within the group, back to `start`
            node = queue.pop(0)
            for target in sorted(graph[node] & group):
                if target == start:
                    cycles.append(paths[node] + [start])
                    queue = []
                    break
                if target not in paths:
                    paths[target] = paths[node] + [target]
                    queue.append(target)
    return cycles


def test_no_module_imports_a_module_that_imports_it_back():
    """Every import counts, inside functions and under TYPE_CHECKING too: a cycle broken by a
    function-level import is still a cycle."""
    cycles = _cycles(_import_graph(ROOT, (*PACKAGES, "tests", "bench")))
    assert cycles == [], "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_the_cycle_checker_sees_a_cycle_through_a_function_level_relative_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from pkg.a import A\n")
    (package / "a.py").write_text("from pkg.b import B\nA = 1\n")
    (package / "b.py").write_text("B = 2\ndef f():\n    from .sub import A\n")
    (package / "c.py").write_text("from . import a, b\n")
    graph = _import_graph(tmp_path, ("pkg",))
    assert graph["pkg.c"] == {"pkg.a", "pkg.b"}
    assert _cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub", "pkg.a"]]


def _test_modules_imported(path: Path) -> list[str]:
    """What a module of tests/ imports from conftest or a test module."""
    found = []
    for name in sorted(_imported_names(path, "tests")):
        parts = name.split(".")
        module = parts[1] if parts[0] == "tests" and len(parts) > 1 else parts[0]
        if module == "conftest" or module.startswith("test_"):
            found.append(name)
    return found


def test_no_test_module_imports_conftest_or_another_test_module():
    """Shared helpers live in tests/helpers.py (and fixtures in conftest); a test module that
    imports conftest or another test module runs that module's import-time code twice over and
    couples test files to each other."""
    offenders = [f"{path.name} imports {name}" for path in sorted((ROOT / "tests").glob("*.py"))
                 for name in _test_modules_imported(path)]
    assert offenders == []


def test_the_test_import_checker_sees_a_test_module_import(tmp_path):
    bad = tmp_path / "test_bad.py"
    bad.write_text("from tests.test_runs import wait\nfrom .conftest import Org\n"
                   "def f():\n    from tests import test_skills\n")
    bad.write_text(bad.read_text() + "from tests.helpers import Org\nfrom tests.sse import read_events\n")
    assert _test_modules_imported(bad) == ["tests.conftest.Org", "tests.test_runs.wait", "tests.test_skills"]
