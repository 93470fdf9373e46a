"""report.md and overhead.png from results.json (``python -m benchmarks report DIR`` redoes them)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .stats import BASELINE, CONFIDENCE, check_targets, median_ci, paired_between, summarise

FLOOR = "floor"  # the reference variant: plain ipykernel under an allow-all seccomp filter
RATIO_NOTE = ("ratio = variant cost / plain ipykernel cost (time or memory; 1/throughput for throughput figures), "
              "so **> 1 means slower (or more memory)**; overhead % = (ratio − 1) × 100, positive = worse. "
              "Each repetition's sessions are paired (the variants ran one after another; Notes say in which "
              "order); the figure is the median of the paired ratios (start-up and the empty-cell round trip: of "
              "the paired differences, in their unit), and the brackets are its confidence interval: {coverage}. "
              "A session's figure is its median block (benchmarks/stats.py says why).")
STATUS_ORDER = ("PASS", "MISS", "UNRESOLVED")


def analyse(results: dict) -> None:
    """Fill results['summary'] and results['targets'] from the samples."""
    results["summary"] = summarise(results)
    results["targets"] = check_targets(results, results["summary"], results["target_variant"])
    if results.get("config", {}).get("peers"):
        from .peers import check_peer_targets

        results["peer_targets"] = check_peer_targets(results)


# --------------------------------------------------------------------------- formatting


def _num(x: float | None, digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if abs(x) >= 1000 and digits <= 1:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _pct(x: float) -> str:
    return f"{x:+.1f}%" if abs(x) >= 0.05 else f"{x:+.2f}%"


def _pct_bare(x: float) -> str:
    return f"{x:+.1f}" if abs(x) >= 0.05 else f"{x:+.2f}"


def _diff(x: float, w: dict) -> str:
    return f"{x:+.{max(w['digits'], 1)}f}"


_RUN_COVERAGE = [CONFIDENCE]  # the coverage of a full set of repetitions' intervals, set per report


def _conf(ci: dict | None) -> str:
    """'' at the run's usual coverage, else the interval's own (a session failed, or n is small)."""
    if not ci or abs(ci["confidence"] - _RUN_COVERAGE[0]) < 1e-9 or (
            ci["confidence"] >= CONFIDENCE and _RUN_COVERAGE[0] >= CONFIDENCE):
        return ""
    return f"{ci['confidence'] * 100:.1f}% CI "


def _ratio_ci_text(ci: dict | None) -> str:
    if not ci:
        return ""
    return f"[{_conf(ci)}{_pct_bare((ci['lo'] - 1) * 100)} … {_pct((ci['hi'] - 1) * 100)}]"


def _diff_ci_text(ci: dict | None, w: dict) -> str:
    if not ci:
        return ""
    return f"[{_conf(ci)}{_diff(ci['lo'], w)} … {_diff(ci['hi'], w)}]"


def _target_text(w: dict) -> str:
    t = w.get("target")
    if not t:
        return ""
    if t["kind"] == "relative":
        return f"≤ {t['limit_pct']:g}%"
    return f"≤ +{t['limit']:g} {w['unit']}"


def _is_absolute(w: dict) -> bool:
    return (w.get("target") or {}).get("kind") == "absolute"


def _overhead_cell(w: dict, e: dict) -> str:
    """The figure with its interval: a difference in the unit for absolute targets, else the overhead %."""
    if "ratio" not in e:
        return "–"
    if _is_absolute(w):
        return f"{_diff(e['diff']['median'], w)} {w['unit']} {_diff_ci_text(e['diff'].get('ci'), w)}"
    return f"{_pct(e['overhead_pct'])} {_ratio_ci_text(e['ratio'].get('ci'))}"


def _median_cell(w: dict, e: dict) -> str:
    if not e.get("n"):
        return "–"
    d = w["digits"]
    return f"{_num(e['median'], d)} [{_num(e['p25'], d)}–{_num(e['p75'], d)}]"


def _reps_text(t: dict) -> str:
    n = t.get("reps_needed")
    if n is None:
        return "the median sits on the target: no number of repetitions can be planned from this run"
    if n > 10_000:
        return "more than 10,000 repetitions would be needed to resolve it (the median is almost on the target)"
    return (f"≈ {n} repetitions would resolve it (80% chance if the true median is this run's; "
            f"from the observed spread)")


def _verdict_line(t: dict, summary: dict, variants: list[dict], workloads: dict) -> str:
    w = workloads[t["workload"]]
    if t["measured"] is None:
        return f"- **{t['status']}** {w['label']}: no measurement ({t.get('why', '')})"
    rel = t["target"]["kind"] == "relative"
    others = []
    for v in variants:
        if v["id"] in (BASELINE, t["variant"]):
            continue
        e = summary[t["workload"]].get(v["id"], {})
        if "ratio" in e:
            others.append(f"{v['id']}: " + (_pct(e["overhead_pct"]) if rel else f"{_diff(e['diff']['median'], w)} {w['unit']}"))
    lo, hi = t["ci"]
    conf = f"{t['confidence'] * 100:.1f}%" if t["confidence"] < CONFIDENCE - 1e-9 else f"{CONFIDENCE:.0%}"
    if rel:
        m = t["measured"]
        measured = f"overhead {_pct(m)} [{conf} CI {_pct_bare(lo)} … {_pct(hi)}]"
        if w["better"] == "higher":
            measured += " per unit of work"
    else:
        measured = f"{_diff(t['measured'], w)} {w['unit']} [{conf} CI {_diff(lo, w)} … {_diff(hi, w)}] vs plain ipykernel"
    text = f"- **{t['status']}** {w['label']}: {measured} (target {_target_text(w)}, {t['n']} paired repetitions)"
    if t["status"] == "UNRESOLVED":
        text += f": {t.get('why', '')}; {_reps_text(t)}" if "straddles" in t.get("why", "") else f": {t.get('why', '')}"
    if others:
        text += " — other variants: " + ", ".join(others)
    return text


def _floor_section(results: dict, s: dict) -> list[str]:
    """Our seccomp filter against the floor of having any filter at all."""
    ids = {v["id"] for v in results["variants"]}
    if FLOOR not in ids:
        return []
    ws = [w for w in results["workloads"] if w["group"] == "system" and w["id"] != "dataloader"
          and s.get(w["id"], {}).get(FLOOR, {}).get("n")]
    if not ws:
        return []
    cols = [v for v in results["variants"] if v["id"] not in (BASELINE,) and v["id"] in (FLOOR, "os", "full")]
    lines = ["## Seccomp: our filter against the floor", "",
             "The `floor` variant is plain ipykernel under the smallest seccomp filter there is (one BPF "
             "instruction: allow every system call) with no_new_privs: what *having* a filter costs every "
             "system call (the seccomp entry), whatever its rules. The last column compares the deployed kernel "
             "with that floor directly (paired per repetition): what our rules, Landlock and the other layers add "
             "on top. Overhead % vs plain ipykernel, median of the paired ratios [95% CI].", "",
             "| workload | unit | plain ipykernel (median) | " + " | ".join(v["label"] for v in cols)
             + f" | {results['target_variant']} vs {FLOOR} |",
             "|---|---|---:|" + "---:|" * len(cols) + "---:|"]
    for w in ws:
        row = s[w["id"]]
        vs_floor = paired_between(results, w, results["target_variant"], FLOOR)
        cell = (f"{_pct((vs_floor['median'] - 1) * 100)} {_ratio_ci_text(vs_floor['ci'])}" if vs_floor else "–")
        lines.append(f"| {w['label']} | {w['unit']} | {_num(row.get(BASELINE, {}).get('median'), w['digits'])} | "
                     + " | ".join(_overhead_cell({**w, "target": None}, row.get(v["id"], {})) for v in cols)
                     + f" | {cell} |")
    return lines + [""]


def markdown(results: dict, notes: str | None = None) -> str:
    s, m, ver = results["summary"], results["machine"], results["versions"]
    variants = results["variants"]
    wl = {w["id"]: w for w in results["workloads"]}
    full = next(v for v in variants if v["id"] == results["target_variant"])
    cfg = results["config"]
    reps = cfg.get("reps_done", cfg["reps"])
    full_ci = median_ci(list(range(reps)))
    _RUN_COVERAGE[0] = full_ci["confidence"] if full_ci else CONFIDENCE
    coverage = (f"{CONFIDENCE:.0%}, distribution-free (order statistics)" if _RUN_COVERAGE[0] >= CONFIDENCE else
                f"{_RUN_COVERAGE[0] * 100:.1f}%, distribution-free: with {reps} repetitions, [min, max] of the paired "
                f"values is the most confident interval there is (where a session failed, the coverage is stated)")
    lines = [
        f"# sandbox-kernel overhead: {results['device'].upper()} on {results['machine_name']}",
        "",
        f"{results['created'][:19].replace('T', ' ')} UTC · `{results['command']}` · mode **{results['mode']}**, "
        f"{reps} interleaved repetitions"
        + (f" (of {cfg['reps']} planned: the time budget of {cfg['max_minutes']:g} min was reached)"
           if reps != cfg["reps"] else "")
        + (" (start-up figures only)" if cfg.get("startup_only") else "")
        + f" · {results['duration_s'] / 60:.1f} min",
        "",
        f"**Machine:** {m.get('cpu_model', '?')}, {m.get('cpus', '?')} CPUs, {m.get('memory_gib', 0):.1f} GiB RAM, "
        f"Linux {m.get('kernel', '?')} ({m.get('arch', '?')}), Landlock ABI {m.get('landlock_abi', '?')}, "
        f"cgroup {m.get('cgroup', '?')}, running as {m.get('user', '?')}"
        + (f"; GPU: {m['gpu']}" if m.get("gpu") else "; no GPU") + ".",
        "",
        "**Versions:** " + ", ".join(f"{k} {v}" for k, v in ver.items() if v) + ".",
        "",
        "## Variants",
        "",
        "| variant | what runs |",
        "|---|---|",
    ]
    for v in variants:
        lines.append(f"| **{v['id']}** ({v['label']}) | {v['description']} |")
    lines += ["", f"## Targets ({full['id']} = {full['label']}, vs plain ipykernel)", "",
              f"PASS: the whole {CONFIDENCE:.0%} confidence interval meets the target; MISS: the whole interval "
              "misses it; UNRESOLVED: the interval straddles the target (this run cannot tell), with the "
              "repetitions that would tell.", ""]
    for t in results["targets"]:
        lines.append(_verdict_line(t, s, variants, wl))
    counts = {k: sum(t["status"] == k for t in results["targets"]) for k in STATUS_ORDER}
    lines += ["", f"{len(results['targets'])} targets: " + ", ".join(f"{counts[k]} {k}" for k in STATUS_ORDER) + ".",
              ""]

    lines += ["## Overhead at a glance", "", RATIO_NOTE.replace("{coverage}", coverage), ""]
    others = [v for v in variants if v["id"] != BASELINE]
    verdicts = {t["workload"]: t["status"] for t in results["targets"]}
    lines.append("| workload | unit | plain ipykernel (median) | " + " | ".join(v["label"] for v in others)
                 + f" | target | verdict ({full['id']}) |")
    lines.append("|---|---|---:|" + "---:|" * len(others) + "---|---|")
    for w in results["workloads"]:
        row = s.get(w["id"], {})
        base = row.get(BASELINE, {})
        unit = w["unit"] + (" ↑" if w["better"] == "higher" else "")
        status = verdicts.get(w["id"])
        lines.append(f"| {w['label']} | {unit} | {_num(base.get('median'), w['digits'])} | "
                     + " | ".join(_overhead_cell(w, row.get(v["id"], {})) for v in others)
                     + f" | {_target_text(w)} | {'**' + status + '**' if status else ''} |")
    lines += ["", "↑: higher is better (throughput); otherwise lower is better. –: the variant does not run "
              "that workload.", ""]
    lines += _floor_section(results, s)
    if cfg.get("peers"):
        from .peers import peer_section

        lines += peer_section(results)

    lines += ["## Medians and spread", "",
              f"Median [25th–75th percentile] of the sessions' figures over {reps} repetitions, one fresh kernel "
              "per variant and repetition.", ""]
    lines.append("| workload | unit | " + " | ".join(v["label"] for v in variants) + " |")
    lines.append("|---|---|" + "---:|" * len(variants))
    for w in results["workloads"]:
        row = s.get(w["id"], {})
        lines.append(f"| {w['label']} | {w['unit']} | "
                     + " | ".join(_median_cell(w, row.get(v["id"], {})) for v in variants) + " |")
    lines += ["", "![overhead per workload](overhead.png)", ""]

    if results.get("errors"):
        lines += ["## Errors", ""]
        for e in results["errors"]:
            lines.append(f"- rep {e['rep']}, {e['variant']}: {e['error'].splitlines()[0] if e['error'] else ''}")
        lines.append("")
    lines += ["## Notes", ""]
    for n in results.get("auto_notes", []):
        if "the best block of each repetition" in n:  # a run analysed before 2026-11-23
            n += (" (This report was regenerated with the analysis of 2026-11-23: a session's figure is now its "
                  "median block, and every figure has a confidence interval.)")
        lines.append(f"- {n}")
    order = _order_note(results)
    if order:
        lines.append(f"- {order}")
    if notes:
        lines += ["", notes.strip()]
    lines += ["", "Every sample, the machine and the versions are in `results.json`; "
              "`python -m benchmarks report DIR` regenerates this file and overhead.png from it.", ""]
    return "\n".join(lines)


def _order_note(results: dict) -> str:
    """Say whether the order of the variants was rotated: a fixed order confounds a variant with its position."""
    by_rep: dict = {}
    for o in results.get("order", []):
        by_rep.setdefault(o["rep"], []).append(o["variant"])
    orders = {tuple(v) for v in by_rep.values()}
    if len(by_rep) < 2:
        return ""
    if len(orders) == 1:
        return ("Order: the same in every repetition (" + ", ".join(next(iter(orders))) + "): a drift within a "
                "repetition, or an effect of a session's position, falls on the same variant every time and no "
                "interval can show it. Runs since 2026-11-23 rotate the order.")
    return ("Order: rotated from one repetition to the next (each variant takes each position in turn), so an "
            "effect of a session's position becomes spread that the intervals include.")


def axis_cap(ends: list[float], limits: list[float]) -> float | None:
    """Where a panel's ratio axis should end so that one outlier does not squash the rest, or
    None (no bar needs cutting). `ends`: each bar's far end (its interval's upper bound);
    `limits`: the dashed targets, always shown. The axis covers four times the excess over 1
    of the typical (75th-percentile) bar end, at least 1.25 and every target; a bar beyond
    it is cut there and labelled with its value."""
    over = sorted(max(0.0, e - 1) for e in ends if math.isfinite(e))
    if not over:
        return None
    typical = over[min(len(over) - 1, int(0.75 * len(over)))]
    cap = 1 + max(4 * typical, 0.25, *[1.1 * (t - 1) for t in limits if math.isfinite(t)])
    return cap if over[-1] + 1 > cap * 1.05 else None


def plot(results: dict, path: Path) -> list[dict]:
    """Draw overhead.png; returns per panel {"title", "xmax" (None: not cut), "cut": [labels of cut bars]}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["summary"]
    variants = [v for v in results["variants"] if v["id"] != BASELINE]
    colors = {"floor": "#9467bd", "guard": "#1f77b4", "os": "#ff7f0e", "full": "#d62728"}
    panels = [("steady state: compute, system calls, import", [w for w in results["workloads"]
                                                               if w["group"] in ("compute", "system")
                                                               or w["id"] == "import_torch"]),
              ("start-up, per-cell latency, memory", [w for w in results["workloads"]
                                                      if w["group"] in ("start-up", "memory")
                                                      and w["id"] != "import_torch"])]
    heights = [max(2.0, 0.42 * len(ws) * len(variants) / 2) for _, ws in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, sum(heights) + 1.6),
                             gridspec_kw={"height_ratios": heights})
    bar_h = 0.8 / len(variants)
    drawn = []
    for ax, (title, ws) in zip(axes, panels):
        bars = []  # (y, median, upper end, label)
        for j, v in enumerate(variants):
            ys, xs, lo, hi = [], [], [], []
            for i, w in enumerate(ws):
                e = s.get(w["id"], {}).get(v["id"], {})
                if "ratio" not in e:
                    continue
                r = e["ratio"]
                ys.append(i + (j - (len(variants) - 1) / 2) * bar_h)
                xs.append(r["median"])
                ci = r.get("ci") or {"lo": r["median"], "hi": r["median"]}
                lo.append(max(0.0, r["median"] - ci["lo"]))
                hi.append(max(0.0, ci["hi"] - r["median"]))
                bars.append((ys[-1], r["median"], max(r["median"], ci["hi"]), f"{w['label']} ({v['id']})",
                             min(r["median"], ci["lo"])))
            ax.barh(ys, [x - 1 for x in xs], left=1, height=bar_h * 0.9, color=colors.get(v["id"]),
                    label=v["label"], xerr=[lo, hi], error_kw={"elinewidth": 1, "capsize": 2})
        limits = []
        for i, w in enumerate(ws):
            t = w.get("target")
            base = s.get(w["id"], {}).get(BASELINE, {})
            if t and t["kind"] == "relative":
                limit = 1 + t["limit_pct"] / 100
            elif t and base.get("median"):
                limit = 1 + t["limit"] / base["median"]
            else:
                continue
            limits.append(limit)
            ax.plot([limit, limit], [i - 0.45, i + 0.45], color="black", linestyle="--", linewidth=1)
        cap = axis_cap([b[2] for b in bars], limits)
        cut = []
        if cap is not None:
            left = min([1.0] + [b[4] for b in bars])
            ax.set_xlim(left=left - 0.02 * (cap - left), right=cap)
            for y, median, _, label, _ in bars:
                if median > cap:
                    cut.append(label)
                    ax.annotate(f"{median:.3g}× ▶", (cap, y), xytext=(-3, 0), textcoords="offset points",
                                ha="right", va="center", fontsize=7, color="white", fontweight="bold")
        drawn.append({"title": title, "xmax": cap, "cut": cut})
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(ws)))
        ax.set_yticklabels([w["label"] for w in ws], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    axes[-1].set_xlabel("ratio to plain ipykernel (cost: time, 1/throughput or memory; > 1 = slower / more)\n"
                        f"bars: median of the paired ratios; whiskers: its {CONFIDENCE:.0%} confidence interval "
                        "(less where n ≤ 5); dashed: target\na bar cut at the axis's end is labelled with its "
                        "ratio", fontsize=8)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"sandbox-kernel overhead vs plain ipykernel — {results['device']} on {results['machine_name']} "
                 f"({results['mode']}, {results['config'].get('reps_done', results['config']['reps'])} reps)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return drawn


NO_MATPLOTLIB = ("matplotlib is not installed, so overhead.png was not drawn (results.json and report.md were "
                 "written): `pip install matplotlib` (or the package's bench extra, `pip install -e '.[bench]'`), "
                 "then `python -m benchmarks report {out}` draws it from the results")


def _compact(x):
    """Floats to 6 significant digits (far below the noise), for a results.json worth committing."""
    if isinstance(x, float):
        return float(f"{x:.6g}") if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _compact(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_compact(v) for v in x]
    return x


def write(results: dict, out: Path, notes: str | None = None) -> bool:
    """Round the samples, analyse them (in place), write the three files: regenerating gives the same files.
    Returns whether overhead.png was drawn (not without matplotlib, which the report and data do not need)."""
    compacted = _compact(results)
    results.clear()
    results.update(compacted)
    if notes is not None:
        results["user_notes"] = notes
    notes = results.get("user_notes")
    analyse(results)
    (out / "results.json").write_text(json.dumps(_compact(results), indent=1, default=str) + "\n")
    (out / "report.md").write_text(markdown(results, notes))
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        import sys

        print("benchmarks: note: " + NO_MATPLOTLIB.format(out=out), file=sys.stderr)
        return False
    plot(results, out / "overhead.png")
    return True
