"""The benchmark report's statistics (benchmarks/stats.py): intervals, verdicts, repetitions.

Pure functions, no kernels: known distributions drawn with fixed seeds, hand-checked
order statistics, straddling cases, and the H100 run's CNN training step.
"""

import math
import random
import statistics
import sys

import pytest
from testenv import REPO

sys.path.insert(0, str(REPO))  # `benchmarks` lives at the repository root
from benchmarks import stats  # noqa: E402

# The H100 run of 2026-11-23 (benchmarks/results/h100-2026-11-23): the CNN training step,
# steps/s per timed block, 5 repetitions x 7 blocks, plain ipykernel and the `gpu` kernel.
H100_TRAIN_PLAIN = [[665.376, 649.348, 672.209, 811.431, 751.279, 677.622, 735.717],
                    [874.008, 601.892, 878.702, 813.099, 647.434, 586.427, 623.913],
                    [894.457, 635.661, 699.008, 742.489, 720.65, 766.39, 723.667],
                    [600.969, 741.48, 528.774, 810.316, 521.086, 810.234, 743.295],
                    [411.084, 719.838, 832.904, 715.578, 569.372, 448.12, 702.19]]
H100_TRAIN_FULL = [[603.526, 661.87, 765.199, 654.472, 513.744, 623.908, 551.058],
                   [309.269, 584.177, 827.729, 757.763, 665.165, 781.696, 747.438],
                   [641.431, 760.554, 790.813, 721.701, 800.683, 725.018, 518.902],
                   [701.645, 600.965, 691.9, 689.326, 638.113, 465.994, 638.111],
                   [608.258, 673.861, 599.669, 503.46, 471.96, 622.147, 696.341]]


@pytest.mark.parametrize("n, k, coverage", [
    (5, 1, 1 - 2 / 32),           # [min, max] is all five values can give: 93.75%
    (6, 1, 1 - 2 / 64),           # the smallest n with a 95% interval
    (10, 2, 1 - 2 * 11 / 1024),   # x(2)..x(9): 97.9%; x(3)..x(8) would be 89.1%
    (20, 6, 1 - 2 * sum(math.comb(20, i) for i in range(6)) / 2 ** 20),  # x(6)..x(15): 95.9%
])
def test_median_ci_picks_the_right_order_statistics(n, k, coverage):
    xs = list(range(100, 100 + n))
    random.Random(n).shuffle(xs)
    ci = stats.median_ci(xs)
    assert ci["k"] == k
    assert ci["lo"] == 100 + k - 1 and ci["hi"] == 100 + n - k
    assert ci["confidence"] == pytest.approx(coverage)
    assert ci["confidence"] >= 0.95 or n <= 5


def test_median_ci_small_and_empty():
    assert stats.median_ci([]) is None
    one = stats.median_ci([3.0])
    assert one["lo"] == one["hi"] == 3.0 and one["confidence"] == 0.0
    three = stats.median_ci([3.0, 1.0, 2.0])
    assert (three["lo"], three["hi"]) == (1.0, 3.0) and three["confidence"] == pytest.approx(0.75)


@pytest.mark.parametrize("draw, truth", [
    (lambda r: r.gauss(1.0, 0.05), 1.0),
    (lambda r: r.lognormvariate(0.0, 0.5), 1.0),  # skewed
    (lambda r: r.expovariate(1.0), math.log(2)),  # heavily skewed
    (lambda r: 1.0 + 0.01 * math.tan(math.pi * (r.random() - 0.5)), 1.0),  # Cauchy: no mean, no variance
])
@pytest.mark.parametrize("n", [6, 12, 20])
def test_median_ci_covers_the_true_median_at_its_stated_rate(draw, truth, n):
    """Distribution-free: the stated coverage holds for skewed and heavy-tailed data alike."""
    rng = random.Random(1234 + n)
    trials, hits, stated = 2000, 0, None
    for _ in range(trials):
        ci = stats.median_ci([draw(rng) for _ in range(n)])
        stated = ci["confidence"]
        hits += ci["lo"] <= truth <= ci["hi"]
    # 2000 trials: the binomial standard error is under 0.005; allow 3 of them
    assert hits / trials >= stated - 0.015, (hits / trials, stated)
    assert stated >= 0.95


def test_verdicts_pass_miss_and_straddle():
    rng = random.Random(7)
    clear_pass = [rng.gauss(1.000, 0.002) for _ in range(20)]
    clear_miss = [rng.gauss(1.050, 0.002) for _ in range(20)]
    straddle = [rng.gauss(1.010, 0.010) for _ in range(20)]
    assert stats.verdict(clear_pass, 1.01)["status"] == "PASS"
    assert stats.verdict(clear_miss, 1.01)["status"] == "MISS"
    v = stats.verdict(straddle, 1.01)
    assert v["status"] == "UNRESOLVED" and v["ci"][0] <= 1.01 < v["ci"][1]
    assert "straddles" in v["why"]
    # a median near the target needs many repetitions; a farther one fewer
    near = stats.verdict([1.012 + d for d in (-0.01, -0.005, 0, 0.005, 0.01, 0.002, -0.002, 0.008)], 1.01)
    far = stats.verdict([1.02 + d for d in (-0.03, -0.015, 0, 0.015, 0.03, 0.006, -0.006, 0.024)], 1.01)
    assert near["status"] == far["status"] == "UNRESOLVED"
    assert near["reps_needed"] > far["reps_needed"] >= stats.MIN_REPS_95


def test_verdict_on_the_limit_and_without_data():
    assert stats.verdict([1.0, 1.01, 1.0, 1.01, 1.0, 1.01], 1.01)["status"] == "PASS"  # "<= target" holds at it
    assert stats.verdict([], 1.01) == {"status": "MISS", "why": "no paired samples"}
    on = stats.verdict([0.9, 1.01, 1.1, 1.0, 1.02, 1.01, 0.95], 1.01)
    assert on["status"] == "UNRESOLVED" and on["reps_needed"] is None  # the median sits on the target


def test_too_few_repetitions_decide_nothing():
    """Three repetitions (--quick) give a 75% interval: no verdict, however tight."""
    v = stats.verdict([1.20, 1.21, 1.22], 1.01)
    assert v["status"] == "UNRESOLVED" and "75%" in v["why"]
    assert stats.verdict([1.20, 1.21, 1.22, 1.23, 1.24], 1.01)["status"] == "MISS"  # 93.8%, stated


@pytest.mark.parametrize("true_median, sigma", [(1.005, 0.02), (1.03, 0.05), (0.99, 0.01)])
def test_reps_needed_resolves_at_about_the_planned_rate(true_median, sigma):
    """Plan from a pilot of 10, then run that many repetitions many times: about 80% resolve."""
    rng = random.Random(99)
    # a pilot of 10 with exactly the true spread: the normal deciles' midpoints
    pilot = [true_median + sigma * statistics.NormalDist().inv_cdf((i + 0.5) / 10) for i in range(10)]
    n = stats.reps_needed(pilot, 1.01)
    assert n is not None and n >= stats.MIN_REPS_95
    expected = ((1.96 + 0.8416) * 1.2533 * sigma / abs(true_median - 1.01)) ** 2
    assert 0.6 * expected <= n <= 1.6 * expected + stats.MIN_REPS_95
    trials = 300
    resolved = sum(stats.verdict([rng.gauss(true_median, sigma) for _ in range(n)], 1.01)["status"] != "UNRESOLVED"
                   for _ in range(trials))
    assert 0.6 <= resolved / trials <= 0.97, (n, resolved / trials)


def test_robust_sigma_ignores_one_outlier():
    xs = [1.0, 1.01, 0.99, 1.02, 0.98, 1.0, 5.0]
    assert stats.robust_sigma(xs) < 0.05 < statistics.stdev(xs)


def _results(plain_blocks, full_blocks, target=1.0, better="higher"):
    n = len(plain_blocks)
    return {
        "config": {"reps": n, "syscalls": {"n_ops": 1000, "blocks": 2}},
        "variants": [{"id": "plain"}, {"id": "floor"}, {"id": "full"}],
        "workloads": [{"id": "train_step", "label": "train", "unit": "steps/s", "better": better,
                       "target": {"kind": "relative", "limit_pct": target}},
                      {"id": "startup", "label": "start", "unit": "ms", "better": "lower",
                       "target": {"kind": "absolute", "limit": 100.0}}],
        "samples": {"plain": {"train_step": [max(b) for b in plain_blocks], "startup": [200.0 + i for i in range(n)]},
                    "floor": {"train_step": [None] * n, "startup": [None] * n},
                    "full": {"train_step": [max(b) for b in full_blocks], "startup": [260.0 + i for i in range(n)]}},
        "inner_samples": {"plain": {"train_step": plain_blocks}, "floor": {}, "full": {"train_step": full_blocks}},
    }


def test_h100_cnn_training_step_is_unresolved_not_miss():
    """The report printed MISS (+11.7%) from the best block of each repetition; the median
    block of the same sessions straddles the 1% target, and the verdict says how many
    repetitions would settle it."""
    results = _results(H100_TRAIN_PLAIN, H100_TRAIN_FULL)
    summary = stats.summarise(results)
    verdicts = {v["workload"]: v for v in stats.check_targets(results, summary, "full")}
    v = verdicts["train_step"]
    assert v["status"] == "UNRESOLVED", v
    assert v["ci"][0] < 1.0 < v["ci"][1]
    assert v["confidence"] == pytest.approx(0.9375) and v["n"] == 5
    assert stats.MIN_REPS_95 <= v["reps_needed"] < stats.MAX_REPS_SHOWN
    # what the old figure (best block) said, for the record: every paired ratio above +6%
    best = [p / f for p, f in zip(results["samples"]["plain"]["train_step"], results["samples"]["full"]["train_step"])]
    assert min(best) > 1.06
    # the absolute target: start-up is +60 ms in every pair: PASS at 93.8%
    assert verdicts["startup"]["status"] == "PASS" and verdicts["startup"]["measured"] == pytest.approx(60.0)
    # a variant that did not run a workload has no figure, and no ratio
    assert summary["train_step"]["floor"] == {"n": 0}


def test_session_figures_median_and_syscall_parts():
    w = {"id": "syscalls", "better": "lower"}
    results = {"config": {"syscalls": {"n_ops": 1000, "blocks": 2}}, "variants": [{"id": "plain"}],
               "samples": {"plain": {"syscalls": [9.9]}},
               "inner_samples": {"plain": {"syscall_read": [[3.0, 5.0, 4.0]], "syscall_stat": [[1.0, 1.0, 2.0]],
                                           "syscall_getpid": [[0.1, 0.3, 0.2]]}}}
    # (4 + 1 + 0.2) us/op x 1000 ops each = 5.2 ms
    assert stats.session_figures(results, "plain", w) == [pytest.approx(5.2e-3)]
    w2 = {"id": "rtt", "better": "lower"}
    results["samples"]["plain"]["rtt"] = [1.0]
    results["inner_samples"]["plain"]["rtt"] = [[5.0, 1.0, 2.0, 1.5, 1.2]]
    assert stats.session_figures(results, "plain", w2) == [1.5]
    w3 = {"id": "startup", "better": "lower"}
    results["samples"]["plain"]["startup"] = [180.0]
    assert stats.figure_rule(results, w3) == "value" and stats.session_figures(results, "plain", w3) == [180.0]


def test_pool_ttfr_render_and_pss():
    """benchmarks/pool_ttfr.py: its report from a results dict, and the PSS of a process tree."""
    import os

    from benchmarks import pool_ttfr

    assert pool_ttfr.pss_kib(os.getpid()) > 0
    vals = [1.0, 1.2, 0.9, 1.1, 1.0, 0.95, 1.05, 1.0]
    pooled = [0.05] * 8
    ratios = [p / v for p, v in zip(pooled, vals)]
    r = {"profile": "default", "reps": 8, "command": "python -m benchmarks pool-ttfr",
         "ttfr": {"plain": {**stats.describe(vals), "ci": stats.median_ci(vals)},
                  "sandbox pooled": {**stats.describe(pooled), "ci": stats.median_ci(pooled)}},
         "ratio_pooled_over_plain": {**stats.describe(ratios), "ci": stats.median_ci(ratios), "verdict": "PASS"},
         "pooled_misses": 0, "pss_kib": {"sandbox pooled (idle, whole tree)": 40960}}
    text = pool_ttfr.render(r)
    assert "| plain | 1000 |" in text and "| sandbox pooled | 50 |" in text and "**PASS**" in text
    assert "40.0 MiB" in text
