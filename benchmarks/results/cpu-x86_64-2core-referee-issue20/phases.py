"""Per-phase medians of interleaved start-up profiles, and the difference of each checkout's from
the one before it (bootstrap 95% intervals of the difference of medians).

    python phases.py runs A B C
    python phases.py runs-followup C D

Each JSON file in the directory is one `startup-profile --out` run, named <checkout>-<round>.json."""
import json
import random
import statistics
import sys
from pathlib import Path

out, trees = Path(sys.argv[1]), sys.argv[2:]
ph = {}
for f in sorted(out.glob("*-*.json")):
    t = f.stem.split("-")[0]
    for k, v in json.loads(f.read_text())["phases"].items():
        if k.startswith("sandbox · ") or k.startswith("bare"):
            ph.setdefault(k, {}).setdefault(t, []).extend(v["samples_ms"])
rng = random.Random(2)


def dci(a, b):
    m = sorted(statistics.median(rng.choices(b, k=len(b))) - statistics.median(rng.choices(a, k=len(a)))
               for _ in range(3000))
    return m[75], m[2924]


pairs = list(zip(trees, trees[1:]))
print("| phase | " + " | ".join(trees) + " | " + " | ".join(f"{b} − {a} [95%]" for a, b in pairs) + " |")
print("|---|" + "---:|" * (len(trees) + len(pairs)))
for k, d in ph.items():
    med = {t: statistics.median(d[t]) for t in trees}
    diffs = []
    for a, b in pairs:
        lo, hi = dci(d[a], d[b])
        diffs.append(f"{med[b] - med[a]:+.1f} [{lo:+.1f} … {hi:+.1f}]")
    print(f"| {k.replace('sandbox · ', '')} | " + " | ".join(f"{med[t]:.1f}" for t in trees) + " | "
          + " | ".join(diffs) + " |")
