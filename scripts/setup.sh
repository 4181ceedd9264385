#!/usr/bin/env bash
# Set up s3proxy on a fresh machine: find Python >= 3.12, make .venv, install the
# project with its test tools. Idempotent; quiet when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

find_python() {
  local c
  for c in "${S3PROXY_PYTHON:-}" python3.13 python3.12 python3; do
    [ -n "$c" ] || continue
    if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      command -v "$c"; return 0
    fi
  done
  # pyenv installs interpreters it does not put on PATH unless selected.
  local root="${PYENV_ROOT:-$HOME/.pyenv}"
  command -v pyenv >/dev/null 2>&1 && root="$(pyenv root)"
  for c in $(ls -d "$root"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -V -r); do
    if "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
      echo "$c"; return 0
    fi
  done
  return 1
}

if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
  py="$(find_python)" || { echo "s3proxy needs Python >= 3.12 (mitmproxy 12); none found. Install one (e.g. pyenv install 3.12) or set S3PROXY_PYTHON." >&2; exit 1; }
  echo "setup: creating .venv with $py" >&2
  rm -rf .venv
  "$py" -m venv .venv
fi

stamp=.venv/.s3proxy-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ requirements.lock -nt "$stamp" ]; then
  echo "setup: installing packages (pinned with hashes in requirements.lock)" >&2
  .venv/bin/python -m pip install -q --disable-pip-version-check --require-hashes -r requirements.lock
  .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
  touch "$stamp"
fi
