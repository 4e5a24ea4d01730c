#!/usr/bin/env bash
# Set up and run the whole test suite, including the tests against a real redis-server
# (installed here when missing and we are root) and live broker processes:
#   ./scripts/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v redis-server >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing redis-server (apt-get)..." >&2
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
  else
    echo "redis-server is not installed: the real-Redis tests will be skipped (install it: apt-get install redis-server)" >&2
  fi
fi
source scripts/_setup.sh test
exec .venv/bin/python -m pytest "$@"
