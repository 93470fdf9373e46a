"""Per-syscall cost of seccomp and Landlock: ``python -m benchmarks layer-costs``.

The syscall-heavy cell of the main benchmark says *how much* slower the sandbox
makes system calls; this says *which layer* and *why*, outside Jupyter, with the
launcher applying one layer at a time:

1. a probe script (``getpid``; ``os.open``+``os.close`` of files 1 and 9 levels below
   the working directory's write rule and of a read-only stdlib file; Python's
   ``open().read()``) under: no launcher, the launcher with no OS layer, seccomp
   only, Landlock only, both (the benchmark's ``os`` profile) and the full profile;
2. the seccomp filter itself, loaded in-process: no filter, an allow-all filter
   (the price of having any filter), the profile's filter (whose rules, by number
   only, the kernel answers from its per-filter bitmap cache), and the profile's
   filter plus one argument rule on ``getpid`` (what it would cost if the cache
   could not answer: the BPF program runs).

Each figure is the best of several blocks within a process, median over
interleaved rounds of fresh processes.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from .variants import PROFILES_DIR

PROBE = r"""
import json, os, sys, time
def best(fn, per, blocks=7):
    ts = []
    for _ in range(blocks):
        t0 = time.perf_counter(); fn(per); ts.append(time.perf_counter() - t0)
    return min(ts) / per * 1e9
def getpid(n):
    g = os.getpid
    for _ in range(n): g()
def opener(path):
    def run(n):
        for _ in range(n):
            os.close(os.open(path, os.O_RDONLY))
    return run
def pyread(path):
    def run(n):
        for _ in range(n):
            with open(path, "rb") as fh: fh.read()
    return run
shallow = os.path.join(os.getcwd(), "f0")
deep = os.path.join(os.getcwd(), *"abcdefgh", "f0")
stdlib = os.__file__
out = {"getpid": best(getpid, 200000), "os.open+close, 1 level below the write rule": best(opener(shallow), 40000),
       "os.open+close, 9 levels below the write rule": best(opener(deep), 40000),
       "os.open+close, read-only stdlib file (walk to /)": best(opener(stdlib), 40000),
       "open().read() of a 512-byte file": best(pyread(shallow), 40000)}
print(json.dumps(out))
"""

FILTER_PROBE = r"""
import json, os, sys, time
mode = sys.argv[1]
if mode == "allow-all filter":  # one BPF instruction through prctl: no binding needed
    sys.path.insert(0, sys.argv[2])
    from seccomp_floor import load_allow_all
    load_allow_all()
elif mode != "no filter":  # the profile's rules, built by the seccomp layer's own code (pyseccomp API)
    try:
        import pyseccomp as sc
        from sandbox_kernel.layers import seccomp as L
        f = L.build(sc, socket=L.socket_rules("restricted", False), base=True)
    except Exception as e:
        print(json.dumps({"unavailable": f"{type(e).__name__}: {e}"}))
        sys.exit(0)
    if mode != "profile's filter":
        f.add_rule(sc.ERRNO(1), "getpid", sc.Arg(0, sc.EQ, 12345))
    f.load()
def best(per=200000, blocks=9):
    g, ts = os.getpid, []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(per): g()
        ts.append(time.perf_counter() - t0)
    return min(ts) / per * 1e9
print(json.dumps({"getpid": best()}))
"""

FILTER_MODES = ["no filter", "allow-all filter", "profile's filter", "profile's filter + an argument rule on getpid"]


def _profiles(d: Path) -> dict[str, str | None]:
    def one(name, landlock, seccomp):
        p = d / f"{name}.yaml"
        p.write_text(f"extends: free\nenforcement: {{capabilities: \"off\", cgroup: \"off\", rlimits: \"off\", "
                     f"mount_namespace: \"off\", no_new_privs: \"required\", landlock: \"{landlock}\", "
                     f"seccomp: \"{seccomp}\"}}\n")
        return str(p)

    return {"plain python (no launcher)": None, "launcher, no OS layer": one("none", "off", "off"),
            "seccomp only": one("seccomp", "off", "required"), "Landlock only": one("landlock", "required", "off"),
            "seccomp + Landlock (+ rlimits, mount ns: bench-os)": str(PROFILES_DIR / "bench-os-cpu.yaml"),
            "full profile (free)": "free"}


def measure(rounds: int = 5) -> dict:
    py = sys.executable
    tmp = Path(tempfile.mkdtemp(prefix="sandbox-kernel-layercost-", dir="/var/tmp"))
    try:
        work = tmp / "work"
        deep = work.joinpath(*"abcdefgh")
        deep.mkdir(parents=True)
        for d in (work, deep):
            (d / "f0").write_bytes(os.urandom(512))
        probe = tmp / "probe.py"
        probe.write_text(PROBE)
        configs = _profiles(tmp)
        runs: dict[str, dict[str, list[float]]] = {}
        for _ in range(rounds):
            for label, profile in configs.items():
                cmd = [py, str(probe)]
                if profile:
                    cmd = [py, "-I", "-m", "sandbox_kernel.cli", "run", "--profile", profile, "--"] + cmd
                r = subprocess.run(cmd, cwd=work, check=True, capture_output=True, text=True)
                for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items():
                    runs.setdefault(label, {}).setdefault(k, []).append(v)
            for mode in FILTER_MODES:
                r = subprocess.run([py, "-c", FILTER_PROBE, mode, str(Path(__file__).resolve().parent)], check=True,
                                   capture_output=True, text=True)
                got = json.loads(r.stdout.strip().splitlines()[-1])
                if "getpid" in got:  # else this code's seccomp layer has another interface: the mode is left out
                    runs.setdefault(f"filter: {mode}", {}).setdefault("getpid", []).append(got["getpid"])
        return {label: {k: statistics.median(v) for k, v in d.items()} for label, d in runs.items()} | {
            "_samples": runs}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def markdown(res: dict, rounds: int) -> str:
    configs = [k for k in res if not k.startswith(("filter:", "_"))]
    ops = list(res[configs[0]])
    base = res[configs[0]]
    lines = [f"Nanoseconds per operation (best block in a process, median of {rounds} interleaved fresh processes); "
             "in brackets: the difference to plain python.", "",
             "| operation | " + " | ".join(configs) + " |", "|---|" + "---:|" * len(configs)]
    for op in ops:
        cells = [f"{res[c][op]:.0f}" + ("" if c == configs[0] else f" ({res[c][op] - base[op]:+.0f})") for c in configs]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    filt = [k for k in res if k.startswith("filter:")]
    b = res[filt[0]]["getpid"]
    lines += ["", "The seccomp filter, loaded in-process (a `getpid` loop, ns per call):", "",
              "| filter | getpid ns | vs no filter |", "|---|---:|---:|"]
    for k in filt:
        lines.append(f"| {k.split(': ', 1)[1]} | {res[k]['getpid']:.1f} | {res[k]['getpid'] - b:+.1f} |")
    return "\n".join(lines) + "\n"


def main(rounds: int, out: Path | None) -> int:
    res = measure(rounds)
    text = markdown(res, rounds)
    print(text)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "layer-costs.md").write_text(text)
        (out / "layer-costs.json").write_text(json.dumps(res, indent=1) + "\n")
    return 0
