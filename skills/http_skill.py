"""An org's HTTP skill (`core.skill_defs.HttpSkill`) as a Skill the model can call.

A call sends the validated arguments as a JSON body, signed the Standard Webhooks way so the
receiver can check it came from AgentOS: `webhook-id` (the tool call's id), `webhook-timestamp`
(Unix seconds) and `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, keyed
by the org secret the skill names as `signing_secret` (a `whsec_<base64>` value is decoded, as
Standard Webhooks libraries expect; any other value is used as UTF-8 bytes). `Idempotency-Key`
is the tool call's id too, so the retries on 429/5xx (and a call re-run after a worker crash)
are recognisable as one call. The request goes through the outbound SSRF guard with the org's
allowlists; the response is size-limited. Every failure is a SkillError the model reads."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from typing import Any

from core.outbound import OutboundError
from core.skill_defs import HttpSkill
from core.store import org_outbound
from skills.arguments import schema_validator
from skills.skill import Skill, SkillContext, SkillError

MAX_RESPONSE_BYTES = 256 * 1024
RETRIES = 2  # after the first attempt, on 429/5xx, timeouts and failed connections


def signing_key(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        try:
            return base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError):
            raise SkillError("The signing secret starts with 'whsec_' but the rest is not base64.") from None
    return secret.encode()


def sign(key: bytes, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value for one message."""
    digest = hmac.new(key, f"{message_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def build_http_skill(name: str, version: int, definition: dict[str, Any]) -> Skill:
    spec = HttpSkill.model_validate(definition)

    async def call(ctx: SkillContext, **args: Any) -> Any:
        headers: dict[str, str] = {}
        for header, value in spec.headers.items():
            headers[header] = await ctx.secret(value.secret) if not isinstance(value, str) else value
        body = json.dumps(args, ensure_ascii=False, separators=(",", ":")).encode()
        timestamp = int(time.time())
        key = signing_key(await ctx.secret(spec.signing_secret.secret))
        headers |= {"Content-Type": "application/json", "Idempotency-Key": ctx.tool_call_id,
                    "webhook-id": ctx.tool_call_id, "webhook-timestamp": str(timestamp),
                    "webhook-signature": sign(key, ctx.tool_call_id, timestamp, body)}
        private = (await ctx.org_settings()).get(org_outbound.KEY) or []
        try:
            async with ctx.outbound(allow=[str(a) for a in private] if isinstance(private, list) else []) as http:
                response = await http.request(spec.method, spec.url, headers=headers, content=body,
                                              timeout_s=spec.timeout_s, max_bytes=MAX_RESPONSE_BYTES, retries=RETRIES,
                                              follow_redirects=False)
        except OutboundError as exc:
            raise SkillError(f"The skill {name} could not be called: {exc}") from None
        if not response.ok:
            raise SkillError(f"The skill {name}'s endpoint answered HTTP {response.status}: "
                             f"{response.text()[:300] or 'no details'}")
        if response.content_type == "application/json" or response.content_type.endswith("+json"):
            try:
                return response.json()
            except ValueError:
                raise SkillError(f"The skill {name}'s endpoint sent invalid JSON.") from None
        return response.text()

    return Skill(name, spec.description, spec.parameters, call, spec.sensitive,
                 validator=schema_validator(spec.parameters), version=version)



