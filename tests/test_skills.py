"""Skills: argument schemas and validation from signatures, the registry, and file_manager's
workspace confinement and limits."""

from __future__ import annotations

import asyncio
import os
import stat
from typing import Annotated, Literal

import pytest
from pydantic import Field

import skills.defaults as defaults_module
from core.skill_names import BUILTIN_SKILLS, DELEGATE_TOOL
from skills import Skill, SkillContext, SkillError, SkillRegistry, default_registry, skill
from skills.builtin.file_manager import MAX_READ_BYTES, MAX_WRITE_BYTES, file_manager

# --- a sample skill -------------------------------------------------------------------------

calls: list[dict[str, object]] = []


@skill()
async def search(
    ctx: SkillContext,
    query: Annotated[str, Field(description="What to look for.")],
    limit: int = 10,
    mode: Literal["fast", "exact"] = "fast",
    tags: list[str] | None = None,
) -> dict[str, object]:
    """Search the notes."""
    calls.append({"ctx": ctx, "query": query, "limit": limit, "mode": mode, "tags": tags})
    return {"hits": [], "limit": limit}


def _ctx(workspace):
    return SkillContext("org_1", "ses_1", "run_1", "agt_1", "call_1", workspace)


def _titles(node):
    if isinstance(node, dict):
        return [k for k, v in node.items() if k == "title" and isinstance(v, str)] + [
            t for v in node.values() for t in _titles(v)
        ]
    if isinstance(node, list):
        return [t for v in node for t in _titles(v)]
    return []


# --- schema derivation ----------------------------------------------------------------------


def test_schema_is_derived_from_the_signature():
    assert search.name == "search"
    assert search.description == "Search the notes."
    params = search.parameters
    assert params["type"] == "object"
    assert params["required"] == ["query"]
    assert list(params["properties"]) == ["query", "limit", "mode", "tags"]
    assert params["properties"]["query"] == {"type": "string", "description": "What to look for."}
    assert params["properties"]["limit"] == {"type": "integer", "default": 10}
    assert params["properties"]["mode"]["enum"] == ["fast", "exact"]
    assert params["properties"]["mode"]["default"] == "fast"
    assert params["additionalProperties"] is False
    assert _titles(params) == []


def test_decorator_arguments_override_name_and_description():
    @skill(name="lookup-v2", description="Look something up.", sensitive=True)
    async def lookup(ctx: SkillContext, key: str) -> str:
        """Ignored docstring."""
        return key

    assert (lookup.name, lookup.description) == ("lookup-v2", "Look something up.")
    assert lookup.is_sensitive({"key": "x"}) is True


def test_parameters_may_shadow_pydantic_attributes():
    @skill(description="Echo.")
    async def echo(ctx: SkillContext, json: str, schema: int = 1, model_config: bool = False) -> list[object]:
        return [json, schema, model_config]

    assert set(echo.parameters["properties"]) == {"json", "schema", "model_config"}
    assert echo.validate({"json": "a", "model_config": True}) == {"json": "a", "schema": 1, "model_config": True}
    assert asyncio.run(echo.invoke(_ctx(None), {"json": "b"})) == ["b", 1, False]


def test_decorator_refuses_functions_it_cannot_describe():
    def not_async(ctx: SkillContext, x: int) -> int:
        """Sync."""
        return x

    async def untyped(ctx, x):
        """No hints."""

    async def var_args(ctx: SkillContext, *xs: int) -> None:
        """Var args."""

    async def no_doc(ctx: SkillContext) -> None:
        pass

    async def no_ctx() -> None:
        """Nothing at all."""

    for func, message in [
        (not_async, "async"),
        (untyped, "type hint"),
        (var_args, "keyword"),
        (no_doc, "description"),
        (no_ctx, "SkillContext"),
    ]:
        with pytest.raises(TypeError, match=message):
            skill()(func)
    with pytest.raises(ValueError, match="letters"):
        skill(name="has space", description="Spaces.")(no_doc)


# --- validation -----------------------------------------------------------------------------


def test_validate_coerces_and_fills_defaults():
    assert search.validate({"query": "q", "limit": "5"}) == {"query": "q", "limit": 5, "mode": "fast", "tags": None}


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        ({"query": "q", "limit": "many"}, "limit: Input should be a valid integer"),
        ({"query": 3}, "query: Input should be a valid string"),
        ({"query": "q", "mode": "slow"}, "mode: Input should be 'fast' or 'exact'"),
        ({"query": "q", "tags": ["a", 1]}, "tags"),
        ({"query": "q", "surprise": 1}, "surprise: unknown argument"),
        ({}, "query: required argument is missing"),
    ],
)
def test_validate_rejects_bad_arguments_readably(args, problem):
    with pytest.raises(SkillError) as caught:
        search.validate(args)
    assert str(caught.value).startswith("Invalid arguments for search: ")
    assert problem in str(caught.value)


def test_validate_lists_every_problem():
    with pytest.raises(SkillError) as caught:
        search.validate({"limit": "x", "extra": True})
    message = str(caught.value)
    assert "query: required argument is missing" in message
    assert "limit: " in message
    assert "extra: unknown argument" in message


def test_invoke_validates_before_calling(tmp_path):
    calls.clear()
    ctx = _ctx(tmp_path)
    assert asyncio.run(search.invoke(ctx, {"query": "q", "limit": "3"})) == {"hits": [], "limit": 3}
    assert calls == [{"ctx": ctx, "query": "q", "limit": 3, "mode": "fast", "tags": None}]
    with pytest.raises(SkillError):
        asyncio.run(search.invoke(ctx, {"query": "q", "mode": "slow"}))
    assert len(calls) == 1


def test_tool_spec_is_an_openai_function_tool():
    spec = search.tool_spec()
    assert spec == {
        "type": "function",
        "function": {"name": "search", "description": "Search the notes.", "parameters": search.parameters},
    }
    spec["function"]["parameters"]["properties"].clear()
    assert "query" in search.parameters["properties"]


# --- the registry ---------------------------------------------------------------------------


def _named(name):
    async def run(ctx: SkillContext) -> None:
        return None

    return skill(name=name, description=f"The {name} skill.")(run)


def test_registry_registers_gets_and_selects_in_order():
    registry = SkillRegistry()
    a, b, c = _named("a"), _named("b"), _named("c")
    for s in (c, a, b):
        registry.register(s)
    assert registry.names() == ["a", "b", "c"]
    assert registry.get("b") is b
    assert "a" in registry and "zzz" not in registry and 3 not in registry
    assert registry.select(["c", "a"]) == [c, a]
    assert registry.select([]) == []


def test_registry_refuses_duplicates_and_the_reserved_name():
    registry = SkillRegistry()
    registry.register(_named("a"))
    with pytest.raises(ValueError, match="already registered"):
        registry.register(_named("a"))
    with pytest.raises(ValueError, match="reserved"):
        registry.register(_named(DELEGATE_TOOL))
    assert registry.names() == ["a"]


def test_registry_unknown_names_raise_key_error():
    registry = SkillRegistry()
    registry.register(_named("a"))
    with pytest.raises(KeyError, match="unknown skill 'nope'"):
        registry.get("nope")
    with pytest.raises(KeyError, match="nope"):
        registry.select(["a", "nope"])


def test_default_registry_holds_exactly_the_builtins():
    first, second = default_registry(), default_registry()
    assert first.names() == sorted(BUILTIN_SKILLS)
    assert first.get("file_manager") is file_manager
    first.register(_named("extra"))
    assert "extra" not in second


def test_default_registry_notices_a_mismatch(monkeypatch):
    monkeypatch.setattr(defaults_module, "BUILTIN_SKILLS", (*BUILTIN_SKILLS, "missing_skill"))
    with pytest.raises(AssertionError, match="missing_skill"):
        default_registry()


# --- file_manager ---------------------------------------------------------------------------


def fm(workspace, **args):
    return asyncio.run(file_manager.invoke(_ctx(workspace), args))


def test_file_manager_round_trip_in_a_new_private_workspace(tmp_path):
    ws = tmp_path / "workspaces" / "ses_1"
    assert fm(ws, action="write", path="notes/todo.md", content="héllo\n") == {"path": "notes/todo.md", "bytes": 7}
    assert stat.S_IMODE(ws.stat().st_mode) == 0o700
    assert fm(ws, action="read", path="notes/todo.md") == {"path": "notes/todo.md", "content": "héllo\n"}
    fm(ws, action="write", path="b.txt", content="bb")
    fm(ws, action="write", path="a.txt", content="a")
    assert fm(ws, action="list") == {
        "path": ".",
        "entries": [
            {"name": "a.txt", "type": "file", "size": 1},
            {"name": "b.txt", "type": "file", "size": 2},
            {"name": "notes", "type": "dir", "size": None},
        ],
    }
    assert fm(ws, action="list", path="./notes/")["entries"] == [{"name": "todo.md", "type": "file", "size": 7}]


def test_write_replaces_without_leaving_temp_files(tmp_path):
    fm(tmp_path, action="write", path="f.txt", content="old")
    assert fm(tmp_path, action="write", path="f.txt", content="new!") == {"path": "f.txt", "bytes": 4}
    assert (tmp_path / "f.txt").read_text() == "new!"
    assert os.listdir(tmp_path) == ["f.txt"]


def test_a_failed_write_leaves_neither_file_nor_temp_file(tmp_path, monkeypatch):
    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(SkillError, match="could not write 'f.txt': No space left on device"):
        fm(tmp_path, action="write", path="f.txt", content="x")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../x", "a/b/../../../x", "./../x"])
@pytest.mark.parametrize("action", ["read", "write", "list"])
def test_paths_outside_the_workspace_are_refused(tmp_path, path, action):
    ws = tmp_path / "ws"
    (ws / "a" / "b").mkdir(parents=True)
    (tmp_path / "x").write_text("outside")
    args = {"action": action, "path": path, **({"content": "pwned"} if action == "write" else {})}
    with pytest.raises(SkillError, match="outside the session workspace|is absolute"):
        fm(ws, **args)
    assert (tmp_path / "x").read_text() == "outside"


def test_symlinks_leading_outside_are_refused(tmp_path):
    ws, outside = tmp_path / "ws", tmp_path / "outside"
    ws.mkdir()
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (ws / "out").symlink_to(outside)
    (ws / "pw").symlink_to(outside / "secret.txt")
    (ws / "parent").symlink_to(tmp_path)
    for args in [
        {"action": "read", "path": "out/secret.txt"},
        {"action": "read", "path": "pw"},
        {"action": "list", "path": "out"},
        {"action": "write", "path": "out/new.txt", "content": "x"},
        {"action": "write", "path": "pw", "content": "x"},
        {"action": "read", "path": "parent/ws/pw"},
        # comes back into the workspace, but only by following a link that escapes on the way
        {"action": "list", "path": "parent/ws"},
    ]:
        with pytest.raises(SkillError, match="outside the session workspace"):
            fm(ws, **args)
    assert sorted(os.listdir(outside)) == ["secret.txt"]
    assert (outside / "secret.txt").read_text() == "secret"
    assert fm(ws, action="list")["entries"] == []  # escaping links are not shown


def test_paths_that_stay_inside_are_allowed(tmp_path):
    fm(tmp_path, action="write", path="a/../b.txt", content="b")
    (tmp_path / "alias.txt").symlink_to(tmp_path / "b.txt")
    assert fm(tmp_path, action="read", path="alias.txt")["content"] == "b"
    assert fm(tmp_path, action="read", path="./a/../b.txt") == {"path": "b.txt", "content": "b"}
    assert [e["name"] for e in fm(tmp_path, action="list")["entries"]] == ["alias.txt", "b.txt"]


def test_read_limit(tmp_path):
    (tmp_path / "max.txt").write_bytes(b"x" * MAX_READ_BYTES)
    (tmp_path / "big.txt").write_bytes(b"x" * (MAX_READ_BYTES + 1))
    assert len(fm(tmp_path, action="read", path="max.txt")["content"]) == MAX_READ_BYTES
    with pytest.raises(SkillError, match=f"{MAX_READ_BYTES + 1} bytes"):
        fm(tmp_path, action="read", path="big.txt")


@pytest.mark.parametrize("data", [b"\xff\xfe\xfd", b"text\x00with nul"])
def test_binary_files_are_refused(tmp_path, data):
    (tmp_path / "blob").write_bytes(data)
    with pytest.raises(SkillError, match="binary"):
        fm(tmp_path, action="read", path="blob")


def test_read_and_list_report_missing_and_wrong_kinds(tmp_path):
    (tmp_path / "dir").mkdir()
    (tmp_path / "f.txt").write_text("f")
    with pytest.raises(SkillError, match="'nope.txt' does not exist"):
        fm(tmp_path, action="read", path="nope.txt")
    with pytest.raises(SkillError, match="does not exist"):
        fm(tmp_path, action="list", path="nope")
    with pytest.raises(SkillError, match="not a file"):
        fm(tmp_path, action="read", path="dir")
    with pytest.raises(SkillError, match="not a directory"):
        fm(tmp_path, action="list", path="f.txt")
    with pytest.raises(SkillError, match="is a directory"):
        fm(tmp_path, action="write", path="dir", content="x")


def test_write_needs_content_and_respects_the_limit(tmp_path):
    with pytest.raises(SkillError, match="needs `content`"):
        fm(tmp_path, action="write", path="f.txt")
    with pytest.raises(SkillError, match=f"{MAX_WRITE_BYTES + 1} bytes"):
        fm(tmp_path, action="write", path="f.txt", content="x" * (MAX_WRITE_BYTES + 1))
    assert os.listdir(tmp_path) == []
    assert fm(tmp_path, action="write", path="f.txt", content="x" * MAX_WRITE_BYTES)["bytes"] == MAX_WRITE_BYTES


def test_file_manager_arguments_are_validated(tmp_path):
    with pytest.raises(SkillError, match="action: Input should be 'list', 'read' or 'write'"):
        fm(tmp_path, action="delete", path="f.txt")
    with pytest.raises(SkillError, match="mode: unknown argument"):
        fm(tmp_path, action="read", path="f.txt", mode="rb")


def test_only_write_is_sensitive():
    assert file_manager.is_sensitive({"action": "write", "path": "f", "content": "x"}) is True
    assert file_manager.is_sensitive({"action": "read", "path": "f"}) is False
    assert file_manager.is_sensitive({"action": "list"}) is False
    assert search.is_sensitive({"query": "q"}) is False


def test_file_manager_schema_and_spec():
    spec = file_manager.tool_spec()
    assert spec["type"] == "function"
    fn = spec["function"]
    assert fn["name"] == "file_manager"
    assert "relative to the session workspace" in fn["description"]
    assert fn["parameters"]["required"] == ["action"]
    assert fn["parameters"]["properties"]["action"]["enum"] == ["list", "read", "write"]
    assert fn["parameters"]["properties"]["path"]["default"] == "."
    assert isinstance(file_manager, Skill)
