#!/usr/bin/env bash
# The whole test suite, after set-up. Run as root to cover both root and an ordinary
# user (the tests create one with useradd); GPU tests skip where there is no CUDA.
# Two tiers, both always run, and the run fails if either fails:
#   1. every test not marked `serial`, on SANDBOX_KERNEL_TEST_WORKERS pytest-xdist workers (default 3:
#      most tests wait on kernel start-up and I/O, so 2 cores keep 3 workers busy), a whole test file
#      per worker (--dist loadfile: a module's shared kernels are started once), the heaviest files
#      first (tests/conftest.py orders them; --no-loadscope-reorder keeps xdist from re-sorting them
#      by their number of tests, which left the soak to start last);
#   2. the tests marked `serial` (they observe or change host-wide state: engines, cgroup sweeps,
#      per-uid counts, the benchmark runs), one at a time, after the first.
# Measured on 2 idle cores (README): parallel tier about 10.5 min, serial tier about 4 min.
# Arguments go to both pytest runs (`./scripts/test.sh tests/layers/test_cgroup.py`); a tier that
# selects no test is not a failure.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
ruff check .  # lint first ([tool.ruff] in pyproject.toml): a finding fails the run in a second
workers="${SANDBOX_KERNEL_TEST_WORKERS:-3}"
tier() {  # tier NAME PYTEST-ARGS...: pytest's exit status, 5 (no test selected) as 0
    local name="$1" start=$SECONDS rc=0
    shift
    python -m pytest -q "$@" || rc=$?
    echo "test.sh: $name tier: exit $rc after $((SECONDS - start)) s"
    [ "$rc" -eq 5 ] && rc=0
    return "$rc"
}
rc=0
tier parallel -n "$workers" --dist loadfile --no-loadscope-reorder -m "not serial" --durations=30 "$@" || rc=$?
tier serial -m serial --durations=15 "$@" || rc=$?
exit "$rc"
