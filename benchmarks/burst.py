"""Simultaneous starts (``benchmarks run --peers --burst N``): N kernels of one variant
started at the same instant, as when a class of students opens its notebooks.

Per round, each variant in turn (the order rotated from round to round, like the
repetitions) starts N kernels from N threads released together; the figures are the
wall time from the release until every kernel has answered its first (empty) cell, and
each kernel's own time to that reply. The kernels of a variant are shut down before the
next variant starts, so variants never compete with each other. Rounds are paired like
repetitions: the ratio of two variants' wall times is taken within one round.
"""

from __future__ import annotations

import statistics
import threading
import time
from pathlib import Path

from .kernels import BenchKernel
from .stats import describe, median_ci

# the variants a burst compares: the baseline, the deployed kernel, and the peers
BURST_VARIANTS = ("plain", "full", "bwrap", "firejail")


def together(calls: list, limit: float | None = None) -> tuple[list, list[str], float]:
    """Run `calls` (callables without arguments) from one thread each, released at the same
    instant once every thread is waiting: (their results, in the order they finished; the
    errors, one line each; the wall time in ms from the release until the last returned, or until
    `limit` seconds had passed for a thread)."""
    results: list = []
    errors: list[str] = []
    lock = threading.Lock()
    ready = threading.Semaphore(0)
    go = threading.Event()

    def one(call) -> None:
        ready.release()
        go.wait()
        try:
            out = call()
            with lock:
                results.append(out)
        except Exception as e:  # noqa: BLE001 - counted and reported; the round goes on
            with lock:
                errors.append(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")

    threads = [threading.Thread(target=one, args=(c,), daemon=True) for c in calls]
    for t in threads:
        t.start()
    for _ in threads:  # every thread is waiting: release them together
        ready.acquire()
    t0 = time.perf_counter()
    go.set()
    for t in threads:
        t.join(limit)
    return results, errors, (time.perf_counter() - t0) * 1e3


def one_burst(spec_name: str, n: int, *, cwd: str, env: dict, log_dir: Path, tag: str, connection_dir: str | None,
              timeout: float) -> dict:
    """Start `n` kernels of `spec_name` at once; their times to the first reply and the wall time."""
    kernels = [BenchKernel(spec_name, cwd=cwd, env=env, log_path=log_dir / f"{tag}-{i:02d}.log",
                           connection_dir=connection_dir) for i in range(n)]
    starts, errors, wall_ms = together([lambda k=k: k.start(timeout) for k in kernels], limit=timeout + 30)
    for k in kernels:
        try:
            k.shutdown()
        except Exception:  # noqa: BLE001, S110 - a kernel that failed to start has nothing to shut down
            pass
    return {"n": n, "wall_ms": wall_ms if not errors else None, "start_ms": starts, "errors": errors}


def run(variant_specs: dict[str, str], n: int, rounds: int, *, cwd: str, env: dict, log_dir: Path,
        connection_dir: str | None, timeout: float, step=None) -> dict:
    """`rounds` rounds of an N-kernel burst per variant (variant id -> kernelspec name)."""
    ids = [v for v in BURST_VARIANTS if v in variant_specs]
    per: dict[str, list[dict]] = {v: [] for v in ids}
    for r in range(rounds):
        k = r % len(ids) if ids else 0
        for vid in ids[k:] + ids[:k]:
            if step:
                step(f"burst {r + 1}/{rounds} · {vid} × {n}")
            per[vid].append(one_burst(variant_specs[vid], n, cwd=cwd, env=env, log_dir=log_dir,
                                      tag=f"burst{r:02d}-{vid}", connection_dir=connection_dir, timeout=timeout))
    return {"n": n, "rounds": rounds, "variants": ids, "samples": per}


def paired_walls(burst: dict, a: str, b: str) -> list[float]:
    """Per round: wall(a) / wall(b), where both rounds had every kernel answer."""
    sa, sb = burst["samples"].get(a, []), burst["samples"].get(b, [])
    return [x["wall_ms"] / y["wall_ms"] for x, y in zip(sa, sb) if x["wall_ms"] and y["wall_ms"]]


def section(results: dict) -> list[str]:
    """report.md: the simultaneous starts, per variant and paired against plain and the peers."""
    burst = results.get("burst")
    if not burst:
        return []
    n, ids = burst["n"], burst["variants"]
    lines = [f"### {n} simultaneous starts", "",
             f"{burst['rounds']} round(s); in each, every variant in turn starts {n} kernels at once (alone on the "
             f"machine). Wall: from the release until all {n} answered their first cell. A round in which a kernel "
             f"failed to start has no wall figure.", "",
             "| variant | wall until all answered, ms (median) | one kernel's start, ms (median [p25–p75]) | failed starts |",
             "|---|---:|---:|---:|"]
    for vid in ids:
        rs = burst["samples"][vid]
        walls = [x["wall_ms"] for x in rs if x["wall_ms"]]
        starts = [s for x in rs for s in x["start_ms"]]
        d = describe(starts) if starts else None
        w = describe(walls) if walls else None
        lines.append(f"| {vid} | {w['median']:.0f} | " if w else f"| {vid} | – | ")
        lines[-1] += (f"{d['median']:.0f} [{d['p25']:.0f}–{d['p75']:.0f}] | " if d else "– | ") + \
            f"{sum(len(x['errors']) for x in rs)} |"
    pairs = [(a, "plain") for a in ids if a != "plain"] + [("full", p) for p in ("bwrap", "firejail") if p in ids]
    pairs = [(a, b) for a, b in pairs if a in ids and b in ids]
    if pairs:
        lines += ["", "Paired wall-time ratio per round, median [interval; its coverage]:", ""]
        for a, b in pairs:
            vals = paired_walls(burst, a, b)
            if not vals:
                lines.append(f"- {a} / {b}: no round where both answered")
                continue
            ci = median_ci(vals)
            med = statistics.median(vals)
            shown = f"[{ci['lo']:.3f}–{ci['hi']:.3f}; {ci['confidence']:.0%}]" if ci else "(too few rounds)"
            lines.append(f"- {a} / {b}: x{med:.3f} {shown} ({len(vals)} rounds)")
    return lines + [""]
