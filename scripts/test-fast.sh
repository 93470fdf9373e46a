#!/usr/bin/env bash
# The fast tier: every test that starts no kernel (`-m "not kernel"`), on all CPUs (pytest-xdist),
# with a tenth of the profile fuzz's 10,000 documents. About a minute on 2 idle cores; for a quick
# check while editing. Needs the set-up done once (./scripts/setup.sh or ./scripts/test.sh); the
# full suite (./scripts/test.sh, what CI runs) runs every test and the whole fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export SANDBOX_KERNEL_FUZZ_SCALE="${SANDBOX_KERNEL_FUZZ_SCALE:-0.1}"
exec python -m pytest -q -m "not kernel" -n "${SANDBOX_KERNEL_TEST_WORKERS:-auto}" --durations=10 "$@"
