#!/bin/sh
# `agentos <command>` as the unprivileged user `agentos`. The image runs as that user already;
# an image built with RUN_AS=root (Fly.io, where a process group cannot choose its user) starts
# here as root, and everything but the sandbox service drops to `agentos` before it starts. The
# sandbox service stays root: it drops each execution to uid 65534 inside bubblewrap itself.
set -eu
if [ "$(id -u)" = 0 ] && [ "${1:-}" != sandbox ]; then
    exec setpriv --reuid=agentos --regid=agentos --init-groups --inh-caps=-all agentos "$@"
fi
exec agentos "$@"
