"""What one argument-checked system call costs under the seccomp filter:
``python -m benchmarks.seccomp_cost [--rounds N]``.

The layer-costs benchmark times system calls from Python, where the interpreter's own
overhead (~0.3-1 us per call) and this shared VM's noise hide a few nanoseconds. Here a
small C loop makes raw system calls (``getpid``, and ``sendto(-1, ...)``, which the
kernel rejects with EBADF right after the filter has run) so that the filter is most of
what is timed. The filter is loaded by our own binding in Python, which then execs the
C program (filters are inherited across exec). Modes: no filter; an allow-all filter
(the price of having any filter); the `free` profile's filter without its MSG_FASTOPEN
rules (sendto answered from the kernel's bitmap cache); the `free` profile's filter
(sendto runs the BPF program: its MSG_FASTOPEN check). Each figure is the best of 9
blocks of 5*10^5 calls in a process; the lowest over interleaved rounds is printed
(the least disturbed by other work on a shared machine), with the median beside it.

Needs a C compiler (cc); prints what is missing otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

C_SOURCE = r"""
#include <stdio.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e9 + t.tv_nsec; }
int main(void) {
    const long n = 500000;
    double g = 1e18, s = 1e18;
    for (int b = 0; b < 9; b++) {
        double t0 = now();
        for (long i = 0; i < n; i++) syscall(SYS_getpid);
        double t1 = now();
        for (long i = 0; i < n; i++) syscall(SYS_sendto, -1, 0, 0, 0, 0, 0);
        double t2 = now();
        if (t1 - t0 < g) g = t1 - t0;
        if (t2 - t1 < s) s = t2 - t1;
    }
    printf("{\"getpid\": %.2f, \"sendto (EBADF)\": %.2f}\n", g / n, s / n);
    return 0;
}
"""

LOADER = r"""
import os, sys
from sandbox_kernel import libseccomp as sc
from sandbox_kernel.layers import seccomp as L
mode, prog = sys.argv[1], sys.argv[2]
if mode == "allow-all filter":
    sc.Filter(sc.ALLOW).load()
elif mode != "no filter":
    rules = L.base_rules() + L.network_rules("restricted", False)
    if mode == "free's filter without its MSG_FASTOPEN rules":
        rules = [r for r in rules if r.syscall not in ("sendto", "sendmsg", "sendmmsg")]
    L.build(sc, rules).load()
os.execv(prog, [prog])
"""

MODES = ["no filter", "allow-all filter", "free's filter without its MSG_FASTOPEN rules", "free's filter"]


def measure(rounds: int) -> dict:
    cc = shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise SystemExit("seccomp_cost: no C compiler (cc) on PATH")
    tmp = tempfile.mkdtemp(prefix="sandbox-kernel-seccomp-cost-")
    try:
        src, prog = os.path.join(tmp, "loop.c"), os.path.join(tmp, "loop")
        with open(src, "w") as fh:
            fh.write(C_SOURCE)
        subprocess.run([cc, "-O2", "-o", prog, src], check=True)
        runs: dict[str, dict[str, list[float]]] = {}
        for _ in range(rounds):
            for mode in MODES:
                r = subprocess.run([sys.executable, "-c", LOADER, mode, prog], check=True, capture_output=True, text=True)
                for k, v in json.loads(r.stdout).items():
                    runs.setdefault(mode, {}).setdefault(k, []).append(v)
        return {m: {k: (min(v), statistics.median(v)) for k, v in d.items()} for m, d in runs.items()}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def markdown(res: dict, rounds: int) -> str:
    calls = list(res[MODES[0]])
    base = res[MODES[0]]
    lines = [f"ns per raw system call: the lowest of {rounds} rounds (each the best of 9 blocks of 5*10^5 calls), "
             "in brackets the difference to no filter, then the median of the rounds.", "",
             "| filter | " + " | ".join(f"{c} | median" for c in calls) + " |", "|---|" + "---:|---:|" * len(calls)]
    for m in MODES:
        lines.append(f"| {m} | " + " | ".join(f"{res[m][c][0]:.1f} ({res[m][c][0] - base[c][0]:+.1f}) | {res[m][c][1]:.1f}"
                                             for c in calls) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.seccomp_cost", description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    print(markdown(measure(args.rounds), args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
