"""report.md and overhead.png from results.json (``python -m benchmarks report DIR`` redoes them)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .stats import BASELINE, check_targets, summarise

RATIO_NOTE = ("ratio = variant cost / plain ipykernel cost (time or memory; 1/throughput for throughput figures), "
              "so **> 1 means slower (or more memory)**; overhead % = (ratio − 1) × 100, positive = worse. "
              "Ratios are paired per repetition (variants ran back to back, A B C D, A B C D, …) and summarised "
              "by their median and interquartile range.")


def analyse(results: dict) -> None:
    """Fill results['summary'] and results['targets'] from the samples."""
    results["summary"] = summarise(results)
    results["targets"] = check_targets(results, results["summary"], results["target_variant"])


# --------------------------------------------------------------------------- formatting


def _num(x: float | None, digits: int) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if abs(x) >= 1000 and digits <= 1:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _pct(x: float) -> str:
    return f"{x:+.1f}%" if abs(x) >= 0.05 else f"{x:+.2f}%"


def _target_text(w: dict) -> str:
    t = w.get("target")
    if not t:
        return ""
    if t["kind"] == "relative":
        return f"≤ {t['limit_pct']:g}%"
    return f"≤ +{t['limit']:g} {w['unit']}"


def _overhead_cell(w: dict, e: dict) -> str:
    if "ratio" not in e:
        return "–"
    r = e["ratio"]
    text = f"{_pct(e['overhead_pct'])} ({_pct((r['p25'] - 1) * 100)} … {_pct((r['p75'] - 1) * 100)})"
    if (w.get("target") or {}).get("kind") == "absolute":
        text += f"; {e['diff']['median']:+.{max(w['digits'], 1)}f} {w['unit']}"
    return text


def _median_cell(w: dict, e: dict) -> str:
    if not e.get("n"):
        return "–"
    d = w["digits"]
    return f"{_num(e['median'], d)} [{_num(e['p25'], d)}–{_num(e['p75'], d)}]"


def _verdict_line(t: dict, summary: dict, variants: list[dict], workloads: dict) -> str:
    w = workloads[t["workload"]]
    if t["measured"] is None:
        return f"- **MISS** {w['label']}: no measurement ({t.get('why', '')})"
    others = []
    for v in variants:
        if v["id"] in (BASELINE, t["variant"]):
            continue
        e = summary[t["workload"]].get(v["id"], {})
        if "ratio" in e:
            val = e["overhead_pct"] if t["target"]["kind"] == "relative" else e["diff"]["median"]
            others.append(f"{v['id']}: " + (_pct(val) if t["target"]["kind"] == "relative"
                                             else f"{val:+.{max(w['digits'], 1)}f} {w['unit']}"))
    if t["target"]["kind"] == "relative":
        m = t["measured"]
        size = f"{abs(m):.1f}%" if abs(m) >= 0.05 else f"{abs(m):.2f}%"
        measured = f"overhead {_pct(m)} ({size} {'slower' if m >= 0 else 'faster'} than plain ipykernel"
        measured += ", per unit of work)" if w["better"] == "higher" else ")"
    else:
        measured = f"{t['measured']:+.{max(w['digits'], 1)}f} {w['unit']} vs plain ipykernel"
    e = summary[t["workload"]].get(t["variant"], {})
    if t["target"]["kind"] == "relative":
        r = e["ratio"]
        spread = f"paired IQR {_pct((r['p25'] - 1) * 100)} … {_pct((r['p75'] - 1) * 100)}"
    else:
        d, u = e["diff"], w["unit"]
        spread = f"paired IQR {d['p25']:+.{max(w['digits'], 1)}f} … {d['p75']:+.{max(w['digits'], 1)}f} {u}"
    return (f"- **{t['status']}** {w['label']}: {measured} (target {_target_text(w)}; {spread})"
            + (f" — other variants: {', '.join(others)}" if others else ""))


def markdown(results: dict, notes: str | None = None) -> str:
    s, m, ver = results["summary"], results["machine"], results["versions"]
    variants = results["variants"]
    wl = {w["id"]: w for w in results["workloads"]}
    full = next(v for v in variants if v["id"] == results["target_variant"])
    lines = [
        f"# sandbox-kernel overhead: {results['device'].upper()} on {results['machine_name']}",
        "",
        f"{results['created'][:19].replace('T', ' ')} UTC · `{results['command']}` · mode **{results['mode']}**, "
        f"{results['config']['reps']} interleaved repetitions"
        + (" (start-up figures only)" if results["config"].get("startup_only") else "")
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
    lines += ["", f"## Targets ({full['id']} = {full['label']}, vs plain ipykernel)", ""]
    for t in results["targets"]:
        lines.append(_verdict_line(t, s, variants, wl))
    passed = sum(t["status"] == "PASS" for t in results["targets"])
    lines += ["", f"{passed} of {len(results['targets'])} targets met.", ""]

    lines += ["## Overhead at a glance", "", RATIO_NOTE + " Brackets: (25th … 75th percentile).", ""]
    others = [v for v in variants if v["id"] != BASELINE]
    lines.append("| workload | unit | plain ipykernel (median) | " + " | ".join(v["label"] for v in others)
                 + " | target |")
    lines.append("|---|---|---:|" + "---:|" * len(others) + "---|")
    for w in results["workloads"]:
        row = s.get(w["id"], {})
        base = row.get(BASELINE, {})
        unit = w["unit"] + (" ↑" if w["better"] == "higher" else "")
        lines.append(f"| {w['label']} | {unit} | {_num(base.get('median'), w['digits'])} | "
                     + " | ".join(_overhead_cell(w, row.get(v["id"], {})) for v in others)
                     + f" | {_target_text(w)} |")
    lines += ["", "↑: higher is better (throughput); otherwise lower is better.", ""]

    lines += ["## Medians and spread", "",
              f"Median [25th–75th percentile] over {results['config']['reps']} repetitions, one fresh kernel per "
              "variant and repetition.", ""]
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
    lines += [f"- {n}" for n in results.get("auto_notes", [])]
    if notes:
        lines += ["", notes.strip()]
    lines += ["", "Every sample, the machine and the versions are in `results.json`; "
              "`python -m benchmarks report DIR` regenerates this file and overhead.png from it.", ""]
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = results["summary"]
    variants = [v for v in results["variants"] if v["id"] != BASELINE]
    colors = {"guard": "#1f77b4", "os": "#ff7f0e", "full": "#d62728"}
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
    for ax, (title, ws) in zip(axes, panels):
        for j, v in enumerate(variants):
            ys, xs, lo, hi = [], [], [], []
            for i, w in enumerate(ws):
                e = s.get(w["id"], {}).get(v["id"], {})
                if "ratio" not in e:
                    continue
                r = e["ratio"]
                ys.append(i + (j - (len(variants) - 1) / 2) * bar_h)
                xs.append(r["median"])
                lo.append(max(0.0, r["median"] - r["p25"]))
                hi.append(max(0.0, r["p75"] - r["median"]))
            ax.barh(ys, [x - 1 for x in xs], left=1, height=bar_h * 0.9, color=colors.get(v["id"]),
                    label=v["label"], xerr=[lo, hi], error_kw={"elinewidth": 1, "capsize": 2})
        for i, w in enumerate(ws):
            t = w.get("target")
            base = s.get(w["id"], {}).get(BASELINE, {})
            if t and t["kind"] == "relative":
                limit = 1 + t["limit_pct"] / 100
            elif t and base.get("median"):
                limit = 1 + t["limit"] / base["median"]
            else:
                continue
            ax.plot([limit, limit], [i - 0.45, i + 0.45], color="black", linestyle="--", linewidth=1)
        ax.axvline(1.0, color="black", linewidth=0.8)
        ax.set_yticks(range(len(ws)))
        ax.set_yticklabels([w["label"] for w in ws], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        ax.grid(axis="x", alpha=0.3)
        ax.tick_params(axis="x", labelsize=8)
    axes[-1].set_xlabel("ratio to plain ipykernel (cost: time, 1/throughput or memory; > 1 = slower / more); "
                        "bars: median, whiskers: IQR; dashed: target", fontsize=8)
    axes[0].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"sandbox-kernel overhead vs plain ipykernel — {results['device']} on {results['machine_name']} "
                 f"({results['mode']}, {results['config']['reps']} reps)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _compact(x):
    """Floats to 6 significant digits (far below the noise), for a results.json worth committing."""
    if isinstance(x, float):
        return float(f"{x:.6g}") if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _compact(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_compact(v) for v in x]
    return x


def write(results: dict, out: Path, notes: str | None = None) -> None:
    """Round the samples, analyse them (in place), write the three files: regenerating gives the same files."""
    compacted = _compact(results)
    results.clear()
    results.update(compacted)
    if notes is not None:
        results["user_notes"] = notes
    notes = results.get("user_notes")
    analyse(results)
    (out / "results.json").write_text(json.dumps(_compact(results), indent=1, default=str) + "\n")
    (out / "report.md").write_text(markdown(results, notes))
    plot(results, out / "overhead.png")
