"""rlimits: per-process ceilings from ``limits``, no core dumps, and each kernel's own share
of what Linux counts per uid.

Enforcement: hard for the process and its children (inherited across fork and
exec). Root cannot raise them again because the capabilities layer drops
CAP_SYS_RESOURCE. RLIMIT_NPROC does not bind root at all (the kernel exempts uid 0):
the cgroup layer's pids.max is what stops a root fork bomb.

``limits.memory`` maps to RLIMIT_DATA (heap and private writable mappings), which
leaves CUDA's large PROT_NONE reservations alone; ``limits.address_space`` is
RLIMIT_AS for those who want it (it breaks CUDA).

**Per-uid counters, per kernel.** Linux counts some resources per user, not per process:
processes and threads (RLIMIT_NPROC), POSIX message queue bytes (RLIMIT_MSGQUEUE), queued
signals (RLIMIT_SIGPENDING), inotify instances and watches, fanotify groups and marks. It
keeps these counts per (user namespace, uid), and checks every level up to the host's. So
this layer runs *after* the pid_namespace layer has put the kernel in a user namespace of
its own, and sets them there:

- RLIMIT_NPROC (``limits.processes``), RLIMIT_MSGQUEUE (``limits.message_queues``) and
  RLIMIT_SIGPENDING (``limits.pending_signals``) bind the kernel's own count; the host
  level is checked against the launcher's limits from before (the namespace records them
  when it is created), which the kernel does not narrow. Set before that namespace existed,
  they bound every kernel of the uid together: one tenant's processes stopped the others'
  forks and their next kernel's start;
- ``/proc/sys/user/max_inotify_instances`` and ``max_fanotify_groups``
  (``limits.inotify_instances``), ``max_inotify_watches`` and ``max_fanotify_marks``
  (``limits.inotify_watches``) in the kernel's namespace, written while the launcher still
  holds CAP_SYS_RESOURCE there (the kernel cannot change them: it has none).

What the kernel takes still counts toward the host uid's own limits (fs.inotify.max_user_*,
the host processes' RLIMIT_NPROC, ...): Linux charges a namespace's counts to its *owner*
in the parent namespace too. These shares keep one kernel from using them up, as long as the
host's limits cover the uid's kernels together; ``sandbox-kernel doctor`` compares them. With
``user_namespace.host_uid: subordinate`` (root launcher) the kernel's namespace is owned by a
host uid of its own (layers.subuid), so its counts reach that uid, never the tenant's, and
RLIMIT_NPROC binds a root tenant too (Linux exempts only host uid 0). Without a user namespace of its own (root in a container whose seccomp
profile refuses one, or the pid_namespace layer off), the rlimits count every process of
the uid, the inotify shares cannot be set, and the layer reports ``partial``; where the
kernel's own cgroup has pids.max, RLIMIT_NPROC is then left alone (the group counts this
kernel's processes; the rlimit would count the uid's).
"""

from __future__ import annotations

import os
import resource

from ..identity import is_root
from ..resolved import parse_size
from .status import level_or_off, simulated_missing

NAME = "rlimits"
# What this layer is (the facts every layer declares; layers/registry.py derives every list from them)
HARD = True  # enforced by the OS kernel (True) or by in-process hooks (False)
CONFIGURABLE = True  # the profile's enforcement.rlimits can make it best-effort or off
CHECKED_BY_KERNEL = True  # the kernel refuses to run without the launcher's report of it
# HINT: what makes the layer available, for doctor (None: its refusal says)
HINT = "let the launcher set its resource limits (hard limits at or above the profile's)"
DESCRIPTION = ("data size, processes, open files, file size, CPU, no core dumps; counted per kernel in its user "
               "namespace")
# DEFAULT: its enforcement level where a profile names none (None: not configurable)
DEFAULT = "required"
# README: what README.md's list of layers says of it (generated there: python -m sandbox_kernel.layer_doc --write)
README = ("data size, processes, open files, file size, CPU, no core dumps; and, in the kernel's own user "
          "namespace (so Linux counts them per kernel, not per uid), processes (RLIMIT_NPROC), message queue "
          "bytes, queued signals, inotify instances and watches: one kernel cannot use up what the uid's other "
          "kernels and host processes need. `doctor` says how many kernels of one uid the host's own per-uid "
          "limits hold at these shares.")
NEEDS = ("cgroup", "pid_namespace")  # the earlier layers whose results apply() reads (given[NAME])
RESULT = None  # the class of what apply() returns for later layers (None: nothing)
MAPPING = [  # (limits key, resource, parse)
    ("memory", resource.RLIMIT_DATA, parse_size),
    ("address_space", resource.RLIMIT_AS, parse_size),
    ("processes", resource.RLIMIT_NPROC, int),
    ("open_files", resource.RLIMIT_NOFILE, int),
    ("file_size", resource.RLIMIT_FSIZE, parse_size),
    ("cpu_seconds", resource.RLIMIT_CPU, int),
    ("message_queues", resource.RLIMIT_MSGQUEUE, parse_size),
    ("pending_signals", resource.RLIMIT_SIGPENDING, int),
]
# rlimits whose count Linux keeps per (user namespace, uid), not per process
PER_UID = {resource.RLIMIT_NPROC, resource.RLIMIT_MSGQUEUE, resource.RLIMIT_SIGPENDING}
# limits key -> the files of /proc/sys/user (per user namespace) that take it
USER_COUNTERS = {
    "inotify_instances": ("max_inotify_instances", "max_fanotify_groups"),
    "inotify_watches": ("max_inotify_watches", "max_fanotify_marks"),
}
SYSCTL_USER = "/proc/sys/user"


def planned(policy) -> list[tuple[str, int, int]]:
    out = [("core dumps", resource.RLIMIT_CORE, 0)]
    for key, res, conv in MAPPING:
        v = policy.limits.get(key)
        if v is not None:
            out.append((key, res, conv(v)))
    return out


class Host:
    """What the rlimits plan depends on besides the profile: whether the kernel has its own user
    namespace (pid_namespace layer), whether its own cgroup counts its processes (cgroup layer),
    this process's hard limits and uid. Read by apply; made up by a test."""

    def __init__(self, own_user_namespace: bool, pids_limited: bool, hard_limits: dict[int, int], uid: int):
        self.own_user_namespace = own_user_namespace
        self.pids_limited = pids_limited
        self.hard_limits = hard_limits
        self.uid = uid


class Plan:
    """What apply will do: setrlimit (label, resource, value) both soft and hard; write the
    /proc/sys/user counters (limits key, files, value) in the kernel's own user namespace; and
    what it cannot bound per kernel (`shared`: counted per uid) or leaves out (`notes`)."""

    def __init__(self):
        self.limits: list[tuple[str, int, int]] = []
        self.counters: list[tuple[str, tuple[str, ...], int]] = []
        self.shared: list[str] = []
        self.notes: list[str] = []


def plan(policy, host: Host) -> Plan:
    """The limits `policy` sets on `host` (pure: reads nothing, changes nothing)."""
    p = Plan()
    for label, res, value in planned(policy):
        if res == resource.RLIMIT_NPROC and not host.own_user_namespace and host.pids_limited:
            p.notes.append(f"RLIMIT_NPROC not set: without a user namespace of its own it would count every "
                           f"process of uid {host.uid}; the kernel's cgroup pids.max counts its own")
            continue
        hard = host.hard_limits[res]
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        p.limits.append((label, res, value))
        if res in PER_UID and not host.own_user_namespace:
            p.shared.append(label)
    for key, files in USER_COUNTERS.items():
        value = policy.limits.get(key)
        if value is None:
            continue
        if not host.own_user_namespace:
            p.shared.append(key)
            continue
        p.counters.append((key, files, int(value)))
    return p


def userns_id() -> int | None:
    """The inode of this process's user namespace (/proc/self/ns/user)."""
    try:
        return os.stat("/proc/self/ns/user").st_ino
    except OSError:
        return None


def in_own_user_namespace(entered) -> bool:
    """Is this process in the user namespace the pid_namespace layer created, not the one the
    launcher started in? (Writing /proc/sys/user there would change the limits of every
    process of the uid.)"""
    now = userns_id()
    return "user" in entered.namespaces and now is not None and entered.host_userns not in (None, now)


def _set_user_counter(name: str, value: int) -> bool:
    """Write /proc/sys/user/<name> in this process's user namespace; False where the kernel
    has no such counter (fanotify on old kernels)."""
    path = os.path.join(SYSCTL_USER, name)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        os.write(fd, str(value).encode())
    finally:
        os.close(fd)
    with open(path) as fh:
        got = fh.read().strip()
    if got != str(value):
        raise OSError(0, f"{path} reads {got} after writing {value}")
    return True


def prepare(policy, ctx) -> None:
    """Nothing to do before any layer narrows the process."""


def apply(policy, ctx, status, given) -> None:
    level = level_or_off(policy, NAME, status)
    if level is None:
        return
    entered = given["pid_namespace"]  # (pid_namespace.Entered)
    own_ns = in_own_user_namespace(entered)
    done = []
    try:
        if simulated_missing(NAME):
            raise OSError(0, "setrlimit is not available (simulated)")
        pids_limited = given["cgroup"] is not None and given["cgroup"].pids_limited
        host = Host(own_ns, pids_limited, {res: resource.getrlimit(res)[1] for _, res, _ in planned(policy)},
                    os.getuid())
        p = plan(policy, host)
        for label, res, value in p.limits:
            resource.setrlimit(res, (value, value))
            done.append(f"{label}={value}")
        for key, files, value in p.counters:
            written = [f for f in files if _set_user_counter(f, value)]
            done.append(f"{key}={value} ({', '.join(written)} in the kernel's user namespace)")
    except (OSError, ValueError, OverflowError) as e:
        why = f"setrlimit failed: {getattr(e, 'strerror', None) or e}"
        status.cannot(NAME, level, why)
        return
    shared = p.shared
    detail = ", ".join(done) + "".join(f"; {n}" for n in p.notes)
    if own_ns:
        status.active(NAME, detail + "; message queues, queued signals, inotify"
                      + (" (processes: the cgroup layer; RLIMIT_NPROC does not bind root)"
                         if is_root() and entered.subordinate is None else " and processes")
                      + " are counted per kernel (its own user namespace)"
                      + (f", and on the host under uid {entered.subordinate.alloc.uid}, this kernel's own"
                         if entered.subordinate is not None else ""))
        return
    if not shared:
        status.active(NAME, detail)
        return
    why = entered.no_userns_why or ("the pid_namespace layer did not give the kernel a user namespace of its own"
                                    if "pid" not in entered.namespaces or "user" not in entered.namespaces else
                                "the kernel is in the host's user namespace")
    parts = []
    counted = [k for k in shared if k not in USER_COUNTERS]
    if counted:
        parts.append(f"{', '.join(counted)} count every process of uid {os.getuid()} together (the uid's kernels "
                     f"and host processes share them)")
    inotify = [k for k in shared if k in USER_COUNTERS]
    if inotify:
        parts.append(f"{', '.join(inotify)} not applied (only the host's per-uid limits apply)")
    status.partial(NAME, f"{detail}; no user namespace of its own ({why}): " + "; ".join(parts))
