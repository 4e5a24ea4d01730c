#!/usr/bin/env bash
# Set up and start the broker on the embedded store (no Redis needed):
#   ./scripts/serve.sh [--host H] [--port P]
# Set-up (scripts/_setup.sh) installs into .venv only on the first run or after pyproject.toml changed.
# Settings come from BROKER_* variables (see README); BROKER_REDIS_URL switches to real Redis.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_setup.sh
exec .venv/bin/python -m app serve "$@"
