# Shared by serve.sh and test.sh: a project virtualenv with pinned dependencies.
# Usage: source scripts/_setup.sh [extra]   (extra = "test" installs the test dependencies too)
#
# The broker depends on the distributions under packages/ (token-broker-jose, -client, -resource,
# same version): they are installed (editable) in the same pip command as the project, so pip never
# looks for them on a package index.
#
# pip runs only when it has something to do: .venv is missing or its Python cannot run, or
# pyproject.toml, a packages/*/pyproject.toml, the extra or the venv's Python version changed since
# the last install that finished. .venv/.token-broker-installed holds one sha256 (those pyproject
# files + extra + Python version) per extra installed; it is removed before pip starts and written only after pip succeeds, so an
# interrupted or failed install is retried on the next start. Anything slow says so first (stderr).
# TOKEN_BROKER_INSTALL_CMD replaces the install command (the test suite uses it so that checking
# these decisions installs nothing); it is run with the pip spec ("." or ".[test]") as its argument.
set -euo pipefail
_tb_extra=${1:-}
_tb_spec="."
[ "$_tb_extra" = "test" ] && _tb_spec=".[test]"
_tb_stamp=.venv/.token-broker-installed

# "<token without extra> <token with test>" for the current pyproject files and the venv's Python;
# empty when .venv/bin/python does not run.
_tb_tokens() {
  [ -x .venv/bin/python ] || return 0
  .venv/bin/python - 2>/dev/null <<'EOF' || true
import glob, hashlib, sys
files = ["pyproject.toml", *sorted(glob.glob("packages/*/pyproject.toml"))]
data = b"\0".join(name.encode() + b"\0" + open(name, "rb").read() for name in files)
print(*(hashlib.sha256(b"\0".join((data, extra, sys.version.encode()))).hexdigest() for extra in (b"", b"test")))
EOF
}

_tb_tokens_now=$(_tb_tokens)
_tb_told=""
if [ -z "$_tb_tokens_now" ]; then
  _tb_py=${PYTHON:-python3}
  if ! "$_tb_py" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "Python 3.11 or newer is required (found: $("$_tb_py" --version 2>&1))" >&2
    exit 1
  fi
  if [ -e .venv ]; then
    echo "setting up .venv again (.venv/bin/python does not run; about a minute)..." >&2
  else
    echo "setting up .venv (first run, about a minute)..." >&2
  fi
  "$_tb_py" -m venv --clear .venv
  _tb_tokens_now=$(_tb_tokens)
  if [ -z "$_tb_tokens_now" ]; then
    echo "cannot run .venv/bin/python right after creating it with $_tb_py" >&2
    exit 1
  fi
  _tb_told=yes
fi
read -r _tb_token_base _tb_token_test <<<"$_tb_tokens_now"
_tb_want=$_tb_token_base
[ "$_tb_extra" = "test" ] && _tb_want=$_tb_token_test

if ! grep -qxF "$_tb_want" "$_tb_stamp" 2>/dev/null; then
  # The records still true for today's pyproject.toml (the other extra's) are kept.
  _tb_keep=$(grep -xF -e "$_tb_token_base" -e "$_tb_token_test" "$_tb_stamp" 2>/dev/null || true)
  if [ -n "$_tb_told" ]; then
    :
  elif [ -n "$_tb_keep" ]; then
    echo "installing the ${_tb_extra:-project} dependencies into .venv..." >&2
  elif [ -e "$_tb_stamp" ]; then
    echo "pyproject.toml (or the Python of .venv) changed: updating .venv..." >&2
  else
    echo "no finished install recorded in .venv: installing (about a minute)..." >&2
  fi
  rm -f "$_tb_stamp"
  if [ -n "${TOKEN_BROKER_INSTALL_CMD:-}" ]; then
    $TOKEN_BROKER_INSTALL_CMD "$_tb_spec"
  else
    .venv/bin/python -m pip install -q --disable-pip-version-check \
      -e packages/jose -e packages/client -e packages/resource -e "$_tb_spec"
  fi
  _tb_done="$_tb_keep"$'\n'"$_tb_want"
  # The test extra installs everything the plain install does.
  if [ "$_tb_extra" = "test" ]; then _tb_done+=$'\n'"$_tb_token_base"; fi
  printf '%s\n' "$_tb_done" | grep -v '^$' | sort -u >"$_tb_stamp.new"
  mv "$_tb_stamp.new" "$_tb_stamp"
fi
