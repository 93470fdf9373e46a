#!/usr/bin/env bash
# The whole test suite, after set-up. Run as root to cover both root and an ordinary
# user (the tests create one with useradd); GPU tests skip where there is no CUDA.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
ruff check .  # lint first ([tool.ruff] in pyproject.toml): a finding fails the run in a second
exec python -m pytest -q --durations=30 "$@"  # (the 30 slowest tests in the output)
