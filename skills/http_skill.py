"""An org's HTTP skill (`core.skill_defs.HttpSkill`) as a Skill the model can call."""

from __future__ import annotations

from typing import Any

from core.skill_defs import HttpSkill
from skills.arguments import schema_validator
from skills.skill import Skill, SkillContext, SkillError


def build_http_skill(name: str, version: int, definition: dict[str, Any]) -> Skill:
    spec = HttpSkill.model_validate(definition)

    async def call(ctx: SkillContext, **args: Any) -> Any:
        raise SkillError(f"The HTTP skill {name} cannot be called yet: this worker has no outbound HTTP client.")

    return Skill(name, spec.description, spec.parameters, call, spec.sensitive,
                 validator=schema_validator(spec.parameters), version=version)
