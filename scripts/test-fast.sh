#!/usr/bin/env bash
# The fast tier: every test that starts no kernel (`-m "not kernel"`), on all CPUs (pytest-xdist),
# with a tenth of the profile fuzz's 10,000 documents; those of them marked `serial` (host-wide
# state: cgroup sweeps, the engines) then run one at a time. About a minute on 2 idle cores; for a
# quick check while editing. Needs the set-up done once (./scripts/setup.sh or ./scripts/test.sh);
# the full suite (./scripts/test.sh, what CI runs) runs every test and the whole fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
export SANDBOX_KERNEL_FUZZ_SCALE="${SANDBOX_KERNEL_FUZZ_SCALE:-0.1}"
rc=0
python -m pytest -q -m "not kernel and not serial" -n "${SANDBOX_KERNEL_TEST_WORKERS:-auto}" --durations=10 "$@" || rc=$?
python -m pytest -q -m "serial and not kernel" --durations=5 "$@" || { r=$?; [ "$r" -eq 5 ] || rc=$r; }
[ "$rc" -eq 5 ] && rc=0
exit "$rc"
