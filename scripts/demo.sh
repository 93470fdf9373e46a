#!/usr/bin/env bash
# The demo: set-up, then run examples/tour.ipynb through the sandboxed kernel on the
# embedded default profile and print what was allowed and what was refused.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
exec python examples/run_tour.py --kernel sandbox-default "$@"
