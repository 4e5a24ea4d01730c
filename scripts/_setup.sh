# Shared by serve.sh and test.sh: a project virtualenv with pinned dependencies.
# Usage: source scripts/_setup.sh [extra]   (extra = "test" installs the test dependencies too)
set -euo pipefail
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
  echo "Python 3.11 or newer is required (found: $("$PY" --version 2>&1))" >&2
  exit 1
fi
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
spec="."
[ "${1:-}" = "test" ] && spec=".[test]"
.venv/bin/python -m pip install -q --disable-pip-version-check -e "$spec"
