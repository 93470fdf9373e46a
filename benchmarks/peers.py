"""The peers: bubblewrap and firejail around the same ipykernel (``benchmarks run --peers``).

A platform engineer who does not use sandbox-kernel would wrap ``python -m
ipykernel_launcher`` in one of these in the kernelspec. Each is configured as a careful
engineer would, and as issue 21 states:

- ``bwrap`` (bubblewrap): ``--ro-bind / /`` (the host read-only), ``--dev /dev``,
  ``--proc /proc``, a private ``/tmp`` (``--tmpfs /tmp``), the notebook directory
  bound writable, PID, IPC and UTS namespaces, every capability dropped
  (``--cap-drop ALL``), ``--die-with-parent``, ``--new-session`` and a Docker-like
  seccomp denylist (``--seccomp FD``: the system calls Docker's default profile
  refuses, compiled to BPF with libseccomp when the kernelspecs are written; bwrap
  reads it from a descriptor, so the kernelspec runs ``/bin/sh -c 'exec bwrap ...
  9<FILE'``: one dash start, ~1 ms, counted in its start-up). The network is shared
  (the kernel's ZMQ ports must be reachable), as in any kernelspec wrapper.
  ``JPY_PARENT_PID`` is unset: in a PID namespace Jupyter's pid is not visible and
  ipykernel's parent poller would shut the kernel down at once (``--die-with-parent``
  ends the sandbox with Jupyter instead; sandbox-kernel's supervisor does the same).
- ``firejail``: ``--noprofile --seccomp --caps.drop=all --private-tmp --quiet
  --rmenv=JPY_PARENT_PID``:
  firejail's default seccomp list, no capabilities, a private ``/tmp`` (firejail
  also gives the sandbox its own PID namespace).

Neither has a Landlock ruleset, a cgroup, rlimits, network or exec rules or an import
guard: the probe cell (``cells.enforcement``) reads, from inside each kernel, what each
variant really enforces, and the report prints it beside the figures.
"""

from __future__ import annotations

import errno
import os
import shlex
import shutil
import sys
from pathlib import Path

from .variants import Variant

PEER_IDS = ("bwrap", "firejail")

# Docker's default seccomp profile is an allowlist; these are the system calls it leaves out
# (docs.docker.com, "Significant syscalls blocked by the default profile"), refused with EPERM.
DOCKER_DENIED = (
    "acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module", "delete_module",
    "finit_module", "get_kernel_syms", "get_mempolicy", "init_module", "ioperm", "iopl", "kcmp",
    "kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mbind", "mount", "move_pages",
    "name_to_handle_at", "nfsservctl", "open_by_handle_at", "perf_event_open", "pivot_root",
    "process_vm_readv", "process_vm_writev", "ptrace", "query_module", "quotactl", "reboot",
    "request_key", "set_mempolicy", "setns", "settimeofday", "stime", "swapon", "swapoff", "sysfs",
    "_sysctl", "umount", "umount2", "unshare", "uselib", "userfaultfd", "ustat", "vm86", "vm86old",
    "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree",
)
# clone() with a namespace flag (Docker allows clone only with none of these), clone3 ENOSYS
# (Docker's answer: it cannot inspect clone3's flags, and glibc falls back to clone).
CLONE_NS_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)


def docker_like_filter():
    """The libseccomp filter bubblewrap's variant loads: allow by default, Docker's denials."""
    from sandbox_kernel import libseccomp as sc

    f = sc.Filter(sc.ALLOW)
    f.set_attr(sc.ATTR_ACT_BADARCH, sc.KILL_PROCESS)
    for name in DOCKER_DENIED:
        if sc.resolve(name) is not None:
            f.add_rule(sc.ERRNO(errno.EPERM), name)
    for flag in CLONE_NS_FLAGS:
        f.add_rule(sc.ERRNO(errno.EPERM), "clone", (0, sc.MASKED_EQ, flag, flag))
    if sc.resolve("clone3") is not None:
        f.add_rule(sc.ERRNO(errno.ENOSYS), "clone3")
    return f


def write_docker_like_bpf(path: Path) -> Path:
    f = docker_like_filter()
    try:
        path.write_bytes(f.export_bpf())
    finally:
        f.release()
    return path


def env_under_tmp() -> list[str]:
    """The Python environment's directories (and this checkout) that lie under /tmp, which a
    peer's private /tmp would hide (a clone in /tmp, as a new user makes)."""
    here = Path(__file__).resolve().parent.parent
    dirs = {os.path.realpath(d) for d in (sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable)),
                                          str(here))}
    under = sorted(d for d in dirs if d == "/tmp" or d.startswith("/tmp/"))
    return [d for d in under if not any(d.startswith(o + "/") for o in under)]


def bwrap_argv(bwrap: str, bpf: Path, notebook_dir: Path, kernel: list[str]) -> list[str]:
    nb = shlex.quote(str(notebook_dir))
    back = "".join(f"--ro-bind {shlex.quote(d)} {shlex.quote(d)} " for d in env_under_tmp())
    script = (f"exec {shlex.quote(bwrap)} --ro-bind / / --dev /dev --proc /proc --tmpfs /tmp {back}"
              f"--bind {nb} {nb} --chdir {nb} --unshare-pid --unshare-ipc --unshare-uts --cap-drop ALL "
              f"--die-with-parent --new-session --unsetenv JPY_PARENT_PID --seccomp 9 \"$@\" 9<{shlex.quote(str(bpf))}")
    return ["/bin/sh", "-c", script, "bwrap-kernel", *kernel]


def firejail_argv(firejail: str, kernel: list[str]) -> list[str]:
    return [firejail, "--quiet", "--noprofile", "--seccomp", "--caps.drop=all", "--private-tmp",
            "--rmenv=JPY_PARENT_PID", *kernel]


def peer_variants(state_dir: Path, notebook_dir: Path) -> tuple[list[Variant], list[str]]:
    """The peers installed on this machine, and a note for each one that is not."""
    kernel = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    out, missing = [], []
    bwrap = shutil.which("bwrap")
    if bwrap:
        bpf = write_docker_like_bpf(state_dir / "docker-like-seccomp.bpf")
        out.append(Variant(
            "bwrap", "bubblewrap", "peer: plain ipykernel under bubblewrap: --ro-bind / /, --dev /dev, --proc /proc, "
            "private /tmp (--tmpfs), the notebook dir bound writable, --unshare-pid/ipc/uts, --cap-drop ALL, "
            "--die-with-parent, --new-session, --unsetenv JPY_PARENT_PID, a Docker-like seccomp denylist (--seccomp; started through /bin/sh "
            "to open the BPF file on fd 9)",
            bwrap_argv(bwrap, bpf, notebook_dir, kernel), None, "#2ca02c"))
    else:
        missing.append("bubblewrap (bwrap) is not installed: `apt-get install -y bubblewrap` adds the bwrap variant")
    firejail = shutil.which("firejail")
    if firejail and env_under_tmp():
        missing.append(f"firejail left out: its --private-tmp hides this environment under /tmp "
                       f"({', '.join(env_under_tmp())}); run from a checkout outside /tmp")
    elif firejail:
        out.append(Variant(
            "firejail", "firejail", "peer: plain ipykernel under firejail --noprofile --seccomp (its default list) "
            "--caps.drop=all --private-tmp --rmenv=JPY_PARENT_PID (in its PID namespace Jupyter's pid is not visible)",
            firejail_argv(firejail, kernel), None, "#8c564b"))
    else:
        missing.append("firejail is not installed: `apt-get install -y firejail` adds the firejail variant")
    return out, missing


# --------------------------------------------------------------------------- what each kernel enforces


def host_identity(marker: Path, listen_port: int | None) -> dict:
    """What the probe cell compares against: the harness's namespaces and cgroup, a file it
    left in /tmp, and a TCP port it listens on (127.0.0.1)."""
    ns = {}
    for kind in ("pid", "ipc", "uts", "mnt", "net", "user", "cgroup"):
        try:
            ns[kind] = os.readlink(f"/proc/self/ns/{kind}")
        except OSError:
            ns[kind] = None
    try:
        cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        cgroup = None
    return {"ns": ns, "cgroup": cgroup, "tmp_marker": str(marker), "port": listen_port}


# Rows of the enforcement table: (key, label). The values come from cells.enforcement().
ENFORCEMENT_ROWS = (
    ("host_write", "write a new file under /usr"),
    ("tmp_private", "/tmp private (the harness's file in /tmp not visible)"),
    ("notebook_write", "write in the notebook dir"),
    ("pid_ns", "own PID namespace"),
    ("ipc_ns", "own IPC namespace"),
    ("uts_ns", "own UTS namespace"),
    ("mnt_ns", "own mount namespace"),
    ("net_ns", "own network namespace"),
    ("cgroup", "own cgroup"),
    ("caps", "effective capabilities"),
    ("no_new_privs", "no_new_privs"),
    ("seccomp", "seccomp filters"),
    ("userns", "unshare(CLONE_NEWUSER) in a child"),
    ("mount", "mount a tmpfs in a child's new mount namespace"),
    ("connect", "TCP connect to a host port (127.0.0.1)"),
    ("exec", "run /bin/true"),
    ("rlimit_nproc", "RLIMIT_NPROC"),
    ("rlimit_as", "RLIMIT_AS"),
    ("landlock", "Landlock (SANDBOX_KERNEL_LAYERS)"),
    ("import_guard", "import guard"),
)


def enforcement_table(variants: list[dict], probes: dict) -> list[str]:
    """Markdown: one row per probe, one column per variant that was probed."""
    cols = [v for v in variants if probes.get(v["id"])]
    if not cols:
        return []
    lines = ["| read inside the kernel | " + " | ".join(v["id"] for v in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for key, label in ENFORCEMENT_ROWS:
        lines.append(f"| {label} | " + " | ".join(str(probes[v["id"]].get(key, "?")) for v in cols) + " |")
    return lines


# --------------------------------------------------------------------------- targets and report

# Issue 21's targets: (id, label, workload, variant, reference, kind, limit). "ratio": the median
# paired cost ratio variant/reference at most `limit`; "diff": the median paired difference
# (variant - reference, in the workload's unit) at most `limit`.
PEER_TARGETS = (
    ("tmp_read_vs_bwrap", "open+read+close in /tmp: at most x1.03 of bubblewrap's", "syscall_tmp_read", "full",
     "bwrap", "ratio", 1.03),
    ("nb_read_vs_bwrap", "open+read+close in the notebook dir: at most x1.03 of bubblewrap's", "syscall_read",
     "full", "bwrap", "ratio", 1.03),
    ("sock_vs_floor", "sendto+recvfrom (socketpair): at most +50 ns over an allow-all filter", "syscall_sock", "full",
     "floor", "diff", 0.050),
    ("startup_vs_plain", "time to first result, cold: at most +25 ms over plain ipykernel", "startup", "full", "plain",
     "diff", 25.0),
    ("pss_vs_bwrap", "PSS per kernel: no more than bubblewrap's", "pss_start", "full", "bwrap", "ratio", 1.0),
)


def paired(results: dict, w: dict, variant: str, reference: str, kind: str) -> list[float]:
    """Paired per repetition: cost ratios (variant/reference) or differences (variant - reference;
    for throughput figures reference - variant, so that > 0 is always worse)."""
    from .stats import _cost_ratio, session_figures

    a, b = session_figures(results, variant, w), session_figures(results, reference, w)
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None and x > 0 and y > 0]
    if kind == "ratio":
        return [_cost_ratio(x, y, w["better"]) for x, y in pairs]
    return [(x - y) if w["better"] == "lower" else (y - x) for x, y in pairs]


def check_peer_targets(results: dict) -> list[dict]:
    from .stats import verdict

    ids = {v["id"] for v in results["variants"]}
    wl = {w["id"]: w for w in results["workloads"]}
    out = []
    for tid, label, wid, variant, ref, kind, limit in PEER_TARGETS:
        t = {"id": tid, "label": label, "workload": wid, "variant": variant, "reference": ref, "kind": kind,
             "limit": limit}
        if wid not in wl or variant not in ids or ref not in ids:
            out.append(t | {"status": "NOT RUN", "why": f"no {ref if ref not in ids else wid} in this run"})
            continue
        values = paired(results, wl[wid], variant, ref, kind)
        if not values:
            out.append(t | {"status": "MISS", "why": "no paired samples", "measured": None})
            continue
        v = verdict(values, limit)
        out.append(t | v | {"measured": statistics_median(values), "values": values})
    return out


def statistics_median(xs: list[float]) -> float:
    import statistics

    return statistics.median(xs)


def _fmt_ci(kind: str, t: dict, unit: str) -> str:
    if t.get("measured") is None:
        return "–"
    if kind == "ratio":
        s = f"x{t['measured']:.3f}"
        ci = f" [{t['ci'][0]:.3f}–{t['ci'][1]:.3f}]" if t.get("ci") else ""
    else:
        s = f"{t['measured']:+.3f} {unit}"
        ci = f" [{t['ci'][0]:+.3f} … {t['ci'][1]:+.3f}]" if t.get("ci") else ""
    return s + ci


# The rows of the comparison table, in the order issue 21 lists them.
PEER_ROWS = ("startup", "syscall_tmp_read", "syscall_read", "syscall_sock", "syscall_getpid", "syscall_stat", "rtt",
             "pss_start", "rss_start")


def peer_section(results: dict) -> list[str]:
    """report.md: the peers' targets, the paired comparison table and what each variant enforces."""
    from .stats import median_ci

    ids = [v["id"] for v in results["variants"]]
    peers_here = [p for p in PEER_IDS if p in ids]
    if not results.get("config", {}).get("peers"):
        return []
    wl = {w["id"]: w for w in results["workloads"]}
    lines = ["## Against the peers (bubblewrap, firejail)", ""]
    if not peers_here:
        lines += ["No peer is installed on this machine (see Notes); `apt-get install -y bubblewrap firejail`.", ""]
    lines += ["Targets of issue 21 for the deployed kernel (**full**), paired per repetition; PASS/MISS only when "
              "the whole interval is on one side of the target.", ""]
    for t in results.get("peer_targets", []):
        unit = wl.get(t["workload"], {}).get("unit", "")
        extra = f" ({t['why']})" if t.get("why") else ""
        if t["status"] == "UNRESOLVED" and t.get("reps_needed"):
            extra += f" (≈ {t['reps_needed']} repetitions would resolve it)"
        lines.append(f"- **{t['status']}** {t['label']}: {t['variant']} vs {t['reference']} "
                     f"{_fmt_ci(t['kind'], t, unit)}{extra}")
    lines += ["", "Median paired cost ratio [95% CI] (time or memory; > 1 = slower or more memory):", ""]
    pairs = [(v, "plain") for v in ids if v != "plain"] + [("full", p) for p in peers_here]
    pairs = [(a, b) for a, b in pairs if a in ids and b in ids]
    lines.append("| figure | unit | plain (median) | " + " | ".join(f"{a} / {b}" for a, b in pairs) + " |")
    lines.append("|---|---|---:|" + "---:|" * len(pairs))
    s = results.get("summary", {})
    for wid in PEER_ROWS:
        w = wl.get(wid)
        if not w:
            continue
        base = s.get(wid, {}).get("plain", {}).get("median")
        cells = []
        for a, b in pairs:
            vals = paired(results, w, a, b, "ratio")
            if not vals:
                cells.append("–")
                continue
            ci = median_ci(vals)
            cells.append(f"x{statistics_median(vals):.3f}" + (f" [{ci['lo']:.3f}–{ci['hi']:.3f}]" if ci else ""))
        shown = "–" if base is None else f"{base:.{w['digits']}f}"
        lines.append(f"| {w['label']} | {w['unit']} | {shown} | "
                     + " | ".join(cells) + " |")
    from .burst import section as burst_section

    lines += [""] + burst_section(results)
    probes = {v["id"]: (v.get("environment") or {}).get("enforcement") for v in results["variants"]}
    table = enforcement_table(results["variants"], probes)
    if table:
        lines += ["", "What each variant enforces, read inside one of its kernels (`cells.enforcement`):", ""] + table
    return lines + [""]
