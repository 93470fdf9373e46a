"""What a policy says and what is in force, as rows: shared by `profiles show`,
`doctor` and the `%sandbox` magic, so the three never disagree.

Every rule is marked hard (enforced by the OS kernel: seccomp, Landlock, rlimits,
cgroups, capabilities, no_new_privs) or soft (in-process Python code that hostile
code can remove: the import guard, the pre-execution check, environment
variables, torch's allocator cap, the audit log).
"""

from __future__ import annotations

import os

from . import accelerators
from .layers.registry import HARDNESS
from .layers.status import Status
from .policy_facts import KEYS
from .resolved import Policy, parse_size

Row = tuple[str, str, str, str]  # (rule, value, hard|soft, enforced by)


def _fmt_size(v) -> str:
    n = parse_size(v)
    for unit in ("TiB", "GiB", "MiB", "KiB"):
        k = 1024 ** ("KMGT".index(unit[0]) + 1)
        if n >= k and n % k == 0:
            return f"{n // k} {unit}"
    return f"{n} bytes"


def _device_list(devs: list | None, noun: str, key: str) -> str:
    """`enabled: GPU 0 (devices: [0])`, never a bare `enabled: 0` that reads like "disabled"."""
    if devs is None:
        return f"enabled: every {noun} present ({key} not set)"
    if not devs:
        return f"enabled, but no {noun} is allowed ({key}: [])"
    names = []
    for d in devs:
        if isinstance(d, dict):
            names.append(f"{d['mig']} (GPU {d['gpu']}, GPU instance {d['gpu_instance']}, "
                         f"compute instance {d['compute_instance']})")
        else:
            names.append(f"{noun} {d}" if isinstance(d, int) else str(d))
    raw = f" ({key}: [{', '.join(map(str, devs))}])" if all(isinstance(d, int) for d in devs) else ""
    return "enabled: " + ", ".join(names) + raw


def _placeholder_meaning(entry: str) -> str:
    """What {python} and {system} grant here, spelled out (the looser one says so)."""
    from .layers import python_files
    from .layers.system_dirs import SYSTEM_EXEC_DIRS

    if entry == "{system}":
        dirs = [x for x in SYSTEM_EXEC_DIRS if os.path.exists(x)]
        return "these directories whole, every program in them (shells, compilers, curl, git): " + ", ".join(dirs)
    env_bin = python_files.environment_bin()
    files = [p for p in python_files.python_paths() if p != env_bin]
    text = "the interpreter, not its directory: " + ", ".join(files) + " (files)"
    if env_bin:
        text += f"; the environment's own {env_bin} (its interpreter links and console scripts)"
    return text


def _hardness(key: str) -> str:
    """hard where a layer that enforces the key (or a key of the section) is hard, else soft: from the
    schema's x-layers (policy_facts) and the layers' HARDNESS."""
    layers = [name for k, f in KEYS.items() if k == key or k.startswith(key + ".") for name in f["layers"]]
    if not layers:
        raise KeyError(f"{key}: no such profile key, or no layer enforces it (profiles/schema.json x-layers)")
    return "hard" if any(HARDNESS.get(name, "hard") == "hard" for name in layers) else "soft"


def _file_rules_by(policy: Policy) -> str:
    """Where Landlock enforces the file rules beside the mounts (layers.landlock.files_handled): always
    for the profiles that get no read view (accelerators, a subordinate host uid, read-everywhere),
    else as a second line only where filesystem.landlock_with_view asks, and without a mount namespace."""
    d = policy.data
    no_view = (policy.gpu["enabled"] or policy.tpu["enabled"] or "/" in d["filesystem"]["readable"]
               or d.get("user_namespace", {}).get("host_uid", "same") == "subordinate")
    if no_view or d["filesystem"].get("landlock_with_view"):
        return " + Landlock"
    return "; Landlock where there is no mount namespace"


def policy_rows(policy: Policy) -> list[Row]:
    d = policy.data
    rows: list[Row] = []
    deny = policy.deny_rules()
    by_cat: dict[str, list[str]] = {}
    for r in deny:
        by_cat.setdefault(r["category"], []).append(r["module"])
    for cat, mods in sorted(by_cat.items()):
        rows.append((f"imports.deny ({cat})", ", ".join(mods),
                     _hardness("imports.deny"), "import guard + pre-execution check"))
    if d["imports"]["allow"]:
        rows.append(("imports.allow", ", ".join(d["imports"]["allow"]), _hardness("imports.allow"), "import guard"))
    pats = [r["pattern"] for r in policy.shell_rules()]
    if pats:
        rows.append(("shell.deny", ", ".join(pats), _hardness("shell.deny"), "pre-execution check"))
    net = d["network"]
    mode_text = {"none": "no sockets but UNIX", "restricted": "TCP connect to listed ports only",
                 "full": "unrestricted (raw, packet, vsock, XDP and PF_KEY sockets denied)"}[net["mode"]]
    rows.append(("network.mode", f"{net['mode']}: {mode_text}",
                 _hardness("network.mode"), "seccomp (families) + Landlock (TCP ports)"))
    if net["mode"] != "full":
        rows.append(("implicit connects", "TCP Fast Open, MPTCP and SCTP refused (Landlock does not see them)",
                     "hard", "seccomp"))
    if net["mode"] == "restricted":
        rows.append(("network.tcp_connect_ports", ", ".join(map(str, net["tcp_connect_ports"])) or "(none)",
                     _hardness("network.tcp_connect_ports"), "Landlock ABI 4+"))
        rows.append(("network.udp", "allowed (any host/port)" if net["udp"] else "denied (DNS over TCP)",
                     _hardness("network.udp"), "seccomp"))
    if net["mode"] != "none":
        listen = net.get("listen_ports", [])
        rows.append(("network.listen_ports", "any port" if listen == "any" else
                     ", ".join(map(str, listen)) or "(none: no server on an IP socket; UNIX sockets may listen)",
                     _hardness("network.listen_ports"), "supervisor (seccomp user notification) + Landlock (bind)"))
    files = _file_rules_by(policy)
    rows.append(("exec.allow", ", ".join(d["exec"]["allow"]), _hardness("exec.allow"),
                 "noexec program dirs (mount namespace)" + files))
    for entry in ("{python}", "{system}"):
        if entry in d["exec"]["allow"]:
            rows.append((f"exec.allow {entry}", _placeholder_meaning(entry), _hardness("exec.allow"),
                         "noexec program dirs (mount namespace)" + files))
    rows.append(("filesystem.writable", ", ".join(d["filesystem"]["writable"]),
                 _hardness("filesystem.writable"), "read-only mounts of the rest (mount namespace)" + files))
    readable = d["filesystem"]["readable"]
    rows.append(("filesystem.readable", ("/ (read-everywhere: an explicit, looser setting)" if "/" in readable else
                                         ", ".join(readable) + "; nothing else on the host (root tenants included)"),
                 _hardness("filesystem.readable"), "Landlock" if "/" in readable else
                 "mount namespace (a root holding only these; Landlock where there is none, and for GPU and "
                 "subordinate profiles)"))
    rows.append(("filesystem.protected", "kernelspecs, profiles, sandbox_kernel package, guard hook, "
                 + ", ".join(d["filesystem"]["protected"]), _hardness("filesystem.protected"),
                 "read-only bind mounts (mount namespace)" + files))
    fs = d["filesystem"]
    rows.append(("filesystem.landlock_with_view",
                 "on: Landlock's write, exec and device rules also where the read view holds them (a second line, "
                 "~0.1-0.3 µs per file open)" if fs.get("landlock_with_view") else
                 "off: where the read view holds the file rules, Landlock keeps TCP rules and scopes only",
                 _hardness("filesystem.landlock_with_view"), "Landlock"))
    rows.append(("filesystem.noexec_writable",
                 "on: writable dirs mounted noexec,nosuid,nodev (nothing written there runs or loads)"
                 if fs["noexec_writable"] else
                 "off: ld.so and dlopen may load files written to writable dirs (execve still needs exec.allow)",
                 _hardness("filesystem.noexec_writable"), "mount namespace"))
    rows.append(("filesystem.tmp_size", f"{_fmt_size(fs['tmp_size'])} private /tmp",
                 _hardness("filesystem.tmp_size"), "tmpfs in the mount namespace"))
    rows.append(("filesystem.shm_size", f"{_fmt_size(fs['shm_size'])} private /dev/shm",
                 _hardness("filesystem.shm_size"),
                 "tmpfs in the mount namespace"))
    rows.append(("filesystem.home", fs["home"] or "$HOME", _hardness("filesystem.home"),
                 "bind mount over $HOME (mount namespace)" if fs["home"] else "-"))
    if fs["hidden"]:
        rows.append(("filesystem.hidden", ", ".join(fs["hidden"]), _hardness("filesystem.hidden"),
                     "covered in the mount namespace (Landlock read exclusion without one)"))
    gpu, tpu = d["accelerators"]["gpu"], d["accelerators"]["tpu"]
    if gpu["enabled"]:
        devs = gpu.get("devices")
        rows.append(("accelerators.gpu", _device_list(devs, "GPU", "devices"),
                     _hardness("accelerators.gpu"), f"Landlock on {gpu['device_pattern']} + shared nodes"))
        rows.append(("CUDA_VISIBLE_DEVICES", "the allowed devices, in order", "soft", "environment"))
        if gpu.get("memory_fraction"):
            rows.append(("accelerators.gpu.memory_fraction", str(gpu["memory_fraction"]),
                         _hardness("accelerators.gpu.memory_fraction"),
                         "torch caching allocator (set_per_process_memory_fraction)"))
        if gpu.get("mps_memory_limit"):
            rows.append(("accelerators.gpu.mps_memory_limit", gpu["mps_memory_limit"],
                         _hardness("accelerators.gpu.mps_memory_limit"),
                         "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT (the MPS daemon's own limit is the hard one)"))
        tools = accelerators.describe_tools(accelerators.tool_verdicts(policy))
        for line in tools or ["(none listed)"]:
            rows.append(("accelerators.gpu.tool_dirs", line,
                         _hardness("accelerators.gpu.tool_dirs"), "Landlock (exec)"))
    else:
        rows.append(("accelerators.gpu", "disabled: no NVIDIA device node opens",
                     _hardness("accelerators.gpu"), "not in the kernel's /dev (mount namespace)" + files))
        rows.append(("accelerators.gpu.tool_dirs", "not granted: GPU disabled (a tool in an exec.allow directory "
                     "may start, but opens no GPU)", _hardness("accelerators.gpu.tool_dirs"),
                     "noexec (mount namespace)" + files))
        rows.append(("CUDA_VISIBLE_DEVICES", "empty", "soft", "environment"))
    if tpu["enabled"]:
        chips = tpu.get("chips")
        rows.append(("accelerators.tpu", _device_list(chips, "TPU chip", "chips"),
                     _hardness("accelerators.tpu"), f"Landlock on {tpu['device_pattern']}, {tpu['vfio_pattern']}"))
    else:
        rows.append(("accelerators.tpu", "disabled: no /dev/accel* or /dev/vfio node opens",
                     _hardness("accelerators.tpu"), "Landlock"))
        rows.append(("libtpu import, TPU_LIBRARY_PATH", "refused / removed", "soft", "import guard, environment"))
    if not (gpu["enabled"] or tpu["enabled"]):
        rows.append(("JAX_PLATFORMS", "cpu (no accelerator granted)", "soft", "environment"))
    else:
        rows.append(("JAX_PLATFORMS", "cpu where no GPU or TPU is granted on this machine; otherwise unset "
                     "(or the platform's value less what is not granted)", "soft", "environment"))
    lim = d["limits"]
    labels = {"memory": "RLIMIT_DATA + cgroup memory", "address_space": "RLIMIT_AS",
              "processes": "cgroup pids.max; RLIMIT_NPROC in the kernel's user namespace (non-root)",
              "open_files": "RLIMIT_NOFILE", "file_size": "RLIMIT_FSIZE", "cpu_seconds": "RLIMIT_CPU",
              "inotify_instances": "max_inotify_instances in the kernel's user namespace",
              "inotify_watches": "max_inotify_watches in the kernel's user namespace",
              "message_queues": "RLIMIT_MSGQUEUE in the kernel's user namespace",
              "pending_signals": "RLIMIT_SIGPENDING in the kernel's user namespace"}
    for key, how in labels.items():
        if lim.get(key) is not None:
            fmt = _fmt_size if KEYS[f"limits.{key}"]["size"] else str
            rows.append((f"limits.{key}", fmt(lim[key]), _hardness(f"limits.{key}"), how))
    rows.append(("core dumps", "off", "hard", "RLIMIT_CORE"))
    keep = d.get("capabilities", {}).get("keep", {})
    rows.append(("capabilities.keep", "; ".join(f"{c} ({why})" for c, why in keep.items()) if keep else
                 "none: a root tenant cannot chown, chmod, read or change other accounts' files, nor change uid",
                 _hardness("capabilities.keep"), "capabilities (bounding set)"))
    host_uid = d.get("user_namespace", {}).get("host_uid", "same")
    rows.append(("user_namespace.host_uid", "subordinate: each kernel a host uid and gid of its own (the launching "
                 "account's /etc/subuid range), the tenant's uid inside; its writable directories idmapped; per-uid "
                 "counters its own; needs a root launcher" if host_uid == "subordinate" else
                 "same: the kernel is the tenant's uid on the host (a root tenant is uid 0: it reads root's files "
                 "that Landlock grants and `hidden` does not cover; per-uid counters reach the tenant's uid)",
                 _hardness("user_namespace.host_uid"),
                 "pid_namespace (user namespace owned by the subordinate uid) + mount_namespace (idmapped mounts)"))
    rows.append(("set-id bits", "chmod, open(O_CREAT) and mknod cannot set setuid/setgid bits; openat2 refused",
                 "hard", "seccomp"))
    rows.append(("always denied syscalls", "module loading, mount, ptrace, bpf, perf, keyring, namespaces, "
                 "io_uring, clock setting, ...", "hard", "seccomp"))
    rows.append(("programs in memory", "memfd_create only with MFD_NOEXEC_SEAL (never MFD_EXEC, MFD_HUGETLB), "
                 "no execveat(AT_EMPTY_PATH)", "hard", "seccomp"))
    rows.append(("audit.log", d["audit"]["log"] or "(none)", "hard" if d["audit"]["log"] else "soft",
                 "written by the supervisor (the kernel's own events marked unverified); the kernel appends "
                 "itself only where no supervisor runs"))
    v = d["audit"]["violations"]
    if d["audit"]["log"] and (v["stop_after"] or v["notice"]):
        rows.append(("audit.violations", f"{', '.join(v['categories'])}: stop after {v['stop_after'] or 'never'} in "
                     f"{v['window_seconds']} s, block {v['block_seconds']} s", _hardness("audit.violations"),
                     "supervisor (stop), launcher (block); the notice in the notebook is soft"))
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
