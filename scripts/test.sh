#!/usr/bin/env bash
# Install everything and run the whole suite: lint, format, types, layers, tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev
export PATH="$PWD/.venv/bin:$PATH"

echo "== ruff" && ruff check src tests bench hatch_build.py
echo "== ruff format" && ruff format --check src tests bench hatch_build.py
echo "== mypy" && mypy
echo "== import-linter" && lint-imports
echo "== pytest"
pytest -n 2 -p no:cacheprovider -m "not soak" "$@"
