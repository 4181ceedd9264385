#!/usr/bin/env bash
# A longer fuzz run of the parsers that see attacker-controlled bytes (a few minutes; the suite runs the
# same properties with few examples). FUZZ_EXAMPLES sets the hypothesis examples per target (default
# 20000); FUZZ_SECONDS the atheris time per target (default 60), used only when atheris is installed
# (`.venv/bin/pip install atheris`: a coverage-guided fuzzer over the same targets, bench/fuzz_atheris.py).
set -euo pipefail
cd "$(dirname "$0")/.."
S3PROXY_FUZZ_EXAMPLES="${FUZZ_EXAMPLES:-20000}" .venv/bin/pytest -q -p no:cacheprovider \
  -o addopts="" --timeout=0 tests/test_fuzz.py "$@"
if .venv/bin/python -c 'import atheris' 2>/dev/null; then
  for target in hosts auth presigned chunked config; do
    echo "atheris: $target (${FUZZ_SECONDS:-60} s)"
    .venv/bin/python bench/fuzz_atheris.py "$target" -max_total_time="${FUZZ_SECONDS:-60}" -print_final_stats=1
  done
else
  echo "atheris is not installed: skipped the coverage-guided run (.venv/bin/pip install atheris to add it)"
fi
