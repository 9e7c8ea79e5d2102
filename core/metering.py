"""One run's usage metering: what each model call and sandbox execution cost, recorded once, and
what that tells the run about its org's monthly budgets.

A call is keyed by its place in the run (`core.store.usage`): the delegation path, the step and
the call within the step, e.g. `think:7` (the THINK that saw 7 messages), `call_ab12/think:1` (a
sub-agent's), `think:7:summary`, `plan:0`, `sandbox:<tool_call_id>`. A step that runs again after
a crash, an infrastructure error or a resume makes the same keys, so its calls count once.

A call is either recorded, or its step runs again: its record is never stored after the step's
checkpoint. How, depends on whether the org has a monthly budget:

- With one, the record is written in the same transaction as the run's pending events
  (`RunEmitter.flush_with`), before the step returns. Its statement returns the org's month so
  far, from which the meter learns whether a budget was reached (the run then stops at its next
  step, see `core.budgets`) or passed its warning share (a `budget.warning` event, once per
  budget per run).
- Without one, nobody waits for that answer: the record is deferred (`RunEmitter.defer`) and
  travels with the step's checkpoint, in the transaction that stores it (the run's emitter
  writes the thread's checkpoints, `StepSaver.attach_writer`), or with the emitter's next write
  if that comes first. The step saves the round trip (docs/benchmarks.md, issue 18).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import date
from decimal import Decimal
from typing import Any

from core import events
from core.admission import Limits
from core.budgets import BudgetState, monthly_states
from core.events import RunEmitter
from core.settings import ModelPrice, UsageSettings
from core.store import usage

log = logging.getLogger("agentos.metering")
_MILLION = Decimal(1_000_000)
_unpriced_warned: set[str] = set()


def price_of(prices: Mapping[str, ModelPrice], model: str) -> ModelPrice | None:
    """The model's own price, else its provider's (`provider:*`), else None."""
    found = prices.get(model)
    if found is None:
        found = prices.get(model.partition(":")[0] + ":*")
    return found


def cost_of(price: ModelPrice | None, input_tokens: int, output_tokens: int, cached_tokens: int) -> Decimal:
    """US dollars, exactly: cached input at its own price, the rest of the input and the output at theirs."""
    if price is None:
        return Decimal(0)
    cached = min(cached_tokens, input_tokens)
    cached_price = price.cached_input if price.cached_input is not None else price.input
    total = (input_tokens - cached) * price.input + cached * cached_price + output_tokens * price.output
    return total / _MILLION


def token_counts(usage_metadata: Mapping[str, Any] | None) -> tuple[int, int, int]:
    """(input, output, cached input) tokens of a LangChain `UsageMetadata`."""
    if not usage_metadata:
        return 0, 0, 0
    details = usage_metadata.get("input_token_details") or {}
    counts = (usage_metadata.get("input_tokens"), usage_metadata.get("output_tokens"), details.get("cache_read"))
    input_tokens, output_tokens, cached = (max(int(n or 0), 0) for n in counts)
    return input_tokens, output_tokens, cached


class Meter:
    """Records one run's calls (through its emitter's transaction) and tracks the org's budgets."""

    def __init__(self, emitter: RunEmitter, settings: UsageSettings, limits: Limits, month: usage.Month,
                 today: date | None = None) -> None:
        self._emitter = emitter
        self._settings = settings
        self._limits = limits
        self._today = today
        self._warned: set[str] = set()
        self.exceeded: BudgetState | None = None
        self._states = monthly_states(limits, month, settings.warn_at, today)

    @property
    def run_id(self) -> str:
        return self._emitter.run_id

    async def start(self) -> None:
        """Take in the budgets as they stand when the run (re)starts."""
        await self._observe()

    def over_budget(self) -> str | None:
        """Why the run must stop (a monthly budget was reached), or None."""
        return self.exceeded.describe() if self.exceeded is not None else None

    async def model_call(self, key: str, agent_id: str, model: str, usage_metadata: Mapping[str, Any] | None) -> None:
        """Record a model call (once per key) with its tokens and its cost from the price table."""
        input_tokens, output_tokens, cached = token_counts(usage_metadata)
        price = price_of(self._settings.prices, model)
        if price is None and model not in _unpriced_warned:
            _unpriced_warned.add(model)
            log.warning("no price for model %s in AGENTOS_USAGE__PRICES; its calls are recorded at cost 0", model)
        await self._record(usage.Call(
            run_id=self.run_id, key=key, kind="model", agent_id=agent_id, model=model, input_tokens=input_tokens,
            output_tokens=output_tokens, cached_tokens=cached,
            cost_usd=cost_of(price, input_tokens, output_tokens, cached)))

    async def sandbox(self, tool_call_id: str, agent_id: str, cpu_ms: int) -> None:
        """Record a sandbox execution's CPU time (once per tool call)."""
        await self._record(usage.Call(run_id=self.run_id, key=f"sandbox:{tool_call_id}", kind="sandbox",
                                      agent_id=agent_id, cpu_ms=max(cpu_ms, 0)))

    async def _record(self, call: usage.Call) -> None:
        if not self._states:  # no monthly budget: the month so far is of no use to the run
            self._emitter.defer(f"usage:{call.key}", usage.record_statement(call))
            return
        month = usage.month_of(await self._emitter.flush_with(usage.record_statement(call)))
        self._states = monthly_states(self._limits, month, self._settings.warn_at, self._today)
        await self._observe()

    async def _observe(self) -> None:
        for state in self._states:
            if state.exceeded and self.exceeded is None:
                self.exceeded = state
            if state.warning and state.budget not in self._warned:
                self._warned.add(state.budget)
                await self._emitter.emit(events.BUDGET_WARNING, state.public())
