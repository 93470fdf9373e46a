"""How many BPF instructions a seccomp filter runs for one system call: a count, not a timing.

``python -m benchmarks.bpf_walk`` builds the `free` profile's filter (network restricted: base
rules, the restricted network rules and the listen notification; and, for network mode `none`,
the launcher's stage 1 and the kernel's stage 2) as built (libseccomp's default layout, the hot calls first by
priority) and with libseccomp's binary-tree layout
(``SCMP_FLTATR_CTL_OPTIMIZE`` = 2), exports their BPF and walks it in a small classic-BPF
interpreter for the hot calls. On a shared machine a count is exact where a timing of a few
nanoseconds is noise. The kernel skips the filter entirely (its per-filter bitmap cache,
Linux 5.11+) for calls whose verdict does not depend on their arguments in every stacked
filter: those show as "cached". A stacked filter runs in full for a call no filter caches.
"""

from __future__ import annotations

import struct
import sys

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7


def seccomp_data(nr: int, arch: int, args=(0, 0, 0, 0, 0, 0)) -> bytes:
    args = list(args) + [0] * (6 - len(args))
    return struct.pack("<iIQ6Q", nr, arch, 0, *[a & 0xFFFFFFFFFFFFFFFF for a in args])


def walk(prog: bytes, data: bytes) -> tuple[int, int]:
    """(return value, instructions executed) of classic BPF `prog` over `data`."""
    insns = [struct.unpack_from("<HBBI", prog, i) for i in range(0, len(prog), 8)]
    a = x = 0
    mem = [0] * 16
    pc = steps = 0
    while True:
        code, jt, jf, k = insns[pc]
        steps += 1
        cls = code & 7
        if cls == 0:  # LD
            mode = code & 0xE0
            if mode == 0x20:
                a = struct.unpack_from("<I", data, k)[0]
            elif mode == 0x00:
                a = k
            elif mode == 0x60:
                a = mem[k]
            else:
                raise ValueError(f"LD mode {code:#x}")
        elif cls == 1:  # LDX
            mode = code & 0xE0
            x = k if mode == 0x00 else mem[k] if mode == 0x60 else struct.unpack_from("<I", data, k)[0]
        elif cls == 2:
            mem[k] = a
        elif cls == 3:
            mem[k] = x
        elif cls == 4:  # ALU
            op, src = code & 0xF0, (x if code & 8 else k)
            a = {0x00: lambda: a + src, 0x10: lambda: a - src, 0x20: lambda: a * src, 0x40: lambda: a | src,  # noqa: B023 - called in this iteration
                 0x50: lambda: a & src, 0x60: lambda: a << src, 0x70: lambda: a >> src, 0x80: lambda: -a,  # noqa: B023 - called in this iteration
                 0xA0: lambda: a ^ src}[op]() & 0xFFFFFFFF  # noqa: B023 - called in this iteration
        elif cls == 5:  # JMP
            op, src = code & 0xF0, (x if code & 8 else k)
            if op == 0x00:
                pc += 1 + k
                continue
            cond = {0x10: a == src, 0x20: a > src, 0x30: a >= src, 0x40: bool(a & src)}[op]
            pc += 1 + (jt if cond else jf)
            continue
        elif cls == 6:  # RET
            return (a if code & 0x10 else k), steps
        elif cls == 7:
            if code == 0x07:
                x = a
            elif code == 0x87:
                a = x
        pc += 1


def arg_dependent(prog: bytes, nr: int, arch: int) -> bool:
    """Does the filter's verdict for `nr` read an argument? (What the kernel's cache decides,
    approximated: walk with two different argument sets and see whether any load beyond
    offset 8 happens; libseccomp only loads args on argument-checked calls.)"""
    insns = [struct.unpack_from("<HBBI", prog, i) for i in range(0, len(prog), 8)]
    data = seccomp_data(nr, arch)
    pc = 0
    a = 0
    while True:
        code, jt, jf, k = insns[pc]
        cls = code & 7
        if cls == 0 and code & 0xE0 == 0x20:
            if k >= 16:
                return True
            a = struct.unpack_from("<I", data, k)[0]
        elif cls == 6:
            return False
        elif cls == 5:
            op = code & 0xF0
            if op == 0x00:
                pc += 1 + k
                continue
            cond = {0x10: a == k, 0x20: a > k, 0x30: a >= k, 0x40: bool(a & k)}[op]
            pc += 1 + (jt if cond else jf)
            continue
        elif cls == 4:
            a = (a & k) if code & 0xF0 == 0x50 else a
        pc += 1


def filters(optimize: int | None, mode: str = "restricted"):
    """The filters a kernel stacks for network `mode`, as libseccomp filters: `restricted` (the
    `free` profile) loads one (base rules, restricted network rules, the listen notification);
    `none` loads that as stage 1 and, once ZMQ is bound, stage 2 with the `none` rules stage 1
    lacks."""
    from sandbox_kernel import libseccomp as sc
    from sandbox_kernel.layers import seccomp as L

    stage1 = L.base_rules() + L.network_rules("restricted", False) + L.listen_rules("notify")
    stages = [stage1]
    if mode == "none":
        first = set(stage1)
        stages.append([r for r in L.base_rules() + L.network_rules("none", False) if r not in first])
    return [L.build(sc, rules, optimize=optimize) for rules in stages]


CALLS = (("sendto", (5, 0, 1, 0, 0, 0)), ("recvfrom", (5, 0, 1, 0, 0, 0)), ("sendmsg", (5, 0, 0)),
         ("openat", (-100, 0, 0, 0)), ("getpid", ()), ("read", (3, 0, 1)), ("socket", (1, 1, 0)),
         ("clone", (0x01200011,)), ("mmap", (0, 4096, 3, 0x22, -1, 0)))


def table(optimizes=(None, 2), mode: str = "restricted") -> list[str]:
    from sandbox_kernel import libseccomp as sc

    arch = AUDIT_ARCH_X86_64 if sc.native_arch() == "SCMP_ARCH_X86_64" else AUDIT_ARCH_AARCH64
    rows = {}
    sizes = {}
    for opt in optimizes:
        fs = filters(opt, mode)
        progs = [f.export_bpf() for f in fs]
        for f in fs:
            f.release()
        sizes[opt] = [len(p) // 8 for p in progs]
        for name, args in CALLS:
            nr = sc.resolve(name)
            if nr is None:
                continue
            cached = not any(arg_dependent(p, nr, arch) for p in progs)
            counts = [walk(p, seccomp_data(nr, arch, args))[1] for p in progs]
            rows.setdefault(name, {})[opt] = "cached (no BPF run)" if cached else f"{sum(counts)} ({' + '.join(map(str, counts))})"
    label = {None: "default layout, hot calls by priority (as built)", 2: "binary tree (CTL_OPTIMIZE 2)"}
    what = "the `free` profile's filter (network restricted)" if mode == "restricted" else \
        f"stage 1 + stage 2 filters of network mode `{mode}`"
    lines = [f"BPF instructions run per call, {what} (an allow-all filter runs 1):", "",
             "| call | " + " | ".join(label.get(o, str(o)) for o in optimizes) + " |",
             "|---|" + "---:|" * len(optimizes)]
    for name, per in rows.items():
        lines.append(f"| {name} | " + " | ".join(per[o] for o in optimizes) + " |")
    lines.append("| (filter sizes, instructions) | " + " | ".join(" + ".join(map(str, sizes[o])) for o in optimizes)
                 + " |")
    return lines


if __name__ == "__main__":
    print("\n".join(table()))
    print()
    print("\n".join(table(mode="none")))
    sys.exit(0)
