"""seccomp layer: system calls a notebook never needs, socket families by mode, and the
side doors around Landlock's network and exec rules.

Enforcement: hard. The rules are data (``rules(policy, socket_mode, memfd_noexec)`` returns a list
of ``Rule``); one list feeds both the filter loaded here (through our own ctypes binding,
``sandbox_kernel.libseccomp``: the launcher imports nothing outside the standard library
and this package before confinement) and the OCI seccomp document that
``sandbox-kernel export --format oci-seccomp`` writes. libseccomp generates the BPF; it is
loaded with TSYNC (every thread) and inherited by every child. System calls of another
ABI (i386 through ``int 0x80``, x32) kill the process.

What the rules refuse (``docs/network.md`` has the network part in full):
- in every mode: module loading, mount, ptrace, bpf, perf, keyrings, namespaces, clock
  setting, ... (``ALWAYS_DENIED``); io_uring and clone3 with ENOSYS (``NOT_IMPLEMENTED``);
  set-user-ID and set-group-ID bits in chmod, fchmod, fchmodat(2), creat, mknod(at) and
  creating open/openat (``setid_rules``; openat2, whose mode is in memory, with ENOSYS);
  packet, vsock, XDP and PF_KEY sockets, raw IP sockets; ``memfd_create`` with MFD_EXEC
  or MFD_HUGETLB (hugetlbfs does not enforce the exec seal: fchmod +x works on it), and
  without MFD_NOEXEC_SEAL unless ``memfd_noexec`` (vm.memfd_noexec=2 in the kernel's
  PID namespace makes the OS kernel seal every memfd); ``execveat`` with
  AT_EMPTY_PATH. Landlock never sees memfd files, so this is what keeps a program that
  exists only in memory from running. Shared memory is unaffected: Python's
  multiprocessing and torch use shm_open; on an H100 host (torch 2.11+cu130, driver 580)
  CUDA init, pinned-memory DataLoader workers, CUDA IPC between processes, CuPy and
  expandable segments ran unchanged under these memfd, execveat and sendto rules;
- where the network is not ``full``: socket families and protocols by mode, and TCP Fast
  Open (``MSG_FASTOPEN`` on sendto/sendmsg/sendmmsg, ``TCP_FASTOPEN_CONNECT``), which
  connects without connect(), so Landlock's connect rule never sees it.
- ``listen()``, in every mode: sent to the supervisor (``SECCOMP_RET_USER_NOTIF``), which
  decides by socket (``sandbox_kernel/listen_broker.py``: UNIX sockets, the kernel's own
  ports once, ``network.listen_ports``), and ``seccomp()`` with NEW_LISTENER refused (a newer
  notifier would answer in its place); without a supervisor, refused outright once the
  kernel's sockets listen (``listen_plan``). These rules depend on the launch, so they are
  not in ``rules()`` nor in the OCI export; ``network.listen_ports: any`` has none.
Integer arguments are compared the way the OS kernel reads them: a check on an ``int``
argument masks the upper 32 bits of the register (MASKED_EQ 0xffffffff), or the rule
refuses every value with upper bits set, so garbage there cannot slip past.

Two stages, because the kernel talks to Jupyter over TCP (ZMQ) even when the tenant may
not:
1. the launcher loads the full filter, except that in ``network.mode: none`` it still
   lets TCP sockets be created (Landlock already keeps them from binding anything but
   the kernel's own ports and from connecting anywhere);
2. the kernel, once its ZMQ sockets are bound (after ``init_kernel``), stacks a second
   filter with the rules of the final mode that stage 1 lacks. Filters only ever
   tighten: what is in force afterwards is ``rules(policy, mode, memfd_noexec)``, which is what
   ``export`` writes.
When there is no connection file (a batch job, a terminal) or the kernel uses the ipc
transport, stage 1 already holds the final rules.

Syscall cost: since Linux 5.11 the kernel caches, per filter, the system calls whose
verdict does not depend on their arguments, so allowed calls such as read, write or
openat never run the filter. The argument checks sit on socket, socketpair, clone,
setsockopt, memfd_create and execveat (not hot), on open and openat (the set-id rules:
every file open) and on sendto, sendmsg and sendmmsg, which ZMQ and every network client
call often: libseccomp gives those five the highest priority (``HOT``), so they are the
first comparisons the filter makes (``python -m benchmarks.bpf_walk`` counts the BPF
instructions each runs: openat and sendto about 15 in stage 1 and 6 in stage 2, where
openat walked 87 before it had a priority). A call one filter checks runs every stacked
filter (the kernel's cache is per call for the whole stack). Measured on the 2-core
development VM (Linux 6.18; ``python -m benchmarks.seccomp_cost``: a C loop of raw
``sendto(-1, ...)`` calls, lowest of 7 rounds), ns per call: no filter 194; an allow-all
filter 260 (the price of any filter); this filter without its MSG_FASTOPEN rules (sendto
answered from the cache) 262; with them 274. The flag check costs about 12 ns per
sendto, at the edge of that VM's noise (getpid, cached in both filters, moved by 15 ns
between the same runs), against some 4 us for sending and receiving one byte over a
UNIX socket from Python.
"""

from __future__ import annotations

import ctypes
import errno
import os

from ..errors import LayerUnavailable
from .status import level_or_off, simulated_missing

NAME = "seccomp"
# What this layer is (the facts every layer declares; layers/registry.py derives every list from them)
HARD = True  # enforced by the OS kernel (True) or by in-process hooks (False)
CONFIGURABLE = True  # the profile's enforcement.seccomp can make it best-effort or off
CHECKED_BY_KERNEL = True  # the kernel refuses to run without the launcher's report of it
# HINT: what makes the layer available, for doctor (None: its refusal says)
HINT = "install libseccomp (Debian/Ubuntu: libseccomp2) and run on a kernel with seccomp filters"
DESCRIPTION = "denied system calls, no set-id bits, sockets by family; every listen() decided by the supervisor"
# DEFAULT: its enforcement level where a profile names none (None: not configurable)
DEFAULT = "required"
# README: what README.md's list of layers says of it (generated there: python -m sandbox_kernel.layer_doc --write)
README = ("the syscalls below denied, no set-id bit on any file (chmod, creating open, mknod), sockets by "
          "family; every `listen()` sent to the supervisor (outside the sandbox), which allows UNIX sockets, "
          "the kernel's own ports once (ZMQ) and `network.listen_ports`; in the kernel a second filter tightens"
          " sockets to the profile's mode once the ZMQ ports are bound. Without a supervisor (`pid_namespace` "
          "off and no cgroup), `listen()` is refused outright once the kernel listens, UNIX sockets included.")
NEEDS = ("pid_namespace",)  # the earlier layers whose results apply() reads (given[NAME])
RESULT = None  # the class of what apply() returns for later layers (None: nothing)
LIBSECCOMP_ENV = "SANDBOX_KERNEL_LIBSECCOMP"

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
# Refused by the supervisor rather than by the filter where the profile keeps an audit log: the
# filter sends these to it (SECCOMP_RET_USER_NOTIF), it records them in the trail (layer seccomp,
# category syscall) and answers EPERM, the filter's own answer. Only calls no notebook makes, so
# none is on a hot path; with no supervisor left to answer, the call fails with ENOSYS.
NOTIFIED = [name for name in ALWAYS_DENIED if name not in ("stime", "nfsservctl", "create_module",
                                                            "get_kernel_syms", "query_module", "uselib")]
# Shown to the supervisor, which records those Landlock will refuse (audit trail) and lets them go on
# (execveat: without AT_EMPTY_PATH; with it the supervisor refuses it, as the filter does otherwise).
OBSERVED = ["connect", "execve", "execveat"]
# Denied with ENOSYS so that libraries fall back: io_uring's socket operations would bypass
# the socket() rules; clone3 passes flags in memory that seccomp cannot read.
NOT_IMPLEMENTED = ["io_uring_setup", "io_uring_enter", "io_uring_register", "clone3"]
CLONE_NAMESPACE_FLAGS = [0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                         0x40000000, 0x00000080]
AF_MAX_CHECKED = 64  # every family value below this is decided one by one, above it denied
SOCK_TYPE_MASK = 0xF
INT_MASK = 0xFFFFFFFF  # the OS kernel reads int arguments from the low 32 bits of the register
# Linux ABI constants (written out: importing `socket` costs the launcher ~2 ms)
AF_UNIX, AF_INET, AF_INET6 = 1, 2, 10
AF_KEY, AF_NETLINK, AF_PACKET, AF_VSOCK, AF_XDP = 15, 16, 17, 40, 44
SOCK_STREAM, SOCK_DGRAM, SOCK_RAW, SOCK_PACKET = 1, 2, 3, 10
INET_FAMILIES = (AF_INET, AF_INET6)
IPPROTO_TCP, IPPROTO_UDP = 6, 17
NETLINK_ROUTE = 0
MSG_FASTOPEN = 0x20000000
TCP_FASTOPEN_CONNECT = 30
MFD_HUGETLB, MFD_NOEXEC_SEAL, MFD_EXEC = 0x0004, 0x0008, 0x0010
AT_EMPTY_PATH = 0x1000
SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER = 1, 1 << 3
S_ISUID, S_ISGID = 0o4000, 0o2000
O_CREAT, O_TMPFILE_BIT = 0o100, 0o20000000  # __O_TMPFILE (O_TMPFILE is it plus O_DIRECTORY)
# (system call, index of its mode argument, index of its flags argument or None): where a file's
# set-user-ID and set-group-ID bits can be set. openat2 passes mode and flags in memory: refused.
SETID_MODE_ARGS = [("chmod", 1, None), ("fchmod", 1, None), ("fchmodat", 2, None), ("fchmodat2", 2, None),
                   ("creat", 1, None), ("open", 2, 1), ("openat", 3, 2), ("mknod", 1, None), ("mknodat", 2, None)]
# Refused in every mode, `full` included: raw frames (packet, XDP), the hypervisor's services
# on VM hosts (vsock: Firecracker's host proxy, guest agents), IPsec key management (PF_KEY).
NEVER_FAMILIES = {AF_PACKET, AF_VSOCK, AF_XDP, AF_KEY}


class Rule:
    """One filter rule: `action` ("errno", with `errno`) when system call `syscall` is made
    and every condition in `args` holds. A condition is (argument index, op, value,
    value_two) with op as in libseccomp and OCI (EQ, NE, LT, LE, GE, GT, MASKED_EQ; for
    MASKED_EQ `value` is the mask and `value_two` the expected masked value)."""

    __slots__ = ("syscall", "action", "errno", "args", "why")

    def __init__(self, syscall: str, args=(), *, errno_: int = errno.EPERM, action: str = "errno", why: str = ""):
        self.syscall = syscall
        self.action = action
        self.errno = errno_ if action == "errno" else None
        self.args = tuple((int(i), op, int(v), int(v2)) for i, op, v, v2 in
                          (a if len(a) == 4 else (*a, 0) for a in args))
        if len({a[0] for a in self.args}) != len(self.args):
            # OCI runtimes (runc) turn repeated indexes into OR: never emit them
            raise ValueError(f"{syscall}: one condition per argument")
        self.why = why

    def key(self) -> tuple:
        return (self.syscall, self.action, self.errno, self.args)

    def __eq__(self, other) -> bool:
        return isinstance(other, Rule) and self.key() == other.key()

    def __hash__(self) -> int:
        return hash(self.key())

    def __repr__(self) -> str:
        conds = " && ".join(f"a{i} {op} {v:#x}" + (f" {v2:#x}" if op == "MASKED_EQ" else "")
                            for i, op, v, v2 in self.args)
        return f"Rule({self.syscall}{' if ' + conds if conds else ''} -> {self.action}({self.errno}))"


def _int_eq(index: int, value: int) -> tuple:
    return (index, "MASKED_EQ", INT_MASK, value)


def _flag_set(index: int, flag: int) -> tuple:
    return (index, "MASKED_EQ", flag, flag)


def socket_rules(mode: str, udp: bool) -> dict:
    """Families allowed for socket(); for AF_INET/AF_INET6 the allowed types and protocols;
    for AF_NETLINK the allowed protocols.

    ``restricted`` keeps NETLINK_ROUTE: getifaddrs(3) needs it (libzmq resolves bind
    addresses with it and aborts when it fails; glibc's getaddrinfo uses it), and
    without CAP_NET_ADMIN (dropped for root too) it can only read interface data.
    Within AF_INET/AF_INET6 only protocols 0 and IPPROTO_TCP (and IPPROTO_UDP with
    ``udp``) are allowed: MPTCP (262), SCTP (132) and the rest are refused.
    """
    if mode == "none":
        return {"families": {AF_UNIX}, "inet_types": {}, "netlink": set()}
    if mode == "restricted":
        inet = {SOCK_STREAM: {0, IPPROTO_TCP}}
        if udp:
            inet[SOCK_DGRAM] = {0, IPPROTO_UDP}
        return {"families": {AF_UNIX, AF_NETLINK, *INET_FAMILIES}, "inet_types": inet,
                "netlink": {NETLINK_ROUTE}}
    # full: everything but NEVER_FAMILIES and raw IP sockets
    return {"families": set(range(AF_MAX_CHECKED)) - NEVER_FAMILIES,
            "inet_types": {t: None for t in range(16) if t not in (SOCK_RAW, SOCK_PACKET)}, "netlink": None}


def network_rules(mode: str, udp: bool) -> list[Rule]:
    """The socket rules of `mode`, and the TCP Fast Open rules wherever it is not `full`."""
    spec = socket_rules(mode, udp)
    out: list[Rule] = []
    fams = spec["families"]
    why = f"network.mode {mode}: socket family not allowed"
    for fam in range(AF_MAX_CHECKED):
        if fam not in fams:
            out.append(Rule("socket", [(0, "EQ", fam)], why=why))
    out.append(Rule("socket", [(0, "GE", AF_MAX_CHECKED)], why=why))
    for fam in INET_FAMILIES:
        if fam not in fams:
            continue
        for t in range(16):
            protos = spec["inet_types"].get(t, "denied")
            type_is = (1, "MASKED_EQ", SOCK_TYPE_MASK, t)
            if protos == "denied":
                out.append(Rule("socket", [(0, "EQ", fam), type_is], why=f"network.mode {mode}: socket type {t}"))
            elif protos is not None:  # only these protocol numbers
                top = max(protos)
                for p in range(top):
                    if p not in protos:
                        out.append(Rule("socket", [(0, "EQ", fam), type_is, (2, "EQ", p)],
                                        why=f"network.mode {mode}: protocol {p}"))
                out.append(Rule("socket", [(0, "EQ", fam), type_is, (2, "GT", top)],
                                why=f"network.mode {mode}: protocols above {top} (SCTP, MPTCP, ...)"))
    netlink = spec["netlink"]
    if AF_NETLINK in fams and netlink is not None:  # only these netlink protocols
        for p in range(32):
            if p not in netlink:
                out.append(Rule("socket", [(0, "EQ", AF_NETLINK), (2, "EQ", p)], why=f"netlink protocol {p}"))
        out.append(Rule("socket", [(0, "EQ", AF_NETLINK), (2, "GE", 32)], why="netlink protocols above 31"))
    out.append(Rule("socketpair", [(0, "NE", AF_UNIX)], why="socketpair: UNIX only"))
    if mode != "full":
        tfo = "TCP Fast Open connects without connect() (Landlock does not see it)"
        out += [Rule("sendto", [_flag_set(3, MSG_FASTOPEN)], why=tfo),
                Rule("sendmsg", [_flag_set(2, MSG_FASTOPEN)], why=tfo),
                Rule("sendmmsg", [_flag_set(3, MSG_FASTOPEN)], why=tfo),
                Rule("setsockopt", [_int_eq(1, IPPROTO_TCP), _int_eq(2, TCP_FASTOPEN_CONNECT)], why=tfo)]
    return out


def listen_ports_of(policy):
    """The profile's ``network.listen_ports``: a list of ports, or "any"."""
    return policy.network.get("listen_ports", [])


def listen_plan(policy, ctx, supervised: bool) -> str:
    """How listen() is ruled for this launch:
    ``allow``  the profile allows servers on any port (nothing to decide);
    ``notify`` every listen() goes to the supervisor, which decides by socket (listen_broker);
    ``later``  no supervisor: refused outright once the kernel's ZMQ sockets listen (stage 2),
               UNIX sockets included;
    ``refuse`` no supervisor and no kernel that must listen first: refused from the start."""
    if listen_ports_of(policy) == "any":
        return "allow"
    if supervised:
        return "notify"
    return "later" if getattr(ctx, "connection", None) is not None else "refuse"


def listen_rules(plan: str) -> list[Rule]:
    """The listen() rules of `plan` (see listen_plan). Not part of ``rules()`` nor of the OCI
    export: they depend on the supervisor of this launch."""
    if plan == "notify":
        return [Rule("listen", action="notify", why="listen() is decided by the supervisor (network.listen_ports)"),
                Rule("seccomp", [_int_eq(0, SECCOMP_SET_MODE_FILTER), _flag_set(1, SECCOMP_FILTER_FLAG_NEW_LISTENER)],
                     why="a newer filter's notifier would answer listen() in the supervisor's place")]
    if plan in ("later", "refuse"):
        return [Rule("listen", why="no supervisor to decide listen() by socket: refused (network.listen_ports)")]
    return []


def base_rules(memfd_noexec: bool = False) -> list[Rule]:
    """What every mode refuses (`memfd_noexec`: vm.memfd_noexec=2 is in force, pid_namespace.Entered)."""
    out = [Rule(name, why="never needed by a notebook") for name in ALWAYS_DENIED]
    out += [Rule(name, errno_=errno.ENOSYS, why="not implemented here (libraries fall back)")
            for name in NOT_IMPLEMENTED]
    out += [Rule("clone", [_flag_set(0, flag)], why="new namespaces") for flag in CLONE_NAMESPACE_FLAGS]
    memfd = "a program in a memfd runs outside Landlock's exec rules"
    out.append(Rule("memfd_create", [_flag_set(1, MFD_EXEC)], why=memfd))
    # hugetlbfs does not enforce F_SEAL_EXEC: a sealed MFD_HUGETLB memfd can be chmod +x again
    out.append(Rule("memfd_create", [_flag_set(1, MFD_HUGETLB)], why=memfd + " (hugetlbfs ignores F_SEAL_EXEC)"))
    if not memfd_noexec:
        out.append(Rule("memfd_create", [(1, "MASKED_EQ", MFD_NOEXEC_SEAL, 0)], why=memfd + " (ask for MFD_NOEXEC_SEAL)"))
    out.append(Rule("execveat", [_flag_set(4, AT_EMPTY_PATH)], why=memfd + " (execveat AT_EMPTY_PATH)"))
    # a domain a cell stacks must not turn Landlock's refusal logs off (the supervisor's trail reads
    # them, sandbox_kernel/kaudit.py): LANDLOCK_RESTRICT_SELF_LOG_SAME_EXEC_OFF, _LOG_SUBDOMAINS_OFF
    out += [Rule("landlock_restrict_self", [_flag_set(1, flag)], why="turning Landlock's refusal logs off")
            for flag in (1 << 0, 1 << 2)]
    return out + setid_rules()


def setid_rules() -> list[Rule]:
    """No set-id bit is set on any file, whoever owns it: a root tenant's setuid copy of a program
    in its notebook directory would run as root for any host user (the writable directories are
    nosuid only inside the kernel's mount namespace). open and openat are checked only when they
    create (O_CREAT, O_TMPFILE): otherwise their mode argument is not read."""
    why = "a set-id bit on a file the host can run is a privilege escalation"
    out = []
    for syscall, mode_at, flags_at in SETID_MODE_ARGS:
        for bit in (S_ISUID, S_ISGID):
            if flags_at is None:
                out.append(Rule(syscall, [_flag_set(mode_at, bit)], why=why))
            else:
                for create in (O_CREAT, O_TMPFILE_BIT):
                    out.append(Rule(syscall, [_flag_set(flags_at, create), _flag_set(mode_at, bit)], why=why))
    out.append(Rule("openat2", errno_=errno.ENOSYS, why="openat2 passes its mode in memory, which seccomp cannot "
                                                        "read (callers fall back to openat)"))
    return out


def rules(policy, socket_mode: str, memfd_noexec: bool = False) -> list[Rule]:
    """Every rule of the filter for `policy` with the socket rules of `socket_mode`
    (the policy's own mode, or stage 1's ``restricted`` for a ``none`` policy)."""
    udp = bool(policy.network["udp"]) if socket_mode == policy.network["mode"] else False
    return base_rules(memfd_noexec) + network_rules(socket_mode, udp)


# --------------------------------------------------------------------------- libseccomp


def binding():
    """Our libseccomp binding module, or raise LayerUnavailable."""
    if simulated_missing(NAME):
        raise LayerUnavailable(NAME, "libseccomp is not available (simulated)")
    from .. import libseccomp

    try:
        libseccomp.library()
    except OSError as e:
        raise LayerUnavailable(NAME, f"libseccomp cannot be loaded ({e}); install libseccomp2") from None
    return libseccomp


def prepare(policy, ctx) -> None:
    """Load libseccomp before any layer narrows the process (the file is read by the loader)."""
    if policy.enforcement(NAME) == "off" or simulated_missing(NAME):
        return
    try:
        binding()
    except LayerUnavailable:
        pass  # reported by apply()


def library_path() -> str | None:
    """The libseccomp file in use (loading it by soname if needed); None when it cannot be loaded."""
    from .. import libseccomp

    try:
        libseccomp.library()
    except OSError:
        return None
    return libseccomp.library_path() or libseccomp.SONAME


# System calls newer than some libseccomp releases know (2.5.4 knows fchmodat2; older ones skip
# the name): by number on the architectures where the number is certain, so no rule is lost.
NEWER_SYSCALLS = {"fchmodat2": {"SCMP_ARCH_X86_64": 452, "SCMP_ARCH_AARCH64": 452},
                  "landlock_restrict_self": {"SCMP_ARCH_X86_64": 446, "SCMP_ARCH_AARCH64": 446}}

# The hottest argument-checked calls are compared first (libseccomp priority 0-255): every
# file open (the set-id rules check openat's flags: 87 BPF instructions per open before openat
# had a priority, 15 with it) and every send.
HOT = {"openat": 255, "sendto": 254, "open": 253, "sendmsg": 252, "sendmmsg": 251}
# SCMP_FLTATR_CTL_OPTIMIZE 2 (a binary tree, libseccomp 2.5+) is not used: it ignores these
# priorities, so the hot calls walk more (sendto 13 -> 19, openat 15 -> 21 instructions) to
# save on cold ones (socket, clone). ``python -m benchmarks.bpf_walk`` counts both layouts.


def build(sc, rule_list: list[Rule], optimize: int | None = None):
    """A libseccomp filter (default: allow) holding `rule_list`. System calls unknown on this
    architecture are skipped (a name like `stime` exists on some ABIs only)."""
    f = sc.Filter(sc.ALLOW)
    f.set_attr(sc.ATTR_CTL_TSYNC, 1)
    if optimize:  # benchmarks.bpf_walk only
        f.set_attr(sc.ATTR_CTL_OPTIMIZE, optimize)
    # Syscalls of another ABI (i386 via int 0x80, x32) are not in the filter: kill.
    f.set_attr(sc.ATTR_ACT_BADARCH, sc.KILL_PROCESS)
    for r in rule_list:
        if sc.resolve(r.syscall) is None:
            number = NEWER_SYSCALLS.get(r.syscall, {}).get(sc.native_arch())
            if number is None:
                continue
            r = Rule(number, r.args, errno_=r.errno or errno.EPERM, action=r.action, why=r.why)
        action = sc.ERRNO(r.errno) if r.action == "errno" else {"kill_process": sc.KILL_PROCESS,
                                                                 "notify": sc.NOTIFY}[r.action]
        f.add_rule(action, r.syscall, *[(i, sc.OPS[op], v, v2) for i, op, v, v2 in r.args])
    for name, prio in HOT.items():
        if any(r.syscall == name for r in rule_list):
            f.set_priority(name, prio)
    return f


def stage_one_mode(policy, ctx) -> str:
    """The socket mode the launcher can enforce before the kernel binds its ports."""
    mode = policy.network["mode"]
    if mode == "none" and ctx.kernel_ports and ctx.transport == "tcp":
        return "restricted"  # TCP only, until the kernel's stage 2
    return mode


def needs_stage_two(policy, stage_one: str) -> bool:
    return stage_one != policy.network["mode"]


def stage_two_rules(policy, first_mode: str, memfd_noexec: bool = False) -> list[Rule]:
    """What stage 2 adds: the final mode's rules that stage 1 (`first_mode`) does not hold."""
    first = set(rules(policy, first_mode, memfd_noexec))
    return [r for r in rules(policy, policy.network["mode"], memfd_noexec) if r not in first]


def apply(policy, ctx, status, given) -> None:
    """Stage 1, in the launcher."""
    entered = given["pid_namespace"]  # (pid_namespace.Entered: vm.memfd_noexec, the supervisor's listen channel)
    channel, entered.listen_channel = entered.listen_channel, None
    try:
        level = level_or_off(policy, NAME, status)
        if level is None:
            return
        plan = listen_plan(policy, ctx, channel is not None)
        try:
            sc = binding()
            first = stage_one_mode(policy, ctx)
            if plan == "notify" and not _can_notify(sc):
                plan = listen_plan(policy, ctx, False)  # refused outright instead (closed)
            now = listen_rules(plan) if plan != "later" else []  # "later": stage 2, once ZMQ listens
            audited = bool(channel is not None and policy.audit_log and _can_notify(sc))
            base = rules(policy, first, entered.memfd_noexec)
            if audited:  # the supervisor refuses NOTIFIED calls and records them (audit trail)
                base = [Rule(r.syscall, action="notify", why=r.why) if r.syscall in NOTIFIED and not r.args else r
                        for r in base]
                # execveat AT_EMPTY_PATH too: the supervisor refuses it by the flag (a register the
                # kernel copied, not memory a thread can change) and records it; with no supervisor
                # left to answer, ENOSYS. (One action per execveat rule: see OBSERVED below.)
                base = [Rule(r.syscall, r.args, action="notify", why=r.why) if r.syscall == "execveat" else r
                        for r in base]
                if plan != "notify":
                    now += [r for r in listen_rules("notify") if r.syscall == "seccomp"]
                # connect() and execve() are shown to the supervisor, which records those Landlock
                # will refuse and lets every one go on (SECCOMP_USER_NOTIF_FLAG_CONTINUE)
                now += [Rule(name, [(4, "MASKED_EQ", AT_EMPTY_PATH, 0)] if name == "execveat" else (),
                             action="notify", why="shown to the supervisor for the audit trail")
                        for name in OBSERVED if not (name == "connect" and policy.network["mode"] == "full")]
            f = build(sc, base + now)
            f.load()
            try:
                if plan == "notify" or audited:
                    _hand_over(f, channel)
            finally:
                f.release()
        except LayerUnavailable as e:
            status.cannot(NAME, level, e.why)
            return
        except OSError as e:
            status.cannot(NAME, level, f"loading the filter failed: {e.strerror}")
            return
    finally:
        if channel is not None:
            channel.close()
    stage2 = needs_stage_two(policy, first)
    facts = {"stage_two": stage2 or plan == "later", "stage_one": first, "listen": plan, "audited": audited,
             "memfd_noexec": entered.memfd_noexec}
    ctx.handoff[NAME] = facts  # for stage 2, in the kernel (layers.handoff.handoff_from_env)
    status.active(NAME, describe(policy, facts, stage2))


def describe(policy, facts: dict, stage_two_mode: bool) -> str:
    """The report's line: `stage_two_mode` while the kernel's stage 2 has yet to narrow sockets."""
    memfd = "memfd sealed by the OS kernel" if facts["memfd_noexec"] else "memfd only with MFD_NOEXEC_SEAL"
    return (f"{len(ALWAYS_DENIED) + len(NOT_IMPLEMENTED)} syscalls denied; {memfd}; sockets: "
            + (f"TCP until the kernel's ports are bound, then {policy.network['mode']}" if stage_two_mode
               else policy.network["mode"])
            + ("; TCP Fast Open refused" if policy.network["mode"] != "full" else "")
            + "; " + LISTEN_DETAIL[facts["listen"]]
            + ("; refused system calls recorded by the supervisor (audit trail)" if facts["audited"] else ""))


LISTEN_DETAIL = {
    "allow": "listen() on any port (network.listen_ports: any)",
    "notify": "listen() decided by the supervisor: UNIX sockets, the kernel's own ports once, network.listen_ports",
    "later": "listen() refused once the kernel's sockets listen (no supervisor; UNIX sockets too)",
    "refuse": "listen() refused (no supervisor; UNIX sockets too)",
}


def _can_notify(sc) -> bool:
    """libseccomp 2.5+ (SCMP_ACT_NOTIFY, seccomp_notify_fd) and a kernel that takes a listener
    together with TSYNC (Linux 5.7+, libseccomp API level 6)."""
    lib = sc.library()
    if not hasattr(lib, "seccomp_notify_fd") or not hasattr(lib, "seccomp_api_get"):
        return False
    lib.seccomp_api_get.restype = ctypes.c_uint
    return lib.seccomp_api_get() >= 6


def _hand_over(f, channel) -> None:
    """Send the filter's listener fd to the supervisor and close it here: no process of the
    sandbox may hold it (whoever holds it answers listen())."""
    from .. import listen_broker

    fd = f.notify_fd()
    try:
        listen_broker.send_listener(channel, fd)
    finally:
        os.close(fd)


def apply_stage_two(policy, status, handoff: dict) -> None:
    """Stage 2, in the kernel after its sockets are bound: the final mode's rules (and, where
    no supervisor decides listen(), the listen() refusal). `handoff`: the launcher's
    (layers.handoff.handoff_from_env), updated here; `status`'s line says the final mode."""
    facts = handoff.get(NAME)
    if not facts or not facts["stage_two"]:
        return
    sc = binding()
    extra = listen_rules("refuse") if facts["listen"] == "later" else []
    f = build(sc, stage_two_rules(policy, facts["stage_one"], facts["memfd_noexec"]) + extra)
    f.load()
    f.release()
    facts["stage_two"] = False
    status.active(NAME, describe(policy, facts, False))


# --------------------------------------------------------------------------- OCI export


def to_oci(rule_list: list[Rule], arch: str) -> dict:
    """An OCI runtime-spec seccomp document (config-linux.md, "Seccomp") with `rule_list`.

    Rules with the same action and conditions share one entry (``names``). The default
    action is SCMP_ACT_ALLOW, so there is no ``defaultErrnoRet`` (the spec says a runtime
    must fail when it is given for an action without an errno). Only the native
    architecture is listed: runtimes apply their bad-architecture action (a kill) to
    system calls of other ABIs, as our own filter does.
    """
    entries: list[dict] = []
    where: dict[tuple, dict] = {}
    for r in rule_list:
        key = (r.action, r.errno, r.args)
        entry = where.get(key)
        if entry is None:
            entry = {"names": [], "action": {"errno": "SCMP_ACT_ERRNO", "kill_process": "SCMP_ACT_KILL_PROCESS"}[r.action]}
            if r.action == "errno":
                entry["errnoRet"] = r.errno
            if r.args:
                entry["args"] = [{"index": i, "value": v, "valueTwo": v2, "op": f"SCMP_CMP_{op}"}
                                 for i, op, v, v2 in r.args]
            where[key] = entry
            entries.append(entry)
        if r.syscall not in entry["names"]:
            entry["names"].append(r.syscall)
    return {"defaultAction": "SCMP_ACT_ALLOW", "architectures": [arch], "syscalls": entries}


def native_arch() -> str:
    """This machine's architecture as OCI documents name it (libseccomp's answer where loaded)."""
    try:
        from .. import libseccomp

        return libseccomp.native_arch()
    except OSError:
        import platform

        machines = {"x86_64": "SCMP_ARCH_X86_64", "aarch64": "SCMP_ARCH_AARCH64", "ppc64le": "SCMP_ARCH_PPC64LE",
                    "s390x": "SCMP_ARCH_S390X", "riscv64": "SCMP_ARCH_RISCV64"}
        return machines.get(platform.machine(), "SCMP_ARCH_NATIVE")


def oci_document(policy) -> dict:
    """What is in force once stage 2 has run (``rules(policy, mode)``), as an OCI seccomp
    document. A container runtime does not set vm.memfd_noexec, so the MFD_NOEXEC_SEAL rule
    is always in it. A profile that turns seccomp off gives a document without rules."""
    rule_list = [] if policy.enforcement(NAME) == "off" else rules(policy, policy.network["mode"])
    return to_oci(rule_list, native_arch())


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
