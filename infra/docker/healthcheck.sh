#!/bin/sh
# The image's HEALTHCHECK: judge the process by the command the container runs (PID 1 is
# `tini -- agentos <command>`), so one image serves every role. Exit 0 healthy, 1 not.
set -eu
command=$(tr '\0' '\n' < /proc/1/cmdline | sed -n '4p')
http_ok() {
    # No curl in the image: Python's urllib, with a short timeout.
    python3 -c 'import sys, urllib.request
try:
    sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=4).status == 200 else 1)
except Exception as exc:
    print(exc); sys.exit(1)' "$1"
}
case "$command" in
    api) http_ok "http://127.0.0.1:${AGENTOS_API__PORT:-8000}/readyz" ;;
    worker) exec agentos worker --check ;;
    sandbox) http_ok "http://127.0.0.1:${AGENTOS_SANDBOX__PORT:-8300}/health" ;;
    *) exit 0 ;;  # watchdog, migrate: a process that runs is all there is to check
esac
