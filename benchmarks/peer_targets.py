"""Issue 21's five targets, measured so that they can resolve: ``python -m benchmarks peer-targets``.

Why a command of its own: ``run --peers`` measures each figure once per session, and a
repetition's sessions (one per variant, each with its torch workloads) lie minutes apart.
On a shared 2-vCPU VM the machine's pace drifts that much between them: the paired ratios of
a 4 µs system call spread over ±30%, and a cold start's paired difference over ±170 ms, so
ten repetitions resolved none of the five targets (``results/cpu-x86_64-2core-peers-2``).
This measures the same five figures with the pairs close together in time:

- **per operation**, in kernels that stay up (one of each variant: plain, full, full with its
  reads left to Landlock, floor, bwrap, firejail; ``--sessions`` times fresh ones): in each round every kernel, in turn (the order rotates per round), runs
  short blocks of ``os.open``+``os.read``+``os.close`` of a 512-byte file in ``/tmp`` and in
  the notebook directory, and of a 1-byte ``send``+``recv`` over a socketpair (sendto and
  recvfrom). Each round runs in a child the kernel forks for it (``micro_ops``: a process's
  own luck, where its pages fall in the caches, moved one configuration's figures by up to
  30% between sessions, which paired rounds in one process cannot cancel). A round's figure is
  its best block (what a block costs beyond the operations is
  interruptions and the machine's other work, which only ever add); the pairs are the rounds,
  so a drift of the machine within a round is shared by every variant. On x86_64 each kernel
  also times the same operations in loops of raw system calls (``RAW_LOOPS_X86_64``, mapped
  executable in the cell and called through ctypes): no interpreter between the calls, so the
  sendto+recvfrom target, tens of nanoseconds, is decided there rather than under the Python
  loop's jitter; the opens' targets stay on the Python loop, the issue's own measure (the raw
  figures beside them say what the same difference weighs without the interpreter);
- **cold starts**: in each round one start of each variant (plain, full, bwrap, firejail;
  rotated), the time from the start request to the reply of an empty cell (time to first
  result), then the PSS of the kernel's process tree (wrappers, supervisor and init
  included), then a shutdown that waits for the processes to end.

Targets, verdicts and intervals: ``peers.PEER_TARGETS`` and ``stats.verdict`` (the median of
the paired values, a distribution-free 95% interval; PASS or MISS only when it lies wholly on
one side of the target).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, UTC
from pathlib import Path

from . import stats

MICRO_VARIANTS = ("plain", "full", "full_ll", "floor", "bwrap", "firejail")
# full_ll: the deployed kernel with its reads left to Landlock (SANDBOX_KERNEL_READ_VIEW=off, as a platform can set
# it), beside `full` in the same rounds: what the read view (layers/read_view.py) saves per open
START_VARIANTS = ("plain", "full", "bwrap", "firejail")
# peers.PEER_TARGETS' workloads -> the figure measured here
# (the first figure with paired samples decides: sendto+recvfrom from the raw loop, where it ran)
FIGURE_OF = {"syscall_tmp_read": ("tmp",), "syscall_read": ("nb",), "syscall_sock": ("sock_raw", "sock"),
             "startup": ("startup",), "pss_start": ("pss",)}
MICRO_FIGURES = ("tmp", "nb", "sock", "tmp_raw", "nb_raw", "sock_raw")
# The raw loops (benchmarks/raw_loops_x86_64.s, assembled): sock_loop(n, fd_a, fd_b, buf) at 0 and
# open_loop(n, path, buf) at 0x6e, each returning how many of its system calls failed. A Python loop
# around os.open or socket.send spends 2-4 µs of its 4-6 µs in the interpreter, whose jitter hides
# tens of nanoseconds; here the cell maps these bytes executable and calls them through ctypes, so a
# block times the system calls (and the seccomp filter, Landlock, the mounts on their path) alone.
RAW_LOOPS_X86_64 = {
    "code": "5341544155415641574889fb4989f44989d54989ce4531ffb82c0000004c89e74c89f6ba010000004531d24531c04531c9"
            "0f0548c1e83f4901c7b82d0000004c89ef4c89f6ba010000004531d24531c04531c90f0548c1e83f4901c748ffcb75b74c"
            "89f8415f415e415d415c5bc35341544155415641574889fb4989f44989d54531ffb80101000048c7c79cffffff4c89e6ba"
            "000008004531d20f054989c648c1e83f4901c731c04c89f74c89eeba001000000f0548c1e83f4901c7b8030000004c89f7"
            "0f0548c1e83f4901c748ffcb75b14c89f8415f415e415d415c5bc3",
    "sock_loop": 0x0, "open_loop": 0x6e}
FIGURES = {  # id: (label, unit)
    "tmp": ("open+read+close in /tmp", "µs/op"),
    "nb": ("open+read+close in the notebook dir", "µs/op"),
    "sock": ("socketpair send+recv, 1 byte (sendto+recvfrom)", "µs/op"),
    "tmp_raw": ("open+read+close in /tmp, raw system calls", "µs/op"),
    "nb_raw": ("open+read+close in the notebook dir, raw system calls", "µs/op"),
    "sock_raw": ("sendto+recvfrom, 1 byte, raw system calls", "µs/op"),
    "startup": ("time to first result, cold (start request to the reply of an empty cell)", "ms"),
    "pss": ("PSS of the kernel's process tree after start-up", "MiB"),
}


def micro_ops(per, blocks, files, raw=None, fresh=True):
    """One round in one kernel: `blocks` blocks of `per` operations of each kind; µs per op, the
    median block (and every block). The files are made at the first call. With `raw`
    (RAW_LOOPS_X86_64, on an x86_64 machine) the same operations are also timed in the raw loops
    ("*_raw"; "raw_error" says why not, where they cannot run or a call failed).

    With `fresh` the round runs in a child forked for it, with socketpairs and a mapping of the
    raw loops of its own: a process's own luck (where its pages fall in the caches, the CPU it
    runs on) then varies from round to round instead of biasing every round of one kernel
    (between sessions of fresh kernels of one configuration it moved a figure by up to 30%).
    Without, the socketpairs and the mapping are made once and kept in this process."""
    import json
    import os
    import socket
    import statistics
    import tempfile
    import time

    g = globals()
    st = g.get("_peer_targets_state")
    if st is None:
        paths = {}
        for key, base in (("tmp", "/tmp"), ("nb", os.getcwd())):
            d = tempfile.mkdtemp(prefix="bench-pt-", dir=base)
            paths[key] = []
            for i in range(files):
                p = os.path.join(d, f"f{i:02d}.bin")
                with open(p, "wb") as fh:
                    fh.write(os.urandom(512))
                paths[key].append(p)
        st = g["_peer_targets_state"] = {"paths": paths}

    def measure():
        if "socks" not in st:
            st["socks"] = [*socket.socketpair(), *socket.socketpair()]
        paths, (a, b, ra, rb) = st["paths"], st["socks"]
        op, rd, cl, flags, clock = os.open, os.read, os.close, os.O_RDONLY | os.O_CLOEXEC, time.perf_counter
        out = {}
        for key in ("tmp", "nb"):
            ps, n, ts = paths[key], len(paths[key]), []
            for _ in range(blocks):
                t0 = clock()
                for i in range(per):
                    fd = op(ps[i % n], flags)
                    rd(fd, 4096)
                    cl(fd)
                ts.append(clock() - t0)
            out[key] = [t / per * 1e6 for t in ts]
        send, recv, ts = a.send, b.recv, []
        for _ in range(blocks):
            t0 = clock()
            for _ in range(per):
                send(b"x")
                recv(1)
            ts.append(clock() - t0)
        out["sock"] = [t / per * 1e6 for t in ts]
        error = None
        if raw is not None and "raw" not in st:
            import ctypes
            import mmap
            import platform

            st["raw"] = None
            if platform.machine() != "x86_64":
                st["raw_error"] = f"the raw loops are x86_64 code; this is {platform.machine()}"
            else:
                try:
                    code = bytes.fromhex(raw["code"])
                    m = mmap.mmap(-1, len(code), prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
                    m.write(code)
                    base = ctypes.addressof(ctypes.c_char.from_buffer(m))
                    c_long, c_void_p = ctypes.c_long, ctypes.c_void_p
                    st["raw"] = (m, ctypes.CFUNCTYPE(c_long, c_long, c_long, c_long, c_void_p)(base + raw["sock_loop"]),
                                 ctypes.CFUNCTYPE(c_long, c_long, ctypes.c_char_p, c_void_p)(base + raw["open_loop"]),
                                 ctypes.create_string_buffer(4096))
                    rb.setblocking(False)  # a send that failed leaves nothing to receive: recvfrom then fails too
                except (OSError, ValueError) as e:
                    st["raw_error"] = f"cannot map the raw loops executable: {e}"
        if st.get("raw"):
            _, sock_loop, open_loop, buf = st["raw"]
            timed = [(key, open_loop, (os.fsencode(paths[key][0]), buf), 3) for key in ("tmp", "nb")]
            timed.append(("sock", sock_loop, (ra.fileno(), rb.fileno(), buf), 2))
            for key, fn, args, calls in timed:
                ts, failed = [], 0
                for _ in range(blocks):
                    t0 = clock()
                    failed += fn(per, *args)
                    ts.append(clock() - t0)
                if failed:
                    error = f"{key}_raw: {failed} of {calls * per * blocks} system calls failed"
                else:
                    out[f"{key}_raw"] = [t / per * 1e6 for t in ts]
        result = {k: {"best": min(v), "median": statistics.median(v), "blocks": v} for k, v in out.items()}
        if error or st.get("raw_error"):
            result["raw_error"] = error or st["raw_error"]
        return result

    if not fresh:
        return measure()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, answer on the pipe, and end without running anything of the parent's
        status = 0
        try:
            os.close(r)
            for made_here in ("socks", "raw", "raw_error"):  # (a parent that measured itself keeps its own)
                st.pop(made_here, None)
            data = json.dumps(measure()).encode()
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
            data, status = json.dumps({"error": f"{type(e).__name__}: {e}"}).encode(), 1
        try:
            while data:
                data = data[os.write(w, data):]
        finally:
            os._exit(status)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 1 << 16):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    result = json.loads(b"".join(chunks) or b'{"error": "the measuring child died"}')
    if "error" in result:
        raise RuntimeError(f"micro_ops: {result['error']}")
    return result


def paired(samples: dict, figure: str, variant: str, reference: str, kind: str) -> list[float]:
    """Per round: variant/reference ("ratio") or variant - reference ("diff"), both present."""
    a, b = samples.get(variant, {}).get(figure, []), samples.get(reference, {}).get(figure, [])
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and y > 0]
    return [x / y for x, y in pairs] if kind == "ratio" else [x - y for x, y in pairs]


def check(samples: dict) -> list[dict]:
    """Issue 21's targets (peers.PEER_TARGETS) from the rounds' samples."""
    from .peers import PEER_TARGETS

    out = []
    for tid, label, wid, variant, ref, kind, limit in PEER_TARGETS:
        figs = FIGURE_OF[wid]
        fig = next((f for f in figs if paired(samples, f, variant, ref, kind)), figs[-1])
        t = {"id": tid, "label": label, "figure": fig, "variant": variant, "reference": ref, "kind": kind,
             "limit": limit}
        values = paired(samples, fig, variant, ref, kind)
        if not values:
            why = next((f"no {v} in this run" for v in (variant, ref) if not samples.get(v, {}).get(fig)),
                       "no paired samples")
            out.append(t | {"status": "NOT RUN", "why": why, "measured": None})
            continue
        out.append(t | stats.verdict(values, limit) | {"measured": statistics.median(values), "values": values})
    return out


def _start_specs(prefix: Path, work: Path, also: dict[str, str]) -> tuple[list, list[str]]:
    from sandbox_kernel.install import kernel_argv

    from . import peers
    from .variants import Variant, variants, write_kernelspecs

    vs = [v for v in variants("cpu") if v.id in MICRO_VARIANTS]
    pvs, notes = peers.peer_variants(prefix, work)
    full = next(v for v in vs if v.id == "full")
    vs.insert(vs.index(full) + 1, Variant(
        "full_ll", "full, reads by Landlock", "the deployed kernel with SANDBOX_KERNEL_READ_VIEW=off in its kernelspec: "
        "the mount namespace shows the whole host read-only and Landlock's ruleset handles the read rights "
        "(per-operation part only)", kernel_argv(full.profile), full.profile, "#ff9896", installed=True,
        env={"SANDBOX_KERNEL_READ_VIEW": "off"}))
    vs += pvs
    for name, profile in also.items():  # diagnosis: the launcher under other profiles (per-operation part only)
        vs.append(Variant(name, name, f"the launcher under {profile} (per-operation part only)", kernel_argv(profile),
                          profile, "#000000", installed=True))
    jp = write_kernelspecs(prefix, vs)
    os.environ["JUPYTER_PATH"] = os.pathsep.join([str(jp)] + [p for p in [os.environ.get("JUPYTER_PATH")] if p])
    return vs, notes


def measure(rounds: int, start_rounds: int, per: int, blocks: int, *, prefix: Path, also: dict[str, str] | None = None,
            sessions: int = 1, progress=print) -> dict:
    """Run both parts; the samples per variant and figure, in round order (None: that round failed)."""
    from jupyter_core.paths import jupyter_runtime_dir

    from .kernels import BenchKernel, KernelError
    from .runner import kernel_env, rotated

    work = prefix / "work"
    work.mkdir(exist_ok=True)
    logs = prefix / "logs"
    logs.mkdir(exist_ok=True)
    vs, notes = _start_specs(prefix, work, also or {})
    env = kernel_env(Path(os.environ["JUPYTER_PATH"].split(os.pathsep)[0]))
    conn_dir = jupyter_runtime_dir()  # outside the peers' private /tmp, where a Jupyter server puts it
    os.makedirs(conn_dir, mode=0o700, exist_ok=True)
    ids = [v.id for v in vs]
    spec = {v.id: v.spec_name for v in vs}
    samples: dict = {v: {f: [] for f in FIGURES} for v in ids}
    medians: dict = {v: {f: [] for f in MICRO_FIGURES} for v in ids}  # each round's median block, kept
    raw_errors: dict = {}  # variant -> why its raw loops did not run (the first reason)
    errors: list[str] = []

    def kernel(vid: str, tag: str) -> BenchKernel:
        return BenchKernel(spec[vid], cwd=str(work), env=env, log_path=logs / f"{vid}-{tag}.log",
                           connection_dir=conn_dir)

    # -- part 1: per-operation figures in kernels that stay up, `sessions` times fresh ones (a process's
    # own luck, its memory layout and the CPU it lands on, is then spread over the rounds, not fixed)
    micro = [v for v in MICRO_VARIANTS if v in ids] + list(also or {})
    r = 0
    for session in range(sessions):
        live = {}
        try:
            for vid in rotated(micro, session):
                k = kernel(vid, f"micro{session}")
                k.start(120.0)
                live[vid] = k
                k.call(micro_ops, 120.0, per=max(1, per // 4), blocks=1, files=16,
                       raw=RAW_LOOPS_X86_64)  # warm-up: files, caches, the raw loops' mapping
            for _ in range(rounds // sessions + (1 if session < rounds % sessions else 0)):
                for vid in rotated(micro, r):
                    try:
                        res = live[vid].call(micro_ops, 120.0, per=per, blocks=blocks, files=16,
                                             raw=RAW_LOOPS_X86_64)
                    except KernelError as e:
                        errors.append(f"round {r + 1}, {vid}: {e}")
                        res = {}
                    if res.get("raw_error"):
                        raw_errors.setdefault(vid, res["raw_error"])
                    for f in MICRO_FIGURES:
                        samples[vid][f].append(res.get(f, {}).get("best"))
                        medians[vid][f].append(res.get(f, {}).get("median"))
                r += 1
                progress(f"per-operation round {r}/{rounds} (session {session + 1}/{sessions})")
        finally:
            for k in live.values():
                k.shutdown()
    # -- part 2: cold starts
    starts = [v for v in START_VARIANTS if v in ids]
    for r in range(start_rounds):
        for vid in rotated(starts, r):
            k = kernel(vid, f"start{r}")
            ttfr = pss = None
            try:
                ttfr = k.start(120.0)
                pss = k.pss_mib()
            except KernelError as e:
                errors.append(f"start round {r + 1}, {vid}: {e}")
            finally:
                k.shutdown()
            samples[vid]["startup"].append(ttfr)
            samples[vid]["pss"].append(pss)
            time.sleep(0.2)  # the previous kernel's exit work off the CPU
        progress(f"start round {r + 1}/{start_rounds}")
    notes += [f"{vid}: no raw-loop figures ({why})" for vid, why in raw_errors.items()]
    return {"variants": [v.to_dict() for v in vs], "samples": samples, "block_medians": medians, "errors": errors,
            "notes": notes}


def _cell(values: list, unit: str) -> str:
    vals = [v for v in values if v is not None]
    if not vals:
        return "–"
    digits = 3 if unit == "µs/op" else 1
    return f"{statistics.median(vals):.{digits}f}"


def _ci(values: list[float], kind: str) -> str:
    if not values:
        return "–"
    ci = stats.median_ci(values)
    m = statistics.median(values)
    if kind == "ratio":
        return f"x{m:.3f}" + (f" [{ci['lo']:.3f}–{ci['hi']:.3f}]" if ci else "")
    return f"{m:+.3f}" + (f" [{ci['lo']:+.3f} … {ci['hi']:+.3f}]" if ci else "")


def markdown(result: dict) -> str:
    samples, ids = result["samples"], [v["id"] for v in result["variants"]]
    c = result["config"]
    also = list(c.get("also") or {})
    lines = ["# Issue 21's targets against the peers (`benchmarks peer-targets`)", "",
             f"{result['started']}, {result['duration_s'] / 60:.1f} min; `{result['command']}`; code "
             f"{result['versions'].get('git', '?')}; machine: {result['machine'].get('cpus')} CPUs "
             f"{result['machine'].get('cpu_model')}, Linux {result['machine'].get('kernel')}, Landlock ABI "
             f"{result['machine'].get('landlock_abi')}, cgroup {result['machine'].get('cgroup')}, as "
             f"{result['machine'].get('user')}. Load average (1 min) {result['load']['start'][0]:.2f} at the start, "
             f"{result['load']['end'][0]:.2f} at the end (one kernel busy counts 1).", "",
             f"Per operation: {c['rounds']} rounds in kernels that stay up ({c.get('sessions', 1)} sessions of fresh "
             f"kernels), each round {c['blocks']} blocks of "
             f"{c['per']} operations of each kind per kernel (the round's figure: its best block). Cold starts: "
             f"{c['start_rounds']} rounds of one start per variant. The order of the variants rotates per round; "
             "the pairs are the rounds. PASS/MISS only when the whole 95% interval (distribution-free, order "
             "statistics) lies on one side of the target.", "", "## Targets", ""]
    for t in result["targets"]:
        unit = FIGURES[t["figure"]][1]
        if t.get("measured") is None:
            lines.append(f"- **{t['status']}** {t['label']} ({t.get('why', '')})")
            continue
        extra = f" ({t['why']}" + (f"; ≈ {t['reps_needed']} rounds would resolve it" if t.get("reps_needed") else "") \
            + ")" if t.get("why") else ""
        lines.append(f"- **{t['status']}** {t['label']}: {t['variant']} vs {t['reference']} "
                     f"{_ci(t['values'], t['kind'])}{'' if t['kind'] == 'ratio' else ' ' + unit}"
                     f" ({t['n']} rounds){extra}")
    lines += ["", "## Figures", "", "Median per variant; then paired per round, median [95% interval].", "",
              "| figure | unit | " + " | ".join(ids) + " | full / plain | full / bwrap | full / firejail | "
              "full − floor | full − full_ll |" + "".join(f" full − {a} |" for a in also),
              "|---|---|" + "---:|" * (len(ids) + 5 + len(also))]
    for f, (label, unit) in FIGURES.items():
        row = [_cell(samples[v][f], unit) for v in ids]
        pairs = [_ci(paired(samples, f, "full", ref, "ratio"), "ratio") for ref in ("plain", "bwrap", "firejail")]
        pairs += [_ci(paired(samples, f, "full", ref, "diff"), "diff") for ref in ("floor", "full_ll", *also)]
        lines.append(f"| {label} | {unit} | " + " | ".join(row) + " | " + " | ".join(pairs) + " |")
    lines += ["", "## Variants", ""] + [f"- **{v['id']}**: {v['description']}" for v in result["variants"]]
    if result.get("notes"):
        lines += [""] + [f"- {n}" for n in result["notes"]]
    if result.get("errors"):
        lines += ["", "## Errors", ""] + [f"- {e}" for e in result["errors"]]
    return "\n".join(lines) + "\n"


def main(rounds: int, start_rounds: int, per: int, blocks: int, out: Path | None, also: list[str] | None = None,
         sessions: int = 1) -> int:
    from . import machine as machine_info

    if rounds < 1 or start_rounds < 0 or per < 1 or blocks < 1 or not 1 <= sessions <= rounds:
        print("benchmarks peer-targets: --rounds, --per and --blocks must be 1 or more, --start-rounds 0 or more, "
              "--sessions from 1 to --rounds", file=sys.stderr)
        return 2
    extra = {}
    for item in also or []:
        name, sep, profile = item.partition("=")
        if not sep or not name.isidentifier() or name in MICRO_VARIANTS or not profile:
            print(f"benchmarks peer-targets: --also {item!r}: expected NAME=PROFILE (a profile name or YAML file; NAME "
                  f"a word other than {', '.join(MICRO_VARIANTS)})", file=sys.stderr)
            return 2
        extra[name] = profile
    prefix = Path(tempfile.mkdtemp(prefix="sandbox-kernel-peer-targets-", dir="/var/tmp"))
    os.chmod(prefix, 0o755)
    torch_info = machine_info.probe_torch()
    started, t0, load0 = datetime.now(UTC), time.monotonic(), os.getloadavg()
    result = measure(rounds, start_rounds, per, blocks, prefix=prefix, also=extra, sessions=sessions,
                     progress=lambda s: print(s, file=sys.stderr, flush=True))
    duration = time.monotonic() - t0
    result |= {
        "started": started.isoformat(timespec="seconds"), "duration_s": duration,
        "command": "python -m benchmarks peer-targets " + " ".join(sys.argv[2:]) if len(sys.argv) > 1 else "",
        "config": {"rounds": rounds, "start_rounds": start_rounds, "per": per, "blocks": blocks, "also": extra,
                   "sessions": sessions},
        "machine": machine_info.machine(torch_info), "versions": machine_info.versions(torch_info),
        "load": {"start": load0, "end": os.getloadavg()},
    }
    result["targets"] = check(result["samples"])
    md = markdown(result)
    print(md)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "peer-targets.json").write_text(json.dumps(result, indent=1, default=str))
        (out / "peer-targets.md").write_text(md)
        print(f"wrote {out / 'peer-targets.md'} and peer-targets.json", file=sys.stderr)
    return 1 if result["errors"] else 0
