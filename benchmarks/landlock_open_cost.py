"""What a Landlock domain costs a file open when it handles rights the open does not request:
``python -m benchmarks.landlock_open_cost [--reps 16] [--rights 0x1,0x2,0x8000,net+scoped]``.

Under the read view (layers/read_view.py) the kernel's Landlock ruleset handles no read right and
no truncate, so an ``open(O_RDONLY)`` requests nothing it handles and Landlock walks no path. Yet
``peer-targets --also no_landlock=...`` still found Landlock the largest per-open cost left. This
isolates it: pairs of fresh processes, one with no Landlock domain and one whose domain handles
only the given rights (no rule: the open touches none of them; ``net``: TCP bind and connect,
``scoped``: abstract UNIX sockets and signals, the domain the kernel keeps under the read view,
``net+scoped``), time open+read+close of a file
in /dev/shm in the raw loop of ``peer_targets.RAW_LOOPS_X86_64`` (no interpreter between the
calls), best of 15 blocks of 20,000 each, after one uncounted warm-up process; the order alternates
per repetition, and the figure is
the median of the paired differences (ns per open+read+close) with its range. x86_64 only.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile

CHILD = r"""
import ctypes, mmap, sys, time
code, off, path = bytes.fromhex(sys.argv[1]), int(sys.argv[2]), sys.argv[4].encode()
fs, net, scoped = (int(x, 0) for x in sys.argv[3].split(","))
libc = ctypes.CDLL(None, use_errno=True)
if fs or net or scoped:
    class Attr(ctypes.Structure):
        _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]
    attr = Attr(fs, net, scoped)
    fd = libc.syscall(444, ctypes.byref(attr), ctypes.sizeof(attr), 0)  # landlock_create_ruleset
    assert fd >= 0 and libc.prctl(38, 1, 0, 0, 0) == 0, ctypes.get_errno()  # PR_SET_NO_NEW_PRIVS
    assert libc.syscall(446, fd, 0) == 0, ctypes.get_errno()  # landlock_restrict_self
m = mmap.mmap(-1, len(code), prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
m.write(code)
base = ctypes.addressof(ctypes.c_char.from_buffer(m))
loop = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_char_p, ctypes.c_void_p)(base + off)
buf, best = ctypes.create_string_buffer(4096), 1e9
for _ in range(15):
    t = time.perf_counter()
    assert loop(20000, path, buf) == 0
    best = min(best, (time.perf_counter() - t) / 20000 * 1e9)
print(f"{best:.1f}")
"""


KINDS = {"net": (0, 3, 0), "scoped": (0, 0, 3), "net+scoped": (0, 3, 3)}  # (fs, net, scoped) masks


def handled(kind) -> tuple[int, int, int]:
    """(handled_access_fs, handled_access_net, scoped) of a kind: a filesystem mask or a KINDS name."""
    return KINDS[kind] if isinstance(kind, str) else (kind, 0, 0)


def label(kind) -> str:
    return kind if isinstance(kind, str) else f"{kind:#x}"


def measure(rights: list, reps: int, progress=None) -> dict:
    """ns per open+read+close, per repetition, for no domain (0) and each of `rights` (filesystem
    masks, or names of KINDS)."""
    from .peer_targets import RAW_LOOPS_X86_64 as raw

    fd, path = tempfile.mkstemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
    os.write(fd, os.urandom(512))
    os.close(fd)
    kinds = [0] + rights
    out: dict = {k: [] for k in kinds}

    def run(k) -> float:
        r = subprocess.run([sys.executable, "-c", CHILD, raw["code"], str(raw["open_loop"]),
                            ",".join(hex(x) for x in handled(k)), path], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"rights {label(k)}: {r.stderr.strip()[-500:]}")
        return float(r.stdout)

    try:
        run(0)  # warm-up (the file's pages, the interpreter's): not counted
        for i in range(reps):
            for k in kinds if i % 2 == 0 else kinds[::-1]:
                out[k].append(run(k))
            if progress:
                progress(f"repetition {i + 1}/{reps}")
    finally:
        os.unlink(path)
    return out


def report(out: dict) -> str:
    from .stats import median_ci

    base = out[0]
    lines = ["| handled rights | ns per open+read+close (median) | paired − no domain: median [95% interval] |",
             "|---|---:|---:|",
             f"| no domain | {statistics.median(base):.0f} | – |"]
    for k, v in out.items():
        if k:
            d = [x - y for x, y in zip(v, base)]
            ci = median_ci(d)
            lines.append(f"| {label(k)} | {statistics.median(v):.0f} | {statistics.median(d):+.0f} "
                         f"[{ci['lo']:+.0f} … {ci['hi']:+.0f}] |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.landlock_open_cost", description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=16)
    ap.add_argument("--rights", default="0x1,0x2,0x8000",
                    help="comma-separated handled_access_fs masks (0x1 EXECUTE, 0x2 WRITE_FILE, 0x8000 IOCTL_DEV), "
                         "or net, scoped, net+scoped (no filesystem right)")
    a = ap.parse_args(argv)
    import platform

    if platform.machine() != "x86_64":
        print("benchmarks.landlock_open_cost: the raw loop is x86_64 code", file=sys.stderr)
        return 2
    try:
        rights = [x.strip() if x.strip() in KINDS else int(x, 0) for x in a.rights.split(",") if x.strip()]
    except ValueError:
        print(f"benchmarks.landlock_open_cost: --rights {a.rights!r}: give masks such as 0x1,0x2, or "
              f"{', '.join(KINDS)}", file=sys.stderr)
        return 2
    if a.reps < 1 or not rights or any(isinstance(r, int) and r <= 0 for r in rights):
        print("benchmarks.landlock_open_cost: --reps must be 1 or more and --rights positive masks", file=sys.stderr)
        return 2
    print(report(measure(rights, a.reps, progress=lambda s: print(s, file=sys.stderr, flush=True))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
