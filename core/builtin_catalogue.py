"""The built-in skills as the API shows them (description, JSON schema, sensitivity), read from
`builtin_skills.json` so the API need not import `skills/`. The worker's `default_registry()`
refuses to start if the file differs from the skills it holds; `python -m skills`
rewrites it."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypedDict

CATALOGUE_PATH = Path(__file__).with_name("builtin_skills.json")


class BuiltinSkill(TypedDict):
    description: str
    parameters: dict[str, Any]
    sensitive: bool | Literal["by_arguments"]  # "by_arguments": e.g. file_manager's writes only


@cache
def builtin_catalogue() -> dict[str, BuiltinSkill]:
    data: dict[str, BuiltinSkill] = json.loads(CATALOGUE_PATH.read_text(encoding="utf-8"))
    return data
