# syntax=docker/dockerfile:1
# One image for every AgentOS process, chosen by the command:
#   docker run IMAGE api | worker | watchdog | sandbox | migrate   (default: api)
# tini is PID 1 (it reaps zombies and forwards SIGTERM to `agentos` alone, which then drains:
# docs/operations.md, Stopping gracefully). The processes run as the unprivileged user `agentos`,
# except the sandbox service, which must be started as root (`--user 0`, or an image built with
# RUN_AS=root, whose entrypoint drops every other command to `agentos`): it drops each execution
# to an unprivileged uid inside bubblewrap (docs/sandbox.md).
#
# BASE may be any Debian bookworm image with Python 3.11 (python3, python3-venv), e.g. one made
# with debootstrap when Docker Hub cannot be reached (docs/deploy.md, Building the image offline).
ARG BASE=python:3.11-slim-bookworm

FROM ${BASE} AS build
# A CA bundle for pip behind a TLS-intercepting proxy: pass --build-arg PIP_CERT=<path> and mount
# the file at that path (podman build -v ...). Unset: pip's own bundle.
ARG PIP_CERT
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY agentos ./agentos
COPY api ./api
COPY core ./core
COPY memory ./memory
COPY orchestrator ./orchestrator
COPY runtime ./runtime
COPY skills ./skills
RUN python3 -m venv /opt/agentos \
 && /opt/agentos/bin/pip install /src \
 && /opt/agentos/bin/agentos --version

FROM ${BASE} AS runtime
ARG DEBIAN_FRONTEND=noninteractive
# The user the container starts as: `agentos`, or `root` where the platform cannot pick a user per
# process (Fly.io); infra/docker/entrypoint.sh then drops everything but the sandbox to `agentos`.
ARG RUN_AS=agentos
# bubblewrap: the sandbox backend; tini: PID 1. Nothing else: no compiler, no curl.
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap tini ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 agentos \
 && useradd --system --uid 10001 --gid agentos --no-create-home --shell /usr/sbin/nologin agentos \
 && mkdir -p /var/lib/agentos/workspaces \
 && chown -R agentos:agentos /var/lib/agentos
COPY --from=build /opt/agentos /opt/agentos
COPY infra/docker/healthcheck.sh /usr/local/bin/agentos-healthcheck
COPY infra/docker/entrypoint.sh /usr/local/bin/agentos-entrypoint
ENV PATH=/opt/agentos/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    AGENTOS_ENV=production \
    AGENTOS_API__HOST=0.0.0.0 \
    AGENTOS_API__PORT=8000 \
    AGENTOS_SANDBOX__HOST=0.0.0.0 \
    AGENTOS_SANDBOX__PORT=8300 \
    AGENTOS_WORKER__WORKSPACE_ROOT=/var/lib/agentos/workspaces \
    AGENTOS_WORKER__HEALTH_FILE=/tmp/agentos-worker-health.json
WORKDIR /var/lib/agentos
USER ${RUN_AS}
EXPOSE 8000 8300
STOPSIGNAL SIGTERM
# What healthy means depends on the command: /readyz for the API, `agentos worker --check` for a
# worker, /health for the sandbox; the watchdog and migrate have no endpoint (see the script).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 CMD ["agentos-healthcheck"]
ENTRYPOINT ["tini", "--", "agentos-entrypoint"]
CMD ["api"]
