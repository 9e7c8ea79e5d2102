"""Issue #4 item 6, small: runs with tool calls while worker processes are SIGKILLed at random
moments (`bench/chaos.py`, which starts its own stack: the session `worker` fixture would
otherwise take these runs from the shared queue). Nothing is lost, no completed tool call runs
twice, every stream is gap-free and every run succeeds."""

from __future__ import annotations

import pytest

from bench.chaos import ChaosOptions, run_chaos


@pytest.mark.timeout(180)
def test_runs_survive_workers_killed_at_random_moments() -> None:
    report = run_chaos(ChaosOptions(runs=20, workers=3, kills=10, concurrency=4, seed=7,
                                    min_interval_s=0.3, max_interval_s=1.2, max_seconds=90, quiet=True))
    assert report.kills >= 8, report
    assert report.runs >= 20, report
    assert report.lost == 0, report.problems
    assert report.duplicated_completed == 0, report.problems
    assert report.tool_call_row_mismatches == 0, report.problems
    assert report.stream_gaps == 0, report.problems
    assert report.succeeded == report.runs, report.problems
    assert report.ok, report.problems
