"""`python -m benchmarks layer-costs` runs its probes through the real launcher, one layer at a time.

Its probe used to sit beside the working directory, where Landlock no longer grants reads (issue
15), and every launcher run exited 2: this runs the whole harness at a hundredth of its sizes.
The figures themselves are the benchmark's business, not this test's."""

import pytest

from benchmarks import layer_costs


@pytest.mark.kernel
def test_every_configuration_measures_every_operation():
    res = layer_costs.measure(rounds=1, scale=0.01)
    configs = [k for k in res if not k.startswith(("filter:", "_"))]
    assert len(configs) == 6 and "full profile (free)" in configs, configs
    ops = set(res[configs[0]])
    assert len(ops) == 5, ops
    for c in configs:
        assert set(res[c]) == ops and all(v > 0 for v in res[c].values()), (c, res[c])
    filters = [k for k in res if k.startswith("filter:")]
    assert len(filters) == len(layer_costs.FILTER_MODES)
    for f in filters:
        assert set(res[f]) == {"getpid", "sendto+recvfrom (UNIX datagram)"} and all(v > 0 for v in res[f].values())
    text = layer_costs.markdown(res, 1)
    assert all(f"| {op} | " in text for op in ops), text
