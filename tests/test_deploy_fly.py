"""fly.toml and the worker autoscaler's app, checked offline (flyctl is not installed here): the
process groups run the image's commands, migrations run before a release, the API's health
check and metrics are wired, and workers get time to release their runs."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def _load(path: str) -> dict[str, Any]:
    return tomllib.loads((ROOT / path).read_text())


def test_fly_runs_four_process_groups_from_the_one_image():
    fly = _load("fly.toml")
    assert {name: cmd.split()[0] for name, cmd in fly["processes"].items()} == {
        "api": "api", "worker": "worker", "watchdog": "watchdog", "sandbox": "sandbox"}
    assert fly["build"]["dockerfile"] == "Dockerfile"
    assert fly["build"]["args"] == {"RUN_AS": "root"}, "the entrypoint drops all but the sandbox to `agentos`"
    assert fly["deploy"]["release_command"] == "migrate"
    assert {p for vm in fly["vm"] for p in vm["processes"]} == set(fly["processes"])


def test_fly_checks_readiness_and_scrapes_metrics_on_the_api():
    fly = _load("fly.toml")
    service = fly["http_service"]
    assert service["processes"] == ["api"] and service["internal_port"] == 8000
    assert service["min_machines_running"] >= 2
    assert [c["path"] for c in service["checks"]] == ["/readyz"]
    assert fly["metrics"] == {"port": 8000, "path": "/metrics", "processes": ["api"]}


def test_fly_gives_workers_time_to_release_their_runs():
    fly = _load("fly.toml")
    assert fly["kill_signal"] == "SIGTERM"
    grace = float(fly["env"]["AGENTOS_WORKER__SHUTDOWN_GRACE_S"])
    assert fly["kill_timeout"] >= grace + 5
    assert fly["env"]["AGENTOS_ENV"] == "production"
    text = (ROOT / "fly.toml").read_text()
    assert not re.search(r"(SECRET|TOKEN|PASSWORD|KEYS|DATABASE_URL|REDIS_URL)\w*\s*=", text), "fly secrets set"


def test_the_autoscaler_scales_the_worker_group_on_queue_depth():
    scaler = _load("infra/fly/autoscaler.toml")
    fly = _load("fly.toml")
    env = scaler["env"]
    assert scaler["build"]["image"].startswith("flyio/fly-autoscaler:")
    assert scaler["app"] != fly["app"], "the autoscaler is its own app"
    assert env["FAS_APP_NAME"] == fly["app"] and env["FAS_PROCESS_GROUP"] == "worker"
    assert "agentos_queue_depth" in env["FAS_PROMETHEUS_QUERY"]
    assert env["FAS_PROMETHEUS_METRIC_NAME"] in env["FAS_STARTED_MACHINE_COUNT"]
    assert 1 <= int(env["FAS_MIN_STARTED_MACHINE_COUNT"]) <= int(env["FAS_MAX_STARTED_MACHINE_COUNT"])
    assert not any(k in env for k in ("FAS_API_TOKEN", "FAS_PROMETHEUS_TOKEN")), "tokens are secrets"
