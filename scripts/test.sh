#!/usr/bin/env bash
# Set up, then run everything CI runs: ruff, mypy --strict on s3proxy/, and the whole pytest suite
# (unit tests and end-to-end tests that start SeaweedFS, a DNS server and the real proxy on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check s3proxy addons tests bench
.venv/bin/mypy
set +e
.venv/bin/pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
