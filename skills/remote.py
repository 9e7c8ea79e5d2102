"""Skills executed on a remote runner (docs/runners.md), as the worker sees them.

An agent routes some or all of `file_manager`, `code_executor`, `shell` and `git` to a runner
(`AgentConfig.runner`). The worker then does not run the skill: it stores the call in
`runner_calls` (keyed by the tool call's id, so a replayed step sends the same call, never a
second one), wakes the API process holding the runner's connection through Redis, and waits for
the result the runner posts. A runner that is offline when the call is made is handled before
the call, by the run waiting like an approval (`orchestrator.runner_wait`); one that goes offline
while the worker waits (its link dropped, its heartbeats stopped) ends the wait with
`RunnerWentOffline` after a short grace, and the run then waits for it the same way.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, Literal

from pydantic import Field

from core import runner_link
from core.agent_config import RunnerRoute
from core.infra import Infra
from core.store import runners
from core.store.runners import RunnerRow
from skills.skill import Skill, SkillContext, SkillError, skill

ONLY_ON_RUNNERS = "This skill runs only on a remote runner; route it to one with the agent's `runner`."

SHELL_DESCRIPTION = (
    "Run a shell command (bash) on the runner's machine, in this run's own git worktree (its working "
    "directory). Returns exit_code, stdout, stderr (each cut at a limit) and timed_out."
)
GIT_DESCRIPTION = (
    "Git in this run's own worktree on the runner (branch agentos/<run id>): action='status' lists changed "
    "files, action='diff' shows the diff summary, action='commit' commits every change with `message` "
    "(the run id is added to it) and returns the commit and its diff summary."
)


@skill(name="shell", description=SHELL_DESCRIPTION, sensitive=True)
async def shell(
    ctx: SkillContext,
    command: Annotated[str, Field(description="The command line, run by bash.", min_length=1, max_length=100_000)],
    timeout_s: Annotated[float | None, Field(description="Wall-clock limit in seconds.", gt=0, le=3600)] = None,
) -> dict[str, Any]:
    raise SkillError(ONLY_ON_RUNNERS)


@skill(name="git", description=GIT_DESCRIPTION, sensitive=lambda args: args.get("action") == "commit")
async def git(
    ctx: SkillContext,
    action: Annotated[Literal["status", "diff", "commit"], Field(description="What to do.")],
    message: Annotated[str | None, Field(description="The commit message (action='commit').",
                                         max_length=10_000)] = None,
) -> dict[str, Any]:
    raise SkillError(ONLY_ON_RUNNERS)


RUNNER_ONLY: dict[str, Skill] = {shell.name: shell, git.name: git}


class RunnerWentOffline(Exception):
    """The runner holding a sent call went offline for longer than `runners.offline_grace_s`: the
    worker stops waiting (and holding its slot); the run waits for the runner like an approval
    (`orchestrator.runner_wait`). Not a skill failure: the call may still finish there."""

    def __init__(self, runner: RunnerRow) -> None:
        super().__init__(f"runner {runner['name']!r} went offline")
        self.runner = runner


async def resolve_runner(infra: Infra, org_id: str, route: RunnerRoute) -> RunnerRow:
    """The runner a call goes to: the one named, or the first (by name) connected runner whose
    labels match, else the first matching one (the call then waits for it)."""
    live = await runners.live_runners(infra.pool, org_id)
    if route.name is not None:
        matching = [r for r in live if r["name"] == route.name]
        wanted = f"named {route.name!r}"
    else:
        matching = [r for r in live if all(r["labels"].get(k) == v for k, v in route.labels.items())]
        wanted = f"with labels {route.labels}"
    if not matching:
        raise SkillError(f"No runner {wanted} is registered in this organisation (POST /v1/runners creates one).")
    if len(matching) == 1:  # a name is unique among live runners: no choice to make
        return matching[0]
    for row in matching:
        if await runner_link.is_online(infra.redis, org_id, row["id"]):
            return row
    return matching[0]


def remote(base: Skill, route: RunnerRoute, call_timeout_s: float) -> Skill:
    """`base` executed on the runner `route` names: same name, description and arguments."""

    async def call(ctx: SkillContext, **args: Any) -> Any:
        infra = ctx.require_infra()
        runner = await resolve_runner(infra, ctx.org_id, route)
        row = await runners.send_call(infra.pool, ctx.org_id, ctx.tool_call_id, runner_id=runner["id"],
                                      run_id=ctx.run_id, session_id=ctx.session_id, name=base.name, args=args)
        if row["runner_id"] != runner["id"]:  # sent to another one by an earlier attempt: it stays there
            runner = await runners.read_runner(infra.pool, ctx.org_id, row["runner_id"]) or runner
        grace = infra.settings.runners.offline_grace_s
        offline_since: float | None = None
        outcome: dict[str, Any] | None = None
        if row["status"] == "done":  # answered in an earlier attempt of this step
            outcome = {"output": row["output"], "error": row["error"]}
        else:
            await runner_link.announce_call(infra.redis, ctx.org_id, runner["id"], {
                "id": row["id"], "run_id": row["run_id"], "name": row["name"], "args": row["args"]})
        give_up = time.monotonic() + call_timeout_s
        while outcome is None:
            if time.monotonic() >= give_up:
                raise SkillError(f"The runner {runner['name']!r} did not answer within {call_timeout_s:g} s; the "
                                 "call may still run there. Check the runner's log before retrying.")
            # The announced result is the stored one: no need to read it back from Postgres.
            outcome = await runner_link.wait_for_result(infra.redis, ctx.org_id, ctx.tool_call_id,
                                                        runner_link.BLOCK_S)
            if outcome is None:  # no wake-up within BLOCK_S (or a lost one): look at the truth
                found = await runners.read_call(infra.pool, ctx.org_id, ctx.tool_call_id)
                if found is None:
                    raise SkillError("The call to the runner was lost (its run was deleted?).")
                if found["status"] == "done":
                    outcome = {"output": found["output"], "error": found["error"]}
                elif await runner_link.is_online(infra.redis, ctx.org_id, runner["id"]):
                    offline_since = None
                elif offline_since is None:
                    offline_since = time.monotonic()
                if outcome is None and offline_since is not None and time.monotonic() - offline_since >= grace:
                    raise RunnerWentOffline(runner)
        if outcome["error"] is not None:
            raise SkillError(str(outcome["error"]))
        return outcome["output"]

    return Skill(base.name, base.description, base.parameters, call, base.sensitive, validator=base.validate)
