"""`DELETE /v1/users-data?user=<id>`: erase one end user's data across the org (admin), a
privacy request. core.erasure removes the sessions and what hangs off them; the user's memories
go through memory.long_term and memory.redis_store. The audit log keeps the fact, not whose."""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError
from starlette.responses import Response

from api.endpoint import Call, Param, endpoint, resource, validation_failed
from api.schemas.lifecycle import UserDataErased
from api.state import state_of
from core import erasure
from core.errors import ApiError
from core.store import audit
from core.tenancy import tenant_tx
from memory import long_term
from memory.redis_store import RedisMemoryStore


@endpoint("Erase one end user's data (`?user=`): their sessions with runs, messages, events, tool calls and "
          "checkpoints, their memories and the files only they used. The audit log records the erasure and "
          "counts, naming the user only by a digest. Sending it again is harmless.",
          role="admin", response=UserDataErased, errors=("UNAVAILABLE",),
          params=(Param("user", {"type": "string", "minLength": 1, "maxLength": 200},
                        "The end user (a session's `user_id`) whose data to erase.", required=True),))
async def erase_user_data(call: Call[Any]) -> Response:
    user_id = call.request.query_params.get("user", "")
    if not 1 <= len(user_id) <= 200:
        raise validation_failed([{"field": "user", "message": "is required: the end user whose data to erase"}])
    org_id = call.principal.org_id
    removed = await erasure.erase_sessions(call.infra, state_of(call.request).storage, org_id, user_id)
    async with tenant_tx(call.pool, org_id) as conn:
        memories = await long_term.delete_for_user(conn, user_id)
    try:
        memories += await RedisMemoryStore(call.infra.redis, default_ttl_s=None).delete_for_user(org_id, user_id)
    except (RedisError, OSError):
        raise ApiError("UNAVAILABLE", "The user's sessions and stored memories are erased, but the short-term notes "
                                      "in Redis could not be reached; send the request again.") from None
    rows = removed.rows
    body = {"sessions": rows.get("sessions", 0), "runs": rows.get("runs", 0), "messages": rows.get("messages", 0),
            "run_events": rows.get("run_events", 0), "tool_calls": rows.get("tool_calls", 0),
            "memories": memories + rows.get("memories", 0), "files": removed.files,
            "checkpoints": sum(rows.get(t, 0) for t in ("checkpoints", "checkpoint_blobs", "checkpoint_writes")),
            "redis_keys": removed.redis_keys}
    async with tenant_tx(call.pool, org_id) as conn:
        await audit.record(conn, call.principal.actor, "user_data.erase", "end_user", erasure.subject_digest(user_id),
                           body)
    return call.reply(body)


routes = [resource("/v1/users-data", DELETE=erase_user_data)]
