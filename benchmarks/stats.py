"""Medians, spreads, paired ratios and the target verdicts, from results.json's samples.

Conventions (stated in the report):
- a figure is the median over repetitions; its spread is the interquartile range
  (25th-75th percentile, linear interpolation) and the min-max;
- ratio = variant cost / plain ipykernel cost, where the cost is the time or the
  memory, or 1/throughput for throughput figures: **> 1 means slower (or more
  memory)**; overhead % = (ratio - 1) x 100;
- ratios are *paired*: computed per repetition between the variant and the plain
  kernel of the same repetition (they ran back to back), then summarised by their
  median and IQR, which cancels drift over the run;
- absolute targets (start-up, empty-cell round trip) use the paired difference
  variant - plain, in the figure's unit.
"""

from __future__ import annotations

import math
import statistics

BASELINE = "plain"


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


def cost_ratio(v: float, base: float, better: str) -> float:
    return base / v if better == "higher" else v / base


def summarise(results: dict) -> dict:
    """{workload: {variant: {stats..., ratio: {...}, overhead_pct, diff: {...}}}}."""
    out: dict = {}
    samples = results["samples"]
    for w in results["workloads"]:
        wid, better = w["id"], w["better"]
        base = samples.get(BASELINE, {}).get(wid, [])
        row = {}
        for v in results["variants"]:
            vid = v["id"]
            vals = samples.get(vid, {}).get(wid, [])
            entry = describe(vals)
            if vid != BASELINE and entry["n"]:
                pairs = [(x, b) for x, b in zip(vals, base) if x is not None and b is not None and b > 0 and x > 0]
                ratios = [cost_ratio(x, b, better) for x, b in pairs]
                diffs = [(x - b) if better == "lower" else (b - x) for x, b in pairs]
                if ratios:
                    entry["ratio"] = describe(ratios)
                    entry["overhead_pct"] = (entry["ratio"]["median"] - 1) * 100
                    entry["diff"] = describe(diffs)
            elif vid == BASELINE and entry["n"]:
                entry["spread_pct"] = (entry["p75"] - entry["p25"]) / entry["median"] * 100 if entry["median"] else 0
            row[vid] = entry
        out[wid] = row
    return out


def check_targets(results: dict, summary: dict, variant: str) -> list[dict]:
    """One verdict per workload with a target, for `variant` (the deployed profile)."""
    out = []
    for w in results["workloads"]:
        t = w.get("target")
        if not t:
            continue
        e = summary.get(w["id"], {}).get(variant, {})
        verdict = {"workload": w["id"], "label": w["label"], "variant": variant, "target": t, "unit": w["unit"]}
        if "ratio" not in e:
            verdict.update(status="MISS", measured=None, why="no paired samples")
        elif t["kind"] == "relative":
            verdict.update(measured=e["overhead_pct"],
                           status="PASS" if e["overhead_pct"] <= t["limit_pct"] else "MISS")
        else:
            verdict.update(measured=e["diff"]["median"],
                           status="PASS" if e["diff"]["median"] <= t["limit"] else "MISS")
        out.append(verdict)
    return out
