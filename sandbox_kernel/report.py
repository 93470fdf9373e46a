"""What a policy says and what is in force, as rows: shared by `profiles show`,
`doctor` and the `%sandbox` magic, so the three never disagree.

Every rule is marked hard (enforced by the OS kernel: seccomp, Landlock, rlimits,
cgroups, capabilities, no_new_privs) or soft (in-process Python code that hostile
code can remove: the import guard, the pre-execution check, environment
variables, torch's allocator cap, the audit log).
"""

from __future__ import annotations


from .layers import accelerators
from .layers.base import HARDNESS, Status
from .policy import Policy, parse_size

Row = tuple[str, str, str, str]  # (rule, value, hard|soft, enforced by)


def _fmt_size(v) -> str:
    n = parse_size(v)
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        k = 1024 ** ("KMGT".index(unit[0]) + 1)
        if n >= k and n % k == 0:
            return f"{n // k} {unit}"
    return f"{n} bytes"


def policy_rows(policy: Policy) -> list[Row]:
    d = policy.data
    rows: list[Row] = []
    deny = policy.deny_rules()
    by_cat: dict[str, list[str]] = {}
    for r in deny:
        by_cat.setdefault(r["category"], []).append(r["module"])
    for cat, mods in sorted(by_cat.items()):
        rows.append((f"imports.deny ({cat})", ", ".join(mods), "soft", "import guard + pre-execution check"))
    if d["imports"]["allow"]:
        rows.append(("imports.allow", ", ".join(d["imports"]["allow"]), "soft", "import guard"))
    pats = [r["pattern"] for r in policy.shell_rules()]
    if pats:
        rows.append(("shell.deny", ", ".join(pats), "soft", "pre-execution check"))
    net = d["network"]
    mode_text = {"none": "no sockets but UNIX", "restricted": "TCP connect to listed ports only",
                 "full": "unrestricted (raw, packet, vsock, XDP and PF_KEY sockets denied)"}[net["mode"]]
    rows.append(("network.mode", f"{net['mode']}: {mode_text}", "hard", "seccomp (families) + Landlock (TCP ports)"))
    if net["mode"] != "full":
        rows.append(("implicit connects", "TCP Fast Open, MPTCP and SCTP refused (Landlock does not see them)",
                     "hard", "seccomp"))
    if net["mode"] == "restricted":
        rows.append(("network.tcp_connect_ports", ", ".join(map(str, net["tcp_connect_ports"])) or "(none)",
                     "hard", "Landlock ABI 4+"))
        rows.append(("network.udp", "allowed (any host/port)" if net["udp"] else "denied (DNS over TCP)", "hard", "seccomp"))
    rows.append(("exec.allow", ", ".join(d["exec"]["allow"]), "hard", "Landlock"))
    rows.append(("filesystem.writable", ", ".join(d["filesystem"]["writable"]), "hard", "Landlock"))
    rows.append(("filesystem.protected", "kernelspecs, profiles, sandbox_kernel package, guard hook, "
                 + ", ".join(d["filesystem"]["protected"]), "hard", "Landlock"))
    gpu, tpu = d["accelerators"]["gpu"], d["accelerators"]["tpu"]
    if gpu["enabled"]:
        devs = gpu.get("devices")
        rows.append(("accelerators.gpu", "enabled: " + ("every GPU present" if devs is None else
                     ", ".join(str(x if not isinstance(x, dict) else x["mig"]) for x in devs) or "no device"),
                     "hard", f"Landlock on {gpu['device_pattern']} + shared nodes"))
        rows.append(("CUDA_VISIBLE_DEVICES", "the allowed devices, in order", "soft", "environment"))
        if gpu.get("memory_fraction"):
            rows.append(("accelerators.gpu.memory_fraction", str(gpu["memory_fraction"]), "soft",
                         "torch caching allocator (set_per_process_memory_fraction)"))
        if gpu.get("mps_memory_limit"):
            rows.append(("accelerators.gpu.mps_memory_limit", gpu["mps_memory_limit"], "soft",
                         "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT (the MPS daemon's own limit is the hard one)"))
    else:
        rows.append(("accelerators.gpu", "disabled: no NVIDIA device node opens", "hard", "Landlock"))
        rows.append(("CUDA_VISIBLE_DEVICES", "empty", "soft", "environment"))
    if tpu["enabled"]:
        chips = tpu.get("chips")
        rows.append(("accelerators.tpu", "enabled: " + ("every chip present" if chips is None else
                     ", ".join(map(str, chips))), "hard", f"Landlock on {tpu['device_pattern']}, {tpu['vfio_pattern']}"))
    else:
        rows.append(("accelerators.tpu", "disabled: no /dev/accel* or /dev/vfio node opens", "hard", "Landlock"))
        rows.append(("libtpu import, JAX_PLATFORMS=cpu", "refused / set", "soft", "import guard, environment"))
    lim = d["limits"]
    labels = {"memory": ("RLIMIT_DATA + cgroup memory", _fmt_size), "address_space": ("RLIMIT_AS", _fmt_size),
              "processes": ("cgroup pids.max (RLIMIT_NPROC for non-root)", str),
              "open_files": ("RLIMIT_NOFILE", str), "file_size": ("RLIMIT_FSIZE", _fmt_size),
              "cpu_seconds": ("RLIMIT_CPU", str)}
    for key, (how, fmt) in labels.items():
        if lim.get(key) is not None:
            rows.append((f"limits.{key}", fmt(lim[key]), "hard", how))
    rows.append(("core dumps", "off", "hard", "RLIMIT_CORE"))
    rows.append(("always denied syscalls", "module loading, mount, ptrace, bpf, perf, keyring, namespaces, "
                 "io_uring, clock setting, ...", "hard", "seccomp"))
    rows.append(("programs in memory", "memfd_create only with MFD_NOEXEC_SEAL (never MFD_EXEC, MFD_HUGETLB), "
                 "no execveat(AT_EMPTY_PATH)", "hard", "seccomp"))
    rows.append(("audit.log", d["audit"]["log"] or "(none)", "soft", "in-process writer"))
    for layer, level in d["enforcement"].items():
        if level != "required":
            rows.append((f"enforcement.{layer}", level, HARDNESS.get(layer, "hard"), "profile"))
    return rows


def layer_rows(status: Status | None) -> list[Row]:
    if status is None or not status.layers:
        return [("(no layers)", "this process was not started by the sandbox launcher", "-", "-")]
    return [(name, f"{info['state']}: {info['detail']}", "hard" if info.get("hard") else "soft", "")
            for name, info in status.layers.items()]


def device_rows(policy: Policy) -> list[tuple[str, str]]:
    """Accelerator nodes present on this machine and whether the profile allows them."""
    return [(node, "allowed" if ok else "denied") for node, ok in accelerators.node_verdicts(policy)]
