"""Landlock layer: filesystem, exec, TCP ports, scopes and device files.

Enforcement: hard (the kernel of the OS applies it; it is inherited by every child
and cannot be lifted). Applied by the launcher before the kernel's interpreter
starts, because Landlock has no TSYNC: it binds only the calling thread and the
threads and processes it creates afterwards.

Why a ctypes binding of our own: no maintained Python binding covers ABI 4+ (TCP
rules) and the PyPI ``landlock`` dev release mishandles errno. The kernel API is
three syscalls (444-446 on every architecture) and two structs.

What the rules say (computed by ``plan``):
- files, where the mount namespace's read view is made (layers/read_view.py): no filesystem
  right at all (``files_handled``): the view holds the file rules (only what may be read,
  read-only but the writable directories, noexec but exec.allow, a read-only /proc, a /dev of
  its own), and a domain that handles any filesystem right checks every open; the profile's
  ``filesystem.landlock_with_view`` has the rules below enforced there too, as a second line,
  less the read rights and truncate (a read-only open then walks no path);
- read (where there is no read view):
  ``filesystem.readable`` (system and library directories, /etc, /proc, /sys, /dev,
  the Python environment, home, notebook directory, TMPDIR; ``["/"]`` is read-everywhere)
  and the protected paths the kernel itself reads, except ``filesystem.hidden`` (the host's
  credential files) where no mount covers it, block and raw-memory devices and device
  nodes of accelerators the profile denies (Landlock only grants, so "all but X" grants
  every sibling of X along its path): the rest of the host (/root, other accounts' homes,
  other tenants' runtime directories) is not readable, root tenant or not;
- write: ``filesystem.writable`` (home, working directory, TMPDIR, /dev/shm), minus
  the protected paths (kernelspecs, profiles, the package, the child guard hook);
- execute: ``exec.allow`` directories only, and where the GPU is enabled the trusted
  paths of ``accelerators.gpu.tool_dirs`` (see ``accelerators.tool_verdicts``);
- TCP (ABI 4+): bind only the kernel's own ports and ``network.listen_ports`` (any port where
  that is ``any``); connect only, in ``restricted`` mode,
  to ``network.tcp_connect_ports`` (nothing in the kernel connects to its own ports: a
  grant would let a re-pointed inherited socket reach any host on those port numbers);
- scopes (ABI 6+): no signals to, and no abstract UNIX sockets of, processes outside;
- devices: the standard character devices read-write, allowed accelerator nodes
  read-write with ioctl, every other device read-only without ioctl (ABI 5+).
- truncate, on readable trees the mount namespace made read-only throughout (no writable
  mount below them or showing them elsewhere; the OS kernel refuses with EROFS): a grant
  that changes nothing but where an open's path walk stops (every open checks the optional
  truncate right, which otherwise no rule grants on a read-only tree: the walk went to /).
Entries created later in a directory that is not granted as a whole are denied:
this is why lazily created device nodes stay closed.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

from ..identity import is_root
from ..paths import below, realpath, remembered_realpaths, within
from .connection_dir import connection_dirs
from .program_trees import program_tree_dirs
from .python_files import python_only_bin
from .status import level_or_off, simulated_missing

NAME = "landlock"
# What this layer is (the facts every layer declares; layers/registry.py derives every list from them)
HARD = True  # enforced by the OS kernel (True) or by in-process hooks (False)
CONFIGURABLE = True  # the profile's enforcement.landlock can make it best-effort or off
CHECKED_BY_KERNEL = True  # the kernel refuses to run without the launcher's report of it
# HINT: what makes the layer available, for doctor (None: its refusal says)
HINT = ("boot a Linux kernel with Landlock enabled (5.13+; ABI 4+, Linux 6.7, for TCP port rules; "
        "`lsm=` must list landlock)")
DESCRIPTION = "read, write and exec only where the profile grants; TCP bind and connect only to the ports it names"
# DEFAULT: its enforcement level where a profile names none (None: not configurable)
DEFAULT = "required"
# README: what README.md's list of layers says of it (generated there: python -m sandbox_kernel.layer_doc --write)
README = ("ABI 4+ needed unless the network is `full`. Where the mount namespace's read view holds the file rules, "
          "TCP rules and scopes only (`filesystem.landlock_with_view: true` adds the write, exec and device rules as "
          "a second line, at ~0.1-0.3 µs per file open); elsewhere (GPU and subordinate profiles, or no namespace) "
          "also read only what `filesystem.readable` grants (less hidden"
          " credential files, block devices and denied device nodes), write where the tenant works, exec only "
          "from `exec.allow` and never inside a writable directory. TCP bind only the kernel's ports and "
          "`network.listen_ports`, and connect only to the listed ones, scopes (ABI 6).")
NEEDS = ("environment", "mount_namespace")  # the earlier layers whose results apply() reads (given[NAME])
RESULT = None  # the class of what apply() returns for later layers (None: nothing)

SYS_CREATE_RULESET, SYS_ADD_RULE, SYS_RESTRICT_SELF = 444, 445, 446
CREATE_RULESET_VERSION = 1 << 0
# landlock_restrict_self flags (ABI 7): the kernel's refusals are logged to kernel audit after its
# execve too (the launcher execs the kernel), for the supervisor's trail (sandbox_kernel/kaudit.py)
RESTRICT_SELF_LOG_NEW_EXEC_ON = 1 << 1
RULE_PATH_BENEATH, RULE_NET_PORT = 1, 2

# filesystem rights, with the ABI that introduced them
FS = {
    "execute": (1 << 0, 1), "write_file": (1 << 1, 1), "read_file": (1 << 2, 1),
    "read_dir": (1 << 3, 1), "remove_dir": (1 << 4, 1), "remove_file": (1 << 5, 1),
    "make_char": (1 << 6, 1), "make_dir": (1 << 7, 1), "make_reg": (1 << 8, 1),
    "make_sock": (1 << 9, 1), "make_fifo": (1 << 10, 1), "make_block": (1 << 11, 1),
    "make_sym": (1 << 12, 1), "refer": (1 << 13, 2), "truncate": (1 << 14, 3),
    "ioctl_dev": (1 << 15, 5),
}
FILE_ONLY = {"execute", "write_file", "read_file", "truncate", "ioctl_dev"}
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET, SCOPE_SIGNAL = 1 << 0, 1 << 1

READ = {"read_file", "read_dir"}
EXEC = READ | {"execute"}
WRITE = READ | {"write_file", "remove_dir", "remove_file", "make_dir", "make_reg", "make_sock",
                "make_fifo", "make_sym", "refer", "truncate"}
DEVICE_RW = {"read_file", "write_file", "ioctl_dev"}
STANDARD_DEVICES = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom",
                    "/dev/tty", "/dev/ptmx", "/dev/pts"]
MIN_ABI_FS = 3  # truncate(2) of read-only files is only handled from ABI 3
MIN_ABI_NET = 4


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


class _NetPortAttr(ctypes.Structure):
    _fields_ = [("allowed_access", ctypes.c_uint64), ("port", ctypes.c_uint64)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(nr: int, *args) -> int:
    res = _libc.syscall(ctypes.c_long(nr), *args)
    if res < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))
    return res


def abi_version() -> int:
    """The Landlock ABI of the running kernel; 0 when Landlock is unavailable."""
    if simulated_missing(NAME):
        return 0
    try:
        return _syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(CREATE_RULESET_VERSION))
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM):
            return 0
        raise


def rights_mask(names: set[str], abi: int, *, is_dir: bool = True) -> int:
    mask = 0
    for n in names:
        bit, since = FS[n]
        if since <= abi and (is_dir or n in FILE_ONLY):
            mask |= bit
    return mask


class Plan:
    """Every grant the ruleset will hold."""

    def __init__(self):
        self.paths: dict[str, set[str]] = {}
        self.bind_ports: list[int] = []
        self.connect_ports: list[int] = []
        self.handle_net = False
        self.handle_bind = True  # with handle_net: bind() is restricted to bind_ports
        self.read_only_trees = 0  # grants given truncate because the mounts make them read-only
        self.notes: list[str] = []

    def grant(self, path: str, rights: set[str]) -> None:
        self.paths.setdefault(path, set()).update(rights)


def _real(path: str) -> str | None:
    try:
        return realpath(path) if os.path.lexists(path) else None
    except OSError:
        return None


def grant_except(plan: Plan, root: str, rights: set[str], excluded: list[str]) -> None:
    """Grant `rights` on `root` except the subtrees in `excluded` (real paths).

    Landlock only grants, so a directory holding an excluded path is not granted
    itself: each of its entries is, recursively along the excluded path. Symbolic
    links are skipped (Landlock checks the resolved path, which is granted or not
    on its own), so a link cannot smuggle in an excluded target.
    """
    inside = [e for e in excluded if within(e, root)]
    if not inside:
        plan.grant(root, rights)
        return
    if root in inside:
        return
    if "read_dir" in rights:  # listing a directory never opens what is in it
        plan.grant(root, {"read_dir"})
    try:
        with os.scandir(root) as it:  # (an entry's type comes with the listing: no lstat per entry)
            entries = sorted(it, key=lambda e: e.name)
    except OSError:
        return
    for e in entries:
        try:
            if e.is_symlink():
                continue
        except OSError:  # (a type the listing did not give, and the entry is gone)
            continue
        grant_except(plan, e.path, rights, inside)


def _unescape(field: str) -> str:
    """A path from /proc/self/mountinfo (space, tab, newline and backslash are octal-escaped)."""
    if "\\" not in field:
        return field
    import re

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def mounts(path: str = "/proc/self/mountinfo") -> list[tuple[str, str, str, bool]]:
    """(mount point, root of the mount within its filesystem, device, read-only) per mount of
    this mount namespace, in mountinfo's order (a later mount on the same point covers an
    earlier one). Read-only: the mount's or its superblock's options say ``ro``."""
    out = []
    with open(path) as fh:
        for line in fh:
            f = line.split()
            try:
                sep = f.index("-", 6)
            except ValueError:
                continue
            ro = "ro" in f[5].split(",") or (len(f) > sep + 3 and "ro" in f[sep + 3].split(","))
            out.append((_unescape(f[4]), _unescape(f[3]), f[2], ro))
    return out


class ReadOnlyIndex:
    """`wholly_read_only` for many paths against one mount table: the mount that shows a path is
    found by looking its ancestors up (not by scanning every mount), and only the writable mounts
    are scanned after that (a kernel's view has a few, of a hundred or so mounts; the launcher asks
    for every granted tree)."""

    def __init__(self, table: list[tuple[str, str, str, bool]]):
        self.by_point = {entry[0]: entry for entry in table}  # a later mount on one point covers an earlier
        # every directory with a writable mount at or below it; per device, the writable mounts' roots
        self.above_writable: set[str] = set()
        self.writable_roots: dict[str, set[str]] = {}
        for mp, root, dev, ro in table:
            if not ro:
                self.above_writable.update(_ancestors(mp))
                self.writable_roots.setdefault(dev, set()).add(root)

    def __call__(self, path: str) -> bool:
        """See `wholly_read_only`."""
        best = next((self.by_point[a] for a in _ancestors(path) if a in self.by_point), None)
        if best is None or not best[3]:
            return False
        if path in self.above_writable:  # a writable mount at or below it
            return False
        mp, root, dev, _ro = best
        rest = path[len(mp):].lstrip("/")  # (both normalized: path is a real path, mp a mount point)
        fs_path = root if not rest else root.rstrip("/") + "/" + rest
        roots = self.writable_roots.get(dev)  # its directory reachable through a writable mount
        return not roots or not any(a in roots for a in _ancestors(fs_path))


def _ancestors(path: str):
    """`path` itself, then each directory above it, up to /."""
    while True:
        yield path
        if path == "/" or not path:
            return
        path = os.path.dirname(path)


def wholly_read_only(path: str, table: list[tuple[str, str, str, bool]]) -> bool:
    """Is every path through `path` (a real path) on a read-only mount: its own mount, every
    mount below it, and every writable mount of the same filesystem that could show its
    directory elsewhere (a bind of it or of a parent)? Then the OS kernel already refuses to
    truncate anything beneath it (EROFS), whatever Landlock says. (Many paths: ReadOnlyIndex.)"""
    return ReadOnlyIndex(table)(path)


CAP_SYS_ADMIN = 21


def _can_gain_sys_admin(status_path: str = "/proc/self/status") -> bool:
    """Does this process hold CAP_SYS_ADMIN (effective, permitted, ambient), or could it gain it
    by exec (no no_new_privs and in the bounding set)? Unreadable: assume it can."""
    try:
        with open(status_path) as fh:
            st = dict(line.rstrip("\n").split(":\t", 1) for line in fh if ":\t" in line)
        caps = {k: int(st[k].strip(), 16) for k in ("CapEff", "CapPrm", "CapAmb", "CapBnd")}
        nnp = st.get("NoNewPrivs", "0").strip() == "1"
    except (OSError, KeyError, ValueError):
        return True
    bit = 1 << CAP_SYS_ADMIN
    held = any(caps[k] & bit for k in ("CapEff", "CapPrm", "CapAmb"))
    return held or (not nnp and bool(caps["CapBnd"] & bit))


# Character devices that expose the machine as a whole to whoever may read them.
RAW_DEVICES = ["/dev/mem", "/dev/kmem", "/dev/port", "/dev/kmsg"]


def sensitive_devices(root: str = "/dev") -> list[str]:
    """Block devices (a disk read raw bypasses every path rule, for root or a disk group) and
    the raw memory and kernel log nodes: left out of the read grant. (Landlock refuses new ones
    too: a directory holding an excluded node is granted entry by entry.)"""
    out = [d for d in RAW_DEVICES if os.path.exists(d)]
    stack = [root]
    while stack:
        d = stack.pop()
        try:
            entries = list(os.scandir(d))
        except OSError:
            continue
        for e in entries:
            try:
                if e.is_symlink():
                    continue
                if e.is_dir(follow_symlinks=False):
                    if e.path not in ("/dev/pts", "/dev/shm", "/dev/mqueue", "/dev/hugepages"):
                        stack.append(e.path)
                elif stat.S_ISBLK(e.stat(follow_symlinks=False).st_mode):
                    out.append(e.path)
            except OSError:
                continue
    return out


def _audit_dir_unreadable(policy, ctx, p: Plan) -> list[str]:
    """The audit log's directory, where the supervisor writes the trail (trail.py): the kernel
    reads none of it (other kernels' records, the counters), only writes its own FIFO there
    (granted on its own below). Not where the directory holds something the kernel needs."""
    if not policy.audit_log or not getattr(ctx, "audit_fifo", None):
        return []
    d = _real(os.path.dirname(os.path.abspath(policy.audit_log)))
    if not d or d == "/":
        return []
    needed = ctx.readable_paths(policy) + ctx.expand_paths(policy.data["exec"]["allow"]) \
        + ctx.expand_paths(policy.data["filesystem"]["writable"]) + [os.getcwd(), ctx.home or ""]
    inside = [n for n in filter(None, map(_real, needed)) if within(n, d)]
    if inside:
        p.notes.append(f"the audit log's directory {d} holds {inside[0]}, which the kernel needs: the kernel can "
                       f"read the trail (keep audit.log in a directory of its own)")
        return []
    return [d]


def _grant_reads(policy, ctx, p: Plan, mounted, denied_devices: list[str]) -> None:
    unreadable = list(denied_devices)
    covered = [realpath(c) for c in mounted.covered]
    for h in connection_dirs(ctx, policy) + list(policy.data["filesystem"].get("hidden", [])):
        rh = _real(h)
        if rh and not any(within(rh, c) for c in covered):
            unreadable.append(rh)
    unreadable += sensitive_devices()
    unreadable += _audit_dir_unreadable(policy, ctx, p)
    for r in dict.fromkeys(filter(None, map(_real, ctx.readable_paths(policy)))):
        grant_except(p, r, READ, unreadable)
    for f in ctx.read_kept():
        p.grant(f, {"read_file"})
    if ctx.connection is not None:  # the kernel reads its own connection file (wherever it lies, e.g. a
        own = _real(ctx.connection.path)  # shared scratch directory the mount namespace covered)
        if own:
            p.grant(own, {"read_file"})


def plan(policy, ctx, mounted=None, judged=None, files: bool = True) -> Plan:
    """Compute the grants for `policy` in launch context `ctx` (see layers.context), given what
    the mount_namespace layer made (`mounted`: mount_namespace.Mounted; None: nothing) and the GPU
    tool verdicts of the environment layer (`judged`: environment.Judged; None: judged here).
    `files`: False plans the TCP rules only (``files_handled``: the read view holds the file rules)."""
    p = Plan()
    if files:
        with remembered_realpaths():  # (the view does not change while the plan is made)
            _plan_files(p, policy, ctx, mounted, judged)
    _plan_net(p, policy, ctx)
    return p


def files_handled(policy, mounted, abi: int) -> bool:
    """Whether the ruleset handles filesystem rights. Not where the mount namespace's read view
    holds the file rules (read-only mounts but the writable directories, noexec but exec.allow, a
    read-only /proc, a /dev of its own: mount_namespace, read_view), unless the profile asks for
    Landlock as a second line there (``filesystem.landlock_with_view``): on Linux 6.18 a domain
    that handles any filesystem right, even one an open does not request, checks every open
    (~0.1-0.3 µs per open+read+close, ``python -m benchmarks.landlock_open_cost``). Kept too where
    the domain would otherwise handle nothing (no TCP rule, no scope before ABI 6): a domain of
    some kind is what keeps a cell from ptrace-attaching to processes outside it."""
    if mounted is None or not mounted.reads or policy.data["filesystem"].get("landlock_with_view", False):
        return True
    return not (abi >= 6 or (policy.network["mode"] != "full" and abi >= 4))


def _plan_files(p: Plan, policy, ctx, mounted, judged) -> None:
    from .. import accelerators
    from . import mount_namespace

    if mounted is None:
        mounted = mount_namespace.NOTHING

    # Protected paths need not exist yet: a missing one closes its nearest existing parent
    # to new entries (the launcher creates missing protected directories beforehand).
    # Paths the mount_namespace layer made read-only mounts, or covered with the kernel's own
    # view (the runtime directory), need no Landlock exclusion.
    protected = sorted(p for p in {realpath(x) for x in ctx.protected_paths(policy)}
                       if not any(within(p, m) for m in mounted.readonly + mounted.covered))
    allowed_devices = accelerators.allowed_nodes(policy)  # resolved once (MIG: capability files, NVML)
    denied_devices = [r for r in (_real(x) for x in accelerators.denied_nodes(policy, allowed_devices)) if r]

    # read what filesystem.readable grants (and what the kernel must read: the protected paths),
    # but not denied device nodes, block and raw-memory devices, and, where the mount namespace
    # could not give this kernel a private view, other kernels' connection files (Jupyter's
    # runtime directory, except this kernel's own file) and filesystem.hidden
    # (none of this where the mount namespace's read view grants the reads: apply() then handles no
    # read right, and the view's own /dev leaves those devices out, read_view.devices)
    if not mounted.reads:
        _grant_reads(policy, ctx, p, mounted, denied_devices)

    # write where the tenant works, minus protected paths (and denied devices)
    writable = []
    for w in ctx.expand_paths(policy.data["filesystem"]["writable"]):
        rw = _real(w)
        if rw and os.path.isdir(rw):
            writable.append(rw)
            grant_except(p, rw, WRITE, protected + denied_devices)

    # execute only from exec.allow (directories or single files such as the ELF loader), and,
    # with noexec_writable (W^X), never inside a writable directory: such a directory is left
    # out of any exec grant above it, and an exec.allow entry equal to one runs nothing
    # (exec directories strictly inside one are protected, i.e. read-only, and keep exec)
    wx = policy.data["filesystem"].get("noexec_writable", True)
    # a venv's bin granted only through {python} (its console scripts): not the ELF programs a wheel
    # put there (program_trees' list: they are mounted noexec too, where there is a mount namespace)
    env_bin = python_only_bin(policy, ctx)
    env_programs = [t for t in program_tree_dirs() if env_bin and below(t, env_bin)]
    for d in ctx.expand_paths(policy.data["exec"]["allow"]):
        rd = _real(d)
        if not rd:
            continue
        if wx and rd in writable:
            p.notes.append(f"exec.allow {d} runs nothing: it is writable (filesystem.noexec_writable)")
            continue
        grant_except(p, rd, EXEC, ([w for w in writable if within(w, rd) and w != rd] if wx else [])
                     + (env_programs if rd == env_bin else []))

    # GPU tools (nvidia-smi and what its wrapper execs), GPU profiles only, from trusted paths only
    tools = judged.gpu_tools if judged is not None else accelerators.tool_verdicts(policy, ctx)
    for _entry, path, state, _detail in tools:
        if state == accelerators.GRANTED:
            p.grant(path, EXEC)
    p.notes += [f"GPU tool {line}" for line in accelerators.describe_tools(
        [t for t in tools if t[2] != accelerators.ABSENT])]

    # devices: the standard ones read-write; allowed accelerator nodes read-write + ioctl
    for dev in STANDARD_DEVICES + allowed_devices:
        rd = _real(dev)
        if rd and rd not in denied_devices:
            p.grant(rd, DEVICE_RW)

    # the audit FIFO to the supervisor (or, without a supervisor, the log file itself), created
    # beforehand: write only, its directory stays closed. With a supervisor the log is not granted.
    target = getattr(ctx, "audit_target", None)
    if target and os.path.exists(target):
        p.grant(realpath(target), {"write_file"})

    # /proc: NVIDIA's driver (570+) writes /proc/<pid>/task/<tid>/comm during cuInit, for
    # threads and processes created later: grant the mount, never a resolved /proc/self.
    # As root this is safe only once the mount namespace has made /proc/sys, /proc/sysrq-trigger
    # and the like read-only; without it /proc stays read-only (and cuInit may fail with 304).
    if policy.gpu["enabled"]:
        if not is_root() or mounted.proc_hardened:
            p.grant("/proc", {"write_file", "truncate"})  # fopen(path, "w") truncates
            p.notes.append("/proc is writable because the GPU is enabled (NVIDIA driver 570+ writes task comm files)")
        else:
            p.notes.append("/proc stays read-only: as root without the mount namespace, /proc/sys and "
                           "/proc/sysrq-trigger could not be made read-only (NVIDIA driver 570+ may fail cuInit)")

    # Every open of a file checks its read right and the optional truncate right, walking up the
    # path until one rule grants both: on a read-only tree that grants no truncate, to /. Where
    # the mount view already makes a granted tree read-only throughout (the OS kernel refuses
    # truncate with EROFS), truncate is granted there too, so the walk stops at its grant. Safe
    # because the mount topology cannot change under the ruleset: Landlock refuses mount,
    # umount, remount and pivot_root to every process in its domain (ABI 1); mount_setattr(2),
    # which no LSM hook sees, needs CAP_SYS_ADMIN over the mounts: granted only where this
    # process has it nowhere and cannot gain it (no_new_privs or not in the bounding set).
    if mounted.readonly and not mounted.reads and not _can_gain_sys_admin():  # the view made the host read-only
        try:
            table = mounts()
        except OSError:
            table = []
        read_only = ReadOnlyIndex(table)
        for path, rights in list(p.paths.items()):
            if "read_file" in rights and "truncate" not in rights and read_only(path):
                rights.add("truncate")
                p.read_only_trees += 1


def _plan_net(p: Plan, policy, ctx) -> None:
    mode = policy.network["mode"]
    if mode != "full":
        p.handle_net = True
        listen = policy.network.get("listen_ports", [])
        if listen == "any":
            p.handle_bind = False  # servers on any port: bind is not restricted (connect still is)
        else:
            p.bind_ports = sorted(set(ctx.kernel_ports) | set(listen))
        p.connect_ports = sorted(set(policy.network["tcp_connect_ports"])) if mode == "restricted" else []


def prepare(policy, ctx) -> None:
    """Nothing to do before any layer narrows the process."""


def apply(policy, ctx, status, given) -> None:
    """Build and enforce the ruleset for the calling thread (before any other thread starts)."""
    level = level_or_off(policy, NAME, status)
    if level is None:
        return
    abi = abi_version()
    needed = MIN_ABI_NET if policy.network["mode"] != "full" else MIN_ABI_FS
    if abi < needed:
        why = ("this kernel has no Landlock (needs Linux 5.13+ with landlock in the lsm= list)" if abi == 0
               else f"Landlock ABI {abi} is older than the ABI {needed} this profile needs "
                    f"({'TCP port rules' if needed == MIN_ABI_NET else 'truncate rights'})")
        if level == "required" or abi == 0:
            status.cannot(NAME, level, why)
            return
    mounted = given["mount_namespace"]
    files = files_handled(policy, mounted, abi)
    pl = plan(policy, ctx, mounted, given["environment"], files=files)
    handled_fs = rights_mask(set(FS), abi) if files else 0
    if files and mounted is not None and mounted.reads:
        # the kernel's view holds only what it may read (mount_namespace, read_view), read-only but the
        # writable directories: no read right and no truncate handled, so no path walk on a read-only open.
        # Truncate only where this process cannot gain CAP_SYS_ADMIN: mount_setattr(2), which no LSM hook
        # sees, could otherwise clear a mount's read-only flag (seccomp refuses it too)
        handled_fs &= ~rights_mask(READ | (set() if _can_gain_sys_admin() else {"truncate"}), abi)
    handled_net = ((NET_BIND_TCP if pl.handle_bind else 0) | NET_CONNECT_TCP) if (pl.handle_net and abi >= 4) else 0
    scoped = (SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL) if abi >= 6 else 0
    try:
        _enforce(pl, abi, handled_fs, handled_net, scoped,
                 RESTRICT_SELF_LOG_NEW_EXEC_ON if abi >= 7 and policy.audit_log else 0)
    except OSError as e:
        why = f"{e.strerror} while building the ruleset"
        status.cannot(NAME, level, why)
        return
    missing = []
    if abi < MIN_ABI_FS and files:
        missing.append("truncate rights (ABI 3)")
    if pl.handle_net and abi < 4:
        missing.append("TCP rules (ABI 4)")
    if abi < 5 and files:
        missing.append("device ioctl rights (ABI 5)")
    if abi < 6:
        missing.append("signal and abstract-socket scopes (ABI 6)")
    tcp = (f"TCP bind {pl.bind_ports if pl.handle_bind else 'any port'}, connect {pl.connect_ports}"
           if handled_net else "TCP not restricted")
    if not files:
        detail = (f"ABI {abi}; {tcp}; files: the mount namespace's read view (read-only but the writable "
                  "directories, noexec but exec.allow), no filesystem right handled here "
                  "(filesystem.landlock_with_view: false)")
    else:
        detail = (f"ABI {abi}; {len(pl.paths)} path rules; exec from {len(policy.data['exec']['allow'])} allow "
                  f"entries; {tcp}"
                  + ("; reads and truncate: the mount namespace's view (not handled here; the rest a second line: "
                     "filesystem.landlock_with_view)" if mounted is not None and mounted.reads
                     else (f"; truncate granted on {pl.read_only_trees} read-only mounted trees (EROFS "
                           "there: shorter path walks)" if pl.read_only_trees else "")))
    detail += ("; " + "; ".join(pl.notes) if pl.notes else "")
    if missing:
        status.partial(NAME, detail + "; missing: " + ", ".join(missing), abi=abi)
    else:
        status.active(NAME, detail, abi=abi)


def _enforce(pl: Plan, abi: int, handled_fs: int, handled_net: int, scoped: int, restrict_flags: int = 0) -> None:
    attr = _RulesetAttr(handled_fs, handled_net, scoped)
    size = ctypes.sizeof(_RulesetAttr) if abi >= 6 else (16 if abi >= 4 else 8)
    ruleset = _syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    try:
        for path, rights in sorted(pl.paths.items()):
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # vanished since planning: nothing to grant
            try:
                is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
                mask = rights_mask(rights, abi, is_dir=is_dir) & handled_fs
                if mask:
                    rule = _PathBeneathAttr(mask, fd)
                    _syscall(SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(RULE_PATH_BENEATH),
                             ctypes.byref(rule), ctypes.c_uint32(0))
            finally:
                os.close(fd)
        if handled_net:
            for port, access in _port_rules(pl):
                rule = _NetPortAttr(access, port)
                _syscall(SYS_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(RULE_NET_PORT),
                         ctypes.byref(rule), ctypes.c_uint32(0))
        _syscall(SYS_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(restrict_flags))
    finally:
        os.close(ruleset)


def _port_rules(pl: Plan) -> list[tuple[int, int]]:
    rules: dict[int, int] = {}
    for port in pl.bind_ports:
        rules[port] = rules.get(port, 0) | NET_BIND_TCP
    for port in pl.connect_ports:
        rules[port] = rules.get(port, 0) | NET_CONNECT_TCP
    return sorted(rules.items())


def describe_abi() -> str:
    abi = abi_version()
    return f"ABI {abi}" if abi else "unavailable"
