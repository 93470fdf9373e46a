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
   could not answer: the BPF program runs); also ``send``+``recv`` on a UNIX datagram
   socket pair, because ``sendto`` carries an argument rule (MSG_FASTOPEN) in every
   mode but ``full``, so the BPF program runs on each call.

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
SCALE = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0  # (the suite's check runs a hundredth)
def best(fn, per, blocks=7):
    per = max(1, int(per * SCALE))
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
SCALE = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
if mode != "no filter":
    from sandbox_kernel import libseccomp as sc
    from sandbox_kernel.layers import seccomp as L
    if mode == "allow-all filter":
        sc.Filter(sc.ALLOW).load()
    else:
        rules = L.base_rules() + L.network_rules("restricted", False)
        if mode == "profile's filter without its MSG_FASTOPEN rules":
            rules = [r for r in rules if r.syscall not in ("sendto", "sendmsg", "sendmmsg")]
        f = L.build(sc, rules)
        if mode == "profile's filter + an argument rule on getpid":
            f.add_rule(sc.ERRNO(1), "getpid", (0, sc.EQ, 12345))
        f.load()
import socket
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
b.setblocking(False)
def drain():
    try:
        while True: b.recv(16)
    except BlockingIOError:
        pass
def best(g, per=200000, blocks=9, between=None):
    per = max(1, int(per * SCALE))
    ts = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(per): g()
        ts.append(time.perf_counter() - t0)
        between and between()
    return min(ts) / per * 1e9
def send():
    a.send(b"x")  # glibc's send() is the sendto system call: argument-checked (MSG_FASTOPEN)
    b.recv(16)    # recvfrom: not argument-checked
print(json.dumps({"getpid": best(os.getpid), "sendto+recvfrom (UNIX datagram)": best(send, per=100000)}))
"""

FILTER_MODES = ["no filter", "allow-all filter", "profile's filter without its MSG_FASTOPEN rules", "profile's filter",
                "profile's filter + an argument rule on getpid"]


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


def measure(rounds: int = 5, scale: float = 1.0) -> dict:
    py = sys.executable
    tmp = Path(tempfile.mkdtemp(prefix="sandbox-kernel-layercost-", dir="/var/tmp"))
    try:
        work = tmp / "work"
        deep = work.joinpath(*"abcdefgh")
        deep.mkdir(parents=True)
        for d in (work, deep):
            (d / "f0").write_bytes(os.urandom(512))
        probe = work / "probe.py"  # (readable under Landlock: the working directory is granted, its parent is not)
        probe.write_text(PROBE)
        configs = _profiles(tmp)
        runs: dict[str, dict[str, list[float]]] = {}
        for _ in range(rounds):
            for label, profile in configs.items():
                cmd = [py, str(probe), str(scale)]
                if profile:
                    cmd = [py, "-I", "-m", "sandbox_kernel.cli", "run", "--profile", profile, "--"] + cmd
                r = subprocess.run(cmd, cwd=work, check=True, capture_output=True, text=True)
                for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items():
                    runs.setdefault(label, {}).setdefault(k, []).append(v)
            for mode in FILTER_MODES:
                r = subprocess.run([py, "-c", FILTER_PROBE, mode, str(scale)], check=True, capture_output=True, text=True)
                for k, v in json.loads(r.stdout.strip().splitlines()[-1]).items():
                    runs.setdefault(f"filter: {mode}", {}).setdefault(k, []).append(v)
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
    calls = list(res[filt[0]])
    lines += ["", "The seccomp filter, loaded in-process (ns per call; in brackets: the difference to no filter):", "",
              "| filter | " + " | ".join(calls) + " |", "|---|" + "---:|" * len(calls)]
    for k in filt:
        cells = [f"{res[k][c]:.1f} ({res[k][c] - res[filt[0]][c]:+.1f})" for c in calls]
        lines.append(f"| {k.split(': ', 1)[1]} | " + " | ".join(cells) + " |")
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
