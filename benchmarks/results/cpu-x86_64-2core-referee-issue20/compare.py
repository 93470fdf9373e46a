"""Compare the interleaved start-up profiles: per tree, the launcher's own time (start to exec:
every sandbox phase but the kernel's), the sandbox's total, and sandbox - plain ipykernel (paired
per repetition); medians with bootstrap 95% intervals, and B - A, C - B (difference of medians)."""
import json, random, statistics, sys
from pathlib import Path

out = Path(sys.argv[1])
KERNEL = "sandbox · exec → first execute_reply (the kernel)"
data = {}
for f in sorted(out.glob("*-*.json")):
    tree = f.stem.split("-")[0]
    r = json.loads(f.read_text())
    ph = {k: v["samples_ms"] for k, v in r["phases"].items() if k.startswith("sandbox · ")}
    n = len(r["sandbox_total_ms"])
    launcher = [sum(v[i] for k, v in ph.items() if k != KERNEL) for i in range(n)]
    d = data.setdefault(tree, {"launcher": [], "kernel": [], "total": [], "overhead": [], "plain": []})
    d["launcher"] += launcher
    d["kernel"] += ph[KERNEL]
    d["total"] += r["sandbox_total_ms"]
    d["plain"] += r["plain_total_ms"]
    d["overhead"] += r["overhead_ms"]

rng = random.Random(1)
def ci(xs, ys=None):
    meds = []
    for _ in range(4000):
        a = statistics.median(rng.choices(xs, k=len(xs)))
        meds.append(a - statistics.median(rng.choices(ys, k=len(ys))) if ys else a)
    meds.sort()
    return meds[100], meds[3899]

print("| measure | " + " | ".join(f"{t} (n={len(data[t]['total'])})" for t in sorted(data)) + " | B − A | C − B |")
print("|---|" + "---:|" * (len(data) + 2))
for m in ("launcher", "kernel", "total", "plain", "overhead"):
    cells = []
    for t in sorted(data):
        lo, hi = ci(data[t][m])
        cells.append(f"{statistics.median(data[t][m]):.1f} [{lo:.1f} … {hi:.1f}]")
    for a, b in (("A", "B"), ("B", "C")):
        if a in data and b in data:
            lo, hi = ci(data[b][m], data[a][m])
            cells.append(f"{statistics.median(data[b][m]) - statistics.median(data[a][m]):+.1f} [{lo:+.1f} … {hi:+.1f}]")
    print(f"| {m} ms | " + " | ".join(cells) + " |")
