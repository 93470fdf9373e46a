"""seccomp layer: system calls a notebook never needs, and socket families by mode.

Enforcement: hard. Built with libseccomp (the official ``seccomp`` binding where it
is installed, else ``pyseccomp``, a ctypes binding with the same API); no
hand-written BPF. Loaded with TSYNC (every thread) and inherited by every child.

Two stages, because the kernel talks to Jupyter over TCP (ZMQ) even when the
tenant may not:
1. the launcher loads the full filter, except that in ``network.mode: none`` it
   still lets TCP sockets be created (Landlock already limits them to binding the
   kernel's own ports and connecting to nothing else);
2. the kernel, once its ZMQ sockets are bound (after ``init_kernel``), stacks a
   second filter with the mode's final socket rules. Filters only ever tighten.
When there is no connection file (a batch job, a terminal) or the kernel uses the
ipc transport, stage 1 already holds the final rules.

Syscall cost: allowed syscalls whose rules look only at the number are decided by
the kernel's per-filter bitmap cache (Linux 5.11+); the argument checks sit on
``socket``, ``socketpair`` and ``clone`` only, which are not hot.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os

from ..errors import LayerUnavailable
from .base import level_or_off, simulated_missing

NAME = "seccomp"
LIBSECCOMP_ENV = "SANDBOX_KERNEL_LIBSECCOMP"
SONAME = "libseccomp.so.2"

# Docker's default profile removes these with the capabilities a notebook never needs.
ALWAYS_DENIED = [
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "mount", "umount", "umount2", "pivot_root", "chroot", "mount_setattr", "move_mount", "open_tree",
    "fsopen", "fsconfig", "fsmount", "fspick", "swapon", "swapoff", "reboot", "bpf", "perf_event_open",
    "keyctl", "add_key", "request_key", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd",
    "unshare", "setns", "userfaultfd", "open_by_handle_at", "iopl", "ioperm",
    "clock_settime", "clock_settime64", "clock_adjtime", "clock_adjtime64", "settimeofday", "stime",
    "adjtimex", "acct", "quotactl", "quotactl_fd", "syslog", "vhangup", "uselib", "lookup_dcookie",
    "nfsservctl", "create_module", "get_kernel_syms", "query_module",
]
# Denied with ENOSYS so that libraries fall back: io_uring's socket op would bypass
# the socket() rules; clone3 passes flags in memory that seccomp cannot read.
NOT_IMPLEMENTED = ["io_uring_setup", "io_uring_enter", "io_uring_register", "clone3"]
CLONE_NAMESPACE_FLAGS = [0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                         0x40000000, 0x00000080]
AF_MAX_CHECKED = 64  # every family value below this is decided one by one, above it denied
SOCK_TYPE_MASK = 0xF
# Linux ABI constants (written out: importing `socket` costs the launcher ~2 ms)
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW = 1, 2, 3
INET_FAMILIES = (AF_INET, AF_INET6)
IPPROTO_TCP, IPPROTO_UDP = 6, 17
AF_PACKET, AF_NETLINK, NETLINK_ROUTE = 17, 16, 0


def socket_rules(mode: str, udp: bool) -> dict:
    """Families allowed for socket(); for AF_INET/AF_INET6 the allowed types and protocols;
    for AF_NETLINK the allowed protocols.

    ``restricted`` keeps NETLINK_ROUTE: getifaddrs(3) needs it (libzmq resolves bind
    addresses with it and aborts when it fails; glibc's getaddrinfo uses it), and
    without CAP_NET_ADMIN (dropped for root too) it can only read interface data.
    """
    if mode == "none":
        return {"families": {AF_UNIX}, "inet_types": {}, "netlink": set()}
    if mode == "restricted":
        inet = {SOCK_STREAM: {0, IPPROTO_TCP}}
        if udp:
            inet[SOCK_DGRAM] = {0, IPPROTO_UDP}
        return {"families": {AF_UNIX, AF_NETLINK, *INET_FAMILIES}, "inet_types": inet,
                "netlink": {NETLINK_ROUTE}}
    # full: everything but packet sockets and raw IP sockets
    return {"families": set(range(AF_MAX_CHECKED)) - {AF_PACKET},
            "inet_types": {t: None for t in range(16) if t not in (SOCK_RAW, 10)}, "netlink": None}


@contextlib.contextmanager
def _known_libraries():
    """Let the binding find libseccomp without running ldconfig (exec may be denied)."""
    path = os.environ.get(LIBSECCOMP_ENV)
    if not path:
        yield
        return
    import ctypes.util as cutil

    original = cutil.find_library
    cutil.find_library = lambda name: path if name == "seccomp" else (None if name == "c" else original(name))
    try:
        yield
    finally:
        cutil.find_library = original


def binding():
    """The libseccomp binding module, or raise LayerUnavailable."""
    if simulated_missing(NAME):
        raise LayerUnavailable(NAME, "libseccomp is not available (simulated)")
    try:
        import seccomp  # the official binding, when installed
        return seccomp
    except ImportError:
        pass
    try:
        with _known_libraries():
            import pyseccomp
        return pyseccomp
    except (ImportError, RuntimeError, OSError) as e:
        raise LayerUnavailable(NAME, f"libseccomp cannot be loaded ({e}); install libseccomp2") from None


def prepare(policy, ctx) -> None:
    """Find libseccomp before Landlock narrows exec (ctypes.util runs ldconfig to find it)."""
    if policy.enforcement(NAME) == "off" or simulated_missing(NAME):
        return
    path = library_path()
    if path:
        os.environ[LIBSECCOMP_ENV] = ctx.env[LIBSECCOMP_ENV] = path  # also read by binding()
    try:
        binding()
    except LayerUnavailable:
        pass  # reported by apply()


def library_path() -> str | None:
    """libseccomp's file name; the usual soname is tried before ctypes.util, which forks ldconfig."""
    if os.environ.get(LIBSECCOMP_ENV):
        return os.environ[LIBSECCOMP_ENV]
    try:
        ctypes.CDLL(SONAME)
        return SONAME
    except OSError:
        from ctypes.util import find_library

        return find_library("seccomp")


def _resolve(sc, name: str) -> int | None:
    nr = sc.resolve_syscall(sc.Arch.NATIVE, name)
    return nr if isinstance(nr, int) and nr >= 0 else None


def _add_socket_rules(sc, f, rules: dict) -> None:
    deny = sc.ERRNO(errno.EPERM)
    fams = rules["families"]
    for fam in range(AF_MAX_CHECKED):
        if fam not in fams:
            f.add_rule(deny, "socket", sc.Arg(0, sc.EQ, fam))
    f.add_rule(deny, "socket", sc.Arg(0, sc.GE, AF_MAX_CHECKED))
    for fam in INET_FAMILIES:
        if fam not in fams:
            continue
        for t in range(16):
            protos = rules["inet_types"].get(t, "denied")
            if protos == "denied":
                f.add_rule(deny, "socket", sc.Arg(0, sc.EQ, fam), sc.Arg(1, sc.MASKED_EQ, SOCK_TYPE_MASK, t))
            elif protos is not None:  # only these protocol numbers
                top = max(protos)
                for p in range(top):
                    if p not in protos:
                        f.add_rule(deny, "socket", sc.Arg(0, sc.EQ, fam),
                                   sc.Arg(1, sc.MASKED_EQ, SOCK_TYPE_MASK, t), sc.Arg(2, sc.EQ, p))
                f.add_rule(deny, "socket", sc.Arg(0, sc.EQ, fam),
                           sc.Arg(1, sc.MASKED_EQ, SOCK_TYPE_MASK, t), sc.Arg(2, sc.GT, top))
    netlink = rules["netlink"]
    if AF_NETLINK in fams and netlink is not None:  # only these netlink protocols
        for p in range(32):
            if p not in netlink:
                f.add_rule(deny, "socket", sc.Arg(0, sc.EQ, AF_NETLINK), sc.Arg(2, sc.EQ, p))
        f.add_rule(deny, "socket", sc.Arg(0, sc.EQ, AF_NETLINK), sc.Arg(2, sc.GE, 32))
    f.add_rule(deny, "socketpair", sc.Arg(0, sc.NE, AF_UNIX))


def build(sc, *, socket: dict | None, base: bool):
    """A filter: `base` adds the always-denied syscalls, `socket` the socket rules."""
    f = sc.SyscallFilter(sc.ALLOW)
    f.set_attr(sc.Attr.CTL_TSYNC, 1)
    # Syscalls of another ABI (i386 via int 0x80, x32) are not in the filter: kill.
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    if base:
        for name in ALWAYS_DENIED:
            if _resolve(sc, name) is not None:
                f.add_rule(sc.ERRNO(errno.EPERM), name)
        for name in NOT_IMPLEMENTED:
            if _resolve(sc, name) is not None:
                f.add_rule(sc.ERRNO(errno.ENOSYS), name)
        for flag in CLONE_NAMESPACE_FLAGS:
            f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, flag, flag))
    if socket is not None:
        _add_socket_rules(sc, f, socket)
    return f


def stage_one_mode(policy, ctx) -> str:
    """The socket mode the launcher can enforce before the kernel binds its ports."""
    mode = policy.network["mode"]
    if mode == "none" and ctx.kernel_ports and ctx.transport == "tcp":
        return "restricted"  # TCP only, until the kernel's stage 2
    return mode


def needs_stage_two(policy, stage_one: str) -> bool:
    return stage_one != policy.network["mode"]


def apply(policy, ctx, status) -> None:
    """Stage 1, in the launcher."""
    level = level_or_off(policy, NAME, status)
    if level is None:
        return
    try:
        sc = binding()
        first = stage_one_mode(policy, ctx)
        udp = policy.network["udp"] if first == policy.network["mode"] else False
        build(sc, socket=socket_rules(first, udp), base=True).load()
    except LayerUnavailable as e:
        status.cannot(NAME, level, e.why)
        return
    except OSError as e:
        status.cannot(NAME, level, f"loading the filter failed: {e.strerror}")
        return
    stage2 = needs_stage_two(policy, first)
    status.active(NAME, f"{len(ALWAYS_DENIED) + len(NOT_IMPLEMENTED)} syscalls denied; sockets: "
                        + (f"TCP until the kernel's ports are bound, then {policy.network['mode']}" if stage2
                           else policy.network["mode"]), stage_two_pending=stage2)


def apply_stage_two(policy, status) -> None:
    """Stage 2, in the kernel after its sockets are bound: the mode's final socket rules."""
    entry = status.layers.get(NAME, {})
    if not entry.get("stage_two_pending"):
        return
    sc = binding()
    build(sc, socket=socket_rules(policy.network["mode"], policy.network["udp"]), base=False).load()
    entry["stage_two_pending"] = False
    entry["detail"] = entry["detail"].split("; sockets:")[0] + f"; sockets: {policy.network['mode']}"


def process_seccomp_state(pid: str = "self") -> tuple[int, int]:
    """(Seccomp mode, number of filters) from /proc/<pid>/status."""
    mode = filters = 0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("Seccomp:"):
                    mode = int(line.split()[1])
                elif line.startswith("Seccomp_filters:"):
                    filters = int(line.split()[1])
    except OSError:
        pass
    return mode, filters
