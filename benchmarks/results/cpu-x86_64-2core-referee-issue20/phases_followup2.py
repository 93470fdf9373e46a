import json, random, statistics, sys
from pathlib import Path
out = Path(sys.argv[1])
ph = {}
for f in sorted(out.glob("*-*.json")):
    t = f.stem.split("-")[0]
    for k, v in json.loads(f.read_text())["phases"].items():
        if k.startswith("sandbox · ") or k.startswith("bare"):
            ph.setdefault(k, {}).setdefault(t, []).extend(v["samples_ms"])
rng = random.Random(2)
def dci(a, b):
    m = sorted(statistics.median(rng.choices(b, k=len(b))) - statistics.median(rng.choices(a, k=len(a))) for _ in range(3000))
    return m[75], m[2924]
print("| phase | D | E | E − D [95%] |\n|---|---:|---:|---:|")
for k, d in ph.items():
    med = {t: statistics.median(v) for t, v in d.items()}
    cd = dci(d["D"], d["E"])
    print(f"| {k.replace('sandbox · ', '')} | {med['D']:.1f} | {med['E']:.1f} | {med['E']-med['D']:+.1f} [{cd[0]:+.1f} … {cd[1]:+.1f}] |")
