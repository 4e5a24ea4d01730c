#!/usr/bin/env bash
# Set up and run the whole test suite, including the tests against a real redis-server, live
# broker processes, HAProxy in front of replicas, a seconds-long benchmark smoke (wrk) and the
# third-party clients of tests/interop (Node.js's openid-client and jose, installed with npm):
#   ./scripts/test.sh [pytest args]
# Missing redis-server/haproxy/wrk/node/npm are installed with apt-get when running as root.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
# command -> Debian package
for pair in redis-server:redis-server haproxy:haproxy wrk:wrk node:nodejs npm:npm; do
  command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing[*]} (apt-get)..." >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "not installed: ${missing[*]}; the tests that need them are skipped (CI=true makes that a failure)." >&2
    echo "install them with: apt-get install ${missing[*]}" >&2
  fi
fi
source scripts/_setup.sh test
echo "ruff check (lint: imports, unused names, obvious bugs)..." >&2
.venv/bin/ruff check app tests scripts
exec .venv/bin/python -m pytest "$@"
