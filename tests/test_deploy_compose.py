"""The container image and the compose file, checked offline: the Dockerfile's promises (one
image, a base that can be swapped, a non-root user, tini, bubblewrap, a health check), and the
compose file parsed the way `podman-compose config` parses it (variables interpolated, required
secrets enforced) plus the structure a production-like host needs. `docker compose config`
runs too when a compose plugin is installed. Building the image is not a test (docs/deploy.md
records a real build and run)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {"api", "worker", "watchdog", "sandbox", "migrate"}


def _instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    found = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            found.append((word.upper(), rest.strip()))
    return found


def test_the_dockerfile_builds_one_image_for_every_command():
    steps = _instructions(ROOT / "Dockerfile")
    assert steps[0] == ("ARG", "BASE=python:3.11-slim-bookworm"), "the base can be substituted"
    stages = [args for word, args in steps if word == "FROM"]
    assert stages == ["${BASE} AS build", "${BASE} AS runtime"], "multi-stage, both on the same base"
    runtime = steps[[i for i, (w, a) in enumerate(steps) if w == "FROM"][1]:]
    installs = " ".join(a for w, a in runtime if w == "RUN")
    assert "bubblewrap" in installs and "tini" in installs
    assert ("ARG", "RUN_AS=agentos") in runtime and ("USER", "${RUN_AS}") in runtime, "non-root by default"
    assert "useradd --system --uid 10001" in installs
    assert ("ENTRYPOINT", '["tini", "--", "agentos-entrypoint"]') in runtime, "tini is PID 1"
    assert ("CMD", '["api"]') in runtime
    health = [a for w, a in runtime if w == "HEALTHCHECK"]
    assert len(health) == 1 and health[0].endswith('CMD ["agentos-healthcheck"]')
    assert ("STOPSIGNAL", "SIGTERM") in runtime
    env = " ".join(a for w, a in runtime if w == "ENV")
    assert "AGENTOS_ENV=production" in env and "AGENTOS_API__HOST=0.0.0.0" in env
    # Every package the image installs is copied in; tests and benches stay out (.dockerignore).
    copied = {a.split()[0] for w, a in steps if w == "COPY" and not a.startswith("--from")}
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()} - {"tests", "bench"}
    assert packages <= copied, packages - copied
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".agentos", "tests", "bench", ".env"} <= set(ignored)


def test_the_entrypoint_runs_agentos_and_keeps_only_the_sandbox_root():
    script = (ROOT / "infra/docker/entrypoint.sh").read_text()
    assert 'exec agentos "$@"' in script and '!= sandbox' in script and "--reuid=agentos" in script
    assert subprocess.run(["sh", "-n", str(ROOT / "infra/docker/entrypoint.sh")]).returncode == 0


def test_the_health_check_script_judges_each_command():
    script = (ROOT / "infra/docker/healthcheck.sh").read_text()
    assert (ROOT / "infra/docker/healthcheck.sh").stat().st_mode & 0o111, "executable"
    assert "/readyz" in script and "agentos worker --check" in script and "/health" in script
    done = subprocess.run(["sh", "-n", str(ROOT / "infra/docker/healthcheck.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def _secrets_env(tmp_path: Path) -> Path:
    """The example env file with every value filled in, as an operator would."""
    lines = []
    for line in (ROOT / ".env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            line = f"{name}={value or 'x' * 32}"
        lines.append(line)
    env_file = tmp_path / ".env"
    env_file.write_text("\n".join(lines) + "\n")
    return env_file


def _podman_compose(tmp_path: Path, env_file: Path | None) -> subprocess.CompletedProcess[str]:
    # --dry-run: `config` then needs no podman binary (CI has none), only the parser.
    argv = [sys.executable, "-m", "podman_compose", "--dry-run", "-f", str(ROOT / "docker-compose.yml")]
    if env_file is not None:
        argv += ["--env-file", str(env_file)]
    return subprocess.run([*argv, "config"], capture_output=True, text=True, cwd=tmp_path, timeout=60)


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The compose file as podman-compose resolves it (secrets from a filled-in .env)."""
    tmp_path = tmp_path_factory.mktemp("compose")
    done = _podman_compose(tmp_path, _secrets_env(tmp_path))
    assert done.returncode == 0, done.stderr
    return dict(yaml.safe_load(done.stdout))


def test_compose_refuses_to_start_without_the_secrets(tmp_path: Path):
    done = _podman_compose(tmp_path, None)
    assert done.returncode != 0
    assert "is missing a value: set it in .env" in done.stderr


@pytest.mark.skipif(subprocess.run(["docker", "compose", "version"], capture_output=True).returncode != 0
                    if shutil.which("docker") else True, reason="no docker compose plugin here")
def test_docker_compose_config_accepts_the_file(tmp_path: Path):
    env_file = _secrets_env(tmp_path)
    done = subprocess.run(["docker", "compose", "--env-file", str(env_file), "-f", str(ROOT / "docker-compose.yml"),
                           "config", "-q"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_compose_runs_every_process_from_the_one_image(compose: dict[str, Any]):
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "migrate", "api", "proxy", "worker", "watchdog", "sandbox"}
    agentos = {name: s for name, s in services.items() if s.get("image") == "agentos:latest"}
    assert {s["command"][0] for s in agentos.values()} == COMMANDS
    assert all(s["build"]["dockerfile"] == "Dockerfile" for s in agentos.values())
    assert services["postgres"]["image"].startswith("pgvector/pgvector:")
    assert services["api"]["deploy"]["replicas"] == 2
    assert services["worker"]["deploy"]["replicas"] >= 2


def test_compose_orders_start_up_and_restarts_what_dies(compose: dict[str, Any]):
    services = compose["services"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in ("api", "worker", "watchdog"):
        assert services[name]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert services[name]["depends_on"]["redis"] == {"condition": "service_healthy"}
    for name, service in services.items():
        if name != "migrate":
            assert service["restart"] == "unless-stopped", name
    for name in ("postgres", "redis", "api", "proxy", "worker", "sandbox"):
        assert services[name]["healthcheck"]["test"], name


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)s", value)
    assert match, value
    return float(match.group(1))


def test_compose_gives_workers_time_to_release_their_runs(compose: dict[str, Any]):
    worker = compose["services"]["worker"]
    grace = float(worker["environment"]["AGENTOS_WORKER__SHUTDOWN_GRACE_S"])
    assert _seconds(worker["stop_grace_period"]) >= grace + 5
    assert "workspaces:/var/lib/agentos/workspaces" in worker["volumes"], "every worker sees the same session files"
    assert "ports" not in worker


def test_compose_keeps_secrets_in_the_env_file_and_the_sandbox_apart(compose: dict[str, Any]):
    services = compose["services"]
    text = (ROOT / "docker-compose.yml").read_text()
    assert not re.search(r"(PASSWORD|SECRET|TOKEN|KEYS)\w*:\s*[\"']?[A-Za-z0-9]{8,}", text), "no secret in the file"
    for name in ("api", "worker", "watchdog", "migrate"):
        assert services[name]["env_file"] == [".env"], name
        assert services[name]["environment"]["AGENTOS_ENV"] == "production"
    sandbox = services["sandbox"]
    assert sandbox["user"] == "0" and sandbox["cap_add"] == ["SYS_ADMIN"]
    assert not sandbox.get("env_file") and not any("DATABASE" in k or "REDIS" in k for k in sandbox["environment"])
    assert [p for s in services.values() for p in s.get("ports", [])] == ["8000:8000"], "only the proxy is published"
