#!/usr/bin/env bash
# Set up, then run everything CI runs: ruff, mypy --strict on s3proxy/, and the whole pytest suite
# (unit tests and end-to-end tests that start SeaweedFS, a DNS server and the real proxy on loopback).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# System tools some end-to-end tests use (transparent mode: iptables; presigned URLs: curl). Best effort:
# the tests that need a missing tool skip with the reason.
missing=""
for tool in iptables curl; do command -v "$tool" >/dev/null 2>&1 || missing="$missing $tool"; done
if [ -n "$missing" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "test: installing$missing" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/dev/null 2>&1 \
    || echo "test: could not install$missing; the tests that need them will skip" >&2
fi
.venv/bin/ruff check s3proxy addons tests bench
.venv/bin/mypy
set +e
.venv/bin/pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
