"""`python -m benchmarks.landlock_open_cost`: fresh processes with and without a Landlock domain
time the raw open loop; the report pairs them. One tiny run (its numbers mean nothing) and the
refusals of bad arguments."""

import platform
import sys

import pytest
from testenv import REPO

sys.path.insert(0, str(REPO))  # `benchmarks` lives at the repository root
from benchmarks import landlock_open_cost as loc  # noqa: E402


def test_bad_arguments_are_refused_clearly(capsys):
    if platform.machine() != "x86_64":
        pytest.skip("x86_64 only")
    assert loc.main(["--rights", "execute"]) == 2
    assert "--rights 'execute'" in capsys.readouterr().err
    assert loc.main(["--reps", "0"]) == 2
    assert "--reps" in capsys.readouterr().err


def test_a_tiny_run_pairs_each_domain_with_no_domain():
    if platform.machine() != "x86_64":
        pytest.skip("x86_64 only")
    from sandbox_kernel.layers.landlock import abi_version

    if abi_version() < 1:
        pytest.skip("no Landlock here")
    kinds = [0x1, 0x2] + (["net+scoped"] if abi_version() >= 6 else [])
    out = loc.measure(kinds, reps=2)
    assert set(out) == {0, *kinds} and all(len(v) == 2 and all(x > 0 for x in v) for v in out.values())
    md = loc.report(out)
    assert "| no domain |" in md and "| 0x1 |" in md and "| 0x2 |" in md
    assert abi_version() < 6 or "| net+scoped |" in md
