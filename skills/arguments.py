"""A skill's arguments, derived from its function signature: a pydantic model that validates
them, the JSON schema a model sees, and readable messages for invalid calls."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import Any

from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

_LITERAL_KEYWORDS = ("default", "enum", "const", "examples")
_KEYWORD_KINDS = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)


class ArgumentSpec:
    """The validating model of one skill function, plus the mapping back to its parameter names.

    Fields are named `a0, a1, ...` with the parameter name as alias, so a parameter may be called
    anything (`json`, `schema`, `model_id`) without clashing with pydantic's own attributes."""

    def __init__(self, func: Callable[..., Any], model_name: str) -> None:
        params = list(inspect.signature(func).parameters.values())
        if not params or params[0].kind not in (inspect.Parameter.POSITIONAL_ONLY, *_KEYWORD_KINDS):
            raise TypeError(f"{func.__qualname__}: the first parameter must be the SkillContext (ctx)")
        hints = typing.get_type_hints(func, include_extras=True)
        fields: dict[str, Any] = {}
        self.param_names: dict[str, str] = {}
        for index, param in enumerate(params[1:]):
            if param.kind not in _KEYWORD_KINDS:
                raise TypeError(f"{func.__qualname__}: parameter {param.name!r} must be passable by keyword")
            if param.name not in hints:
                raise TypeError(f"{func.__qualname__}: parameter {param.name!r} needs a type hint")
            default = ... if param.default is inspect.Parameter.empty else param.default
            field_name = f"a{index}"
            fields[field_name] = (hints[param.name], Field(default, alias=param.name))
            self.param_names[field_name] = param.name
        self.model: type[BaseModel] = create_model(model_name, __config__=ConfigDict(extra="forbid"), **fields)

    def json_schema(self) -> dict[str, Any]:
        """The arguments as a JSON schema of type object, without pydantic's generated titles."""
        schema: dict[str, Any] = _drop_titles(self.model.model_json_schema(by_alias=True))
        schema.setdefault("properties", {})
        schema.setdefault("required", [])
        schema["additionalProperties"] = False
        return schema

    def validate(self, args: object) -> dict[str, Any]:
        """Validated, coerced arguments keyed by parameter name, defaults filled in.

        Raises pydantic's ValidationError; `describe_errors` turns it into a sentence."""
        parsed = self.model.model_validate(args)
        return {self.param_names[field]: value for field, value in parsed}


def schema_validator(schema: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A check of arguments against a declared JSON schema (draft 2020-12): the arguments back
    unchanged, or ValueError naming every problem (at most ten) by its place."""
    checker = Draft202012Validator(schema)

    def validate(args: dict[str, Any]) -> dict[str, Any]:
        problems = []
        for error in sorted(checker.iter_errors(args), key=lambda e: list(map(str, e.absolute_path)))[:10]:
            where = ".".join(str(part) for part in error.absolute_path) or "arguments"
            problems.append(f"{where}: {error.message}")
        if problems:
            raise ValueError("; ".join(problems))
        return args

    return validate


def describe_errors(error: ValidationError) -> str:
    """One line per problem, e.g. `action: Input should be 'list' or 'read'`."""
    problems = []
    for item in error.errors(include_url=False):
        where = ".".join(str(part) for part in item["loc"]) or "arguments"
        if item["type"] == "extra_forbidden":
            problems.append(f"{where}: unknown argument")
        elif item["type"] == "missing":
            problems.append(f"{where}: required argument is missing")
        else:
            problems.append(f"{where}: {item['msg']}")
    return "; ".join(problems)


def _drop_titles(node: Any) -> Any:
    """Remove the `title` keywords pydantic adds, keeping properties that happen to be named title."""
    if isinstance(node, list):
        return [_drop_titles(item) for item in node]
    if not isinstance(node, dict):
        return node
    cleaned: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in _LITERAL_KEYWORDS:
            cleaned[key] = value
        elif key in ("properties", "$defs") and isinstance(value, dict):
            cleaned[key] = {name: _drop_titles(sub) for name, sub in value.items()}
        else:
            cleaned[key] = _drop_titles(value)
    return cleaned
