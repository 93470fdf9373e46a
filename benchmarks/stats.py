"""Figures, paired ratios, confidence intervals and target verdicts, from results.json.

Conventions (stated in the report):

- **A session's figure.** Workloads timed in blocks (compute, system calls, DataLoader
  epochs, the empty cells) are summarised per session by the **median block**: it
  ignores a stall that hits fewer than half the blocks (another process, a page-cache
  miss), yet it moves with a cost that slows most blocks, and it is not an extreme
  value. (Until 2026-11-23 the figure was the best block; on the H100 host the blocks
  of one CNN kernel varied by ±20% with nothing else running, and the best of 7 such
  blocks is a noisy order statistic that hides intermittent costs, such as throttling.)
  The syscall-heavy cell's figure is the sum of its three parts' median blocks.
  Start-up, ``import torch`` and memory have one value per session.
- **ratio = variant cost / plain cost**, where the cost is the time or the memory, or
  1/throughput for throughput figures: **> 1 means slower (or more memory)**;
  overhead % = (ratio − 1) × 100. Absolute targets (start-up, empty-cell round trip)
  use the difference variant − plain, in the figure's unit.
- **Paired per repetition**: a ratio (or difference) compares a variant's session
  with the plain kernel's session of the same repetition (they ran within minutes of
  each other, in an order rotated from one repetition to the next); the figure
  reported is the **median of the paired ratios**.
- **Confidence interval of that median**: the distribution-free interval of order
  statistics (the sign-test interval: Conover, *Practical Nonparametric Statistics*,
  §3.2; Hahn & Meeker, *Statistical Intervals*): with n paired values sorted,
  [x(k), x(n+1−k)] covers the true median with probability 1 − 2·P(Binomial(n, ½) < k)
  for *any* continuous distribution of independent repetitions. It is preferred to a
  bootstrap of the median here because it is exact rather than asymptotic at the
  small n a benchmark affords (a percentile bootstrap of a median takes its bounds
  from the same order statistics but claims a confidence they do not have: n = 5
  allows at most 93.8%), and because it has no random seed (regenerating a report
  gives the same verdicts). The largest k whose coverage is at least 95% is used; where
  even [min, max] falls short (n ≤ 5), [min, max] is used and its coverage stated.
- **Verdicts**: PASS when the whole interval meets the target, MISS when the whole
  interval misses it, UNRESOLVED when it straddles the target (or the interval's
  coverage is under 90%: n ≤ 4). An UNRESOLVED verdict carries the repetitions that
  would resolve it with 80% probability if the true median were where this run's is,
  from the observed spread: n ≈ ((z₀.₉₇₅ + z₀.₈) · 1.2533 · σ / |median − target|)²,
  σ estimated robustly (1.4826 × MAD of the paired values), 1.2533 σ/√n being the
  standard error of a median; at least 6, the smallest n with a 95% distribution-free
  interval.
"""

from __future__ import annotations

import math
import statistics

BASELINE = "plain"
CONFIDENCE = 0.95
MIN_VERDICT_CONFIDENCE = 0.90  # below this (n <= 4) an interval decides nothing
MEDIAN_SE_FACTOR = math.sqrt(math.pi / 2)  # SE(median) = 1.2533 sigma / sqrt(n) (normal theory)
POWER = 0.80  # the chance of resolving that reps_needed plans for
MIN_REPS_95 = 6  # the smallest n whose [min, max] covers the median with >= 95%
MAX_REPS_SHOWN = 10_000


def percentile(xs: list[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return math.nan
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def describe(xs: list[float]) -> dict:
    xs = [x for x in xs if x is not None]
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "median": statistics.median(xs), "p25": percentile(xs, 0.25), "p75": percentile(xs, 0.75),
            "min": min(xs), "max": max(xs), "mean": statistics.fmean(xs)}


# --------------------------------------------------------------------------- intervals


def _binom_cdf_half(n: int, k: int) -> float:
    """P(Binomial(n, 1/2) <= k)."""
    if k < 0:
        return 0.0
    return sum(math.comb(n, i) for i in range(0, min(k, n) + 1)) / 2 ** n


def median_ci(xs: list[float], confidence: float = CONFIDENCE) -> dict | None:
    """Distribution-free confidence interval for the median of `xs` (order statistics).

    Returns {"lo", "hi", "confidence" (the interval's exact coverage), "k" (1-based rank
    of the lower bound)}, or None without data.
    """
    s = sorted(x for x in xs if x is not None)
    n = len(s)
    if n == 0:
        return None
    best = 1  # [min, max]
    for k in range(1, n // 2 + 1):
        if 1 - 2 * _binom_cdf_half(n, k - 1) >= confidence:
            best = k
        else:
            break
    coverage = 1 - 2 * _binom_cdf_half(n, best - 1)
    return {"lo": s[best - 1], "hi": s[n - best], "confidence": coverage, "k": best}


def robust_sigma(xs: list[float]) -> float:
    """1.4826 x MAD (a normal sigma), falling back to IQR/1.349, then to the standard deviation."""
    xs = [x for x in xs if x is not None]
    if len(xs) < 2:
        return 0.0
    m = statistics.median(xs)
    mad = statistics.median(abs(x - m) for x in xs)
    if mad > 0:
        return 1.4826 * mad
    iqr = percentile(xs, 0.75) - percentile(xs, 0.25)
    if iqr > 0:
        return iqr / 1.349
    return statistics.stdev(xs)


def reps_needed(xs: list[float], limit: float, confidence: float = CONFIDENCE, power: float = POWER) -> int | None:
    """Repetitions for a `confidence` interval of the median to clear `limit` with probability
    `power`, if the true median were this sample's and the spread what was observed; None
    where the median sits on the limit or nothing varies."""
    xs = [x for x in xs if x is not None]
    if len(xs) < 2:
        return None
    m, sigma = statistics.median(xs), robust_sigma(xs)
    gap = abs(m - limit)
    if gap == 0 or sigma == 0:
        return None
    nd = statistics.NormalDist()
    z = nd.inv_cdf(0.5 + confidence / 2) + nd.inv_cdf(power)
    n = math.ceil((z * MEDIAN_SE_FACTOR * sigma / gap) ** 2)
    return min(max(n, MIN_REPS_95), MAX_REPS_SHOWN + 1)


def verdict(values: list[float], limit: float, confidence: float = CONFIDENCE) -> dict:
    """PASS / MISS / UNRESOLVED for "median of `values` <= limit", from its interval."""
    ci = median_ci(values, confidence)
    if ci is None:
        return {"status": "MISS", "why": "no paired samples"}
    out = {"status": "UNRESOLVED", "ci": [ci["lo"], ci["hi"]], "confidence": ci["confidence"], "n": len(values)}
    if ci["confidence"] < MIN_VERDICT_CONFIDENCE:
        out["why"] = (f"{len(values)} repetition(s): the interval's coverage is {ci['confidence']:.0%}, "
                      f"under {MIN_VERDICT_CONFIDENCE:.0%}")
    elif ci["hi"] <= limit:
        out["status"] = "PASS"
    elif ci["lo"] > limit:
        out["status"] = "MISS"
    else:
        out["why"] = "the interval straddles the target"
    if out["status"] == "UNRESOLVED":
        out["reps_needed"] = reps_needed(values, limit, confidence)
    return out


# --------------------------------------------------------------------------- figures


def figure_rule(results: dict, w: dict) -> str:
    """How a session's figure is made: "median" of its blocks, "parts" (the syscall cell:
    the sum of its parts' median blocks), or "value" (one value per session)."""
    if w.get("figure"):
        return w["figure"]
    if w["id"] == "syscalls":
        return "parts"
    inner = results.get("inner_samples", {})
    if any(w["id"] in inner.get(v["id"], {}) for v in results["variants"]):
        return "median"
    return "value"


def _syscall_ops(results: dict) -> int:
    sc = results["config"].get("syscalls") or {}
    blocks = max(1, int(sc.get("blocks", 1)))
    return max(1, int(sc.get("n_ops", 1)) // blocks) * blocks


def session_figures(results: dict, variant: str, w: dict) -> list[float | None]:
    """One figure per repetition (None where the session failed or did not run it)."""
    samples = results["samples"].get(variant, {})
    inner = results.get("inner_samples", {}).get(variant, {})
    values = list(samples.get(w["id"], []))
    rule = figure_rule(results, w)
    if rule == "median" and w["id"] in inner:
        blocks = inner[w["id"]]
        values = [statistics.median(b) if b else None for b in blocks]
    elif rule == "parts":
        parts = [inner.get(f"syscall_{p}") for p in ("read", "stat", "getpid")]
        if all(parts):
            ops = _syscall_ops(results)
            values = [sum(statistics.median(p[i]) for p in parts) * ops / 1e6 if all(p[i] for p in parts) else None
                      for i in range(len(parts[0]))]
    return values


def _cost_ratio(v: float, base: float, better: str) -> float:
    return base / v if better == "higher" else v / base


def summarise(results: dict) -> dict:
    """{workload: {variant: {median/IQR..., ratio: {..., ci}, overhead_pct, diff: {..., ci}}}}."""
    out: dict = {}
    for w in results["workloads"]:
        wid, better = w["id"], w["better"]
        base = session_figures(results, BASELINE, w)
        row = {}
        for v in results["variants"]:
            vid = v["id"]
            vals = session_figures(results, vid, w)
            entry = describe(vals)
            if vid != BASELINE and entry["n"]:
                pairs = [(x, b) for x, b in zip(vals, base) if x is not None and b is not None and b > 0 and x > 0]
                ratios = [_cost_ratio(x, b, better) for x, b in pairs]
                diffs = [(x - b) if better == "lower" else (b - x) for x, b in pairs]
                if ratios:
                    entry["ratio"] = describe(ratios) | {"values": ratios, "ci": median_ci(ratios)}
                    entry["overhead_pct"] = (entry["ratio"]["median"] - 1) * 100
                    entry["diff"] = describe(diffs) | {"values": diffs, "ci": median_ci(diffs)}
            elif vid == BASELINE and entry["n"]:
                entry["spread_pct"] = (entry["p75"] - entry["p25"]) / entry["median"] * 100 if entry["median"] else 0
            row[vid] = entry
        out[wid] = row
    return out


def paired_between(results: dict, w: dict, variant: str, reference: str) -> dict | None:
    """The paired cost ratio variant / reference (e.g. our filter against the allow-all floor)."""
    a, b = session_figures(results, variant, w), session_figures(results, reference, w)
    ratios = [_cost_ratio(x, y, w["better"]) for x, y in zip(a, b) if x and y]
    if not ratios:
        return None
    return describe(ratios) | {"ci": median_ci(ratios)}


def check_targets(results: dict, summary: dict, variant: str) -> list[dict]:
    """One verdict per workload with a target, for `variant` (the deployed profile)."""
    out = []
    for w in results["workloads"]:
        t = w.get("target")
        if not t:
            continue
        e = summary.get(w["id"], {}).get(variant, {})
        base = {"workload": w["id"], "label": w["label"], "variant": variant, "target": t, "unit": w["unit"]}
        if "ratio" not in e:
            out.append(base | {"status": "MISS", "measured": None, "why": "no paired samples"})
            continue
        if t["kind"] == "relative":
            v = verdict(e["ratio"]["values"], 1 + t["limit_pct"] / 100)
            v["ci"] = [(x - 1) * 100 for x in v["ci"]]
            measured = e["overhead_pct"]
        else:
            v = verdict(e["diff"]["values"], t["limit"])
            measured = e["diff"]["median"]
        out.append(base | {"measured": measured} | v)
    return out
