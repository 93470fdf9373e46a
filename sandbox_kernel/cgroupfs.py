"""cgroupfs as this process finds it: the mount table, cgroup v1, v2 or hybrid, our own group
in each hierarchy, the parent a platform names, systemd's delegation, and the names of the
kernels' groups. Read-only: nothing here creates, joins or kills a group (placement is the
cgroup layer, ``layers/cgroup.py``; kill and sweep are the supervisor's, ``supervisor.py``).

A directory is taken for a cgroup only where statfs(2) says it is on a cgroup filesystem
(``is_cgroupfs``), never because it looks like one (a read-only /sys/fs/cgroup, a container's
plain directory).
"""

from __future__ import annotations

import ctypes
import os

from .errors import SandboxError
from .paths import below, within

ROOT = "/sys/fs/cgroup"
PREFIX = "sandbox-kernel-"
PARENT_ENV = "SANDBOX_KERNEL_CGROUP_PARENT"
PARENT_FILE = "/etc/sandbox-kernel/cgroup-parent"
SYSTEMD_MARKER = "/run/systemd/system"  # sd_booted(): systemd manages the hierarchy
CGROUP2_SUPER_MAGIC = 0x63677270
CGROUP_SUPER_MAGIC = 0x27E0EB
_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-")


# --------------------------------------------------------------------------- small helpers


class _Statfs(ctypes.Structure):
    # struct statfs starts with f_type (__fsword_t, a long) on every Linux ABI we run on;
    # the rest is padding large enough for the whole structure.
    _fields_ = [("f_type", ctypes.c_long), ("_rest", ctypes.c_byte * 256)]


_libc = ctypes.CDLL(None, use_errno=True)


def fs_magic(path: str) -> int | None:
    """statfs(2)'s f_type for `path`, or None where it cannot be read."""
    buf = _Statfs()
    if _libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return None
    return buf.f_type & 0xFFFFFFFF


def is_cgroupfs(path: str) -> bool:
    """A real cgroup filesystem (v1 or v2), never a plain directory that merely looks like one."""
    return fs_magic(path) in (CGROUP2_SUPER_MAGIC, CGROUP_SUPER_MAGIC)


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _write(path: str, value: str) -> None:
    # O_WRONLY without O_CREAT: a missing control file is an error, never a new plain file.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def procs(group: str) -> list[int]:
    """The processes of a group as this process sees them (0: one outside our PID namespace)."""
    try:
        return [int(x) for x in _read(os.path.join(group, "cgroup.procs")).split()]
    except (OSError, ValueError):
        return []


def start_time(pid: int | str) -> int | None:
    """Field 22 of /proc/<pid>/stat: when the process started, in clock ticks since boot."""
    try:
        data = _read(f"/proc/{pid}/stat")
        return int(data[data.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _nspids(pid: int) -> list[int]:
    try:
        for line in _read(f"/proc/{pid}/status").splitlines():
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return [pid]


def _strerror(e: OSError) -> str:
    return e.strerror or str(e)


def group_name(kernel_id: str, pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    kid = "".join(c if c in _NAME_CHARS else "_" for c in (kernel_id or "")[:64]) or "x"
    return f"{PREFIX}{kid}-{pid}-{start_time(pid) or 0}"


def parse_group_name(name: str) -> tuple[str, int, int] | None:
    """(kernel id, supervisor pid, its start time) of a group named by group_name(), else None.
    (No regular expression: compiling one costs the launcher a millisecond at every start.)"""
    if not name.startswith(PREFIX):
        return None
    parts = name[len(PREFIX):].rsplit("-", 2)
    if len(parts) != 3 or not parts[0] or not parts[1].isdigit() or not parts[2].isdigit():
        return None
    if not set(parts[0]) <= _NAME_CHARS or not parts[1].isascii() or not parts[2].isascii():
        return None
    return parts[0], int(parts[1]), int(parts[2])


# --------------------------------------------------------------------------- hierarchies


def _unescape(field: str) -> str:
    if "\\" not in field:
        return field
    import re  # a mount point with an escaped character: rare, and only then

    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts() -> list[tuple[str, str, str, list[str]]]:
    """(mount point, root inside the hierarchy, fstype, super options) of every cgroup mount."""
    out = []
    try:
        lines = _read("/proc/self/mountinfo").splitlines()
    except OSError:
        return out
    for line in lines:
        left, _, right = line.partition(" - ")
        f, r = left.split(), right.split()
        if len(f) >= 5 and len(r) >= 3 and r[0] in ("cgroup", "cgroup2"):
            out.append((_unescape(f[4]), _unescape(f[3]), r[0], r[2].split(",")))
    return out


def _own_paths(pid: int | str = "self") -> dict[str, str]:
    """controller (or '' for v2) -> path of the process's group, from /proc/<pid>/cgroup."""
    out = {}
    try:
        lines = _read(f"/proc/{pid}/cgroup").splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3:
            for c in (parts[1].split(",") if parts[1] else [""]):
                out[c] = parts[2]
    return out


def _in_mount(mountpoint: str, mount_root: str, path: str) -> str | None:
    """The directory of cgroup `path` under a mount of the hierarchy rooted at `mount_root`."""
    root = mount_root.rstrip("/")
    if not within(path, root) and root:
        return None
    rel = path[len(root):].strip("/")
    return os.path.join(mountpoint, rel) if rel else mountpoint


class Hierarchy:
    """One cgroup hierarchy as this process sees it: where it is mounted and our group in it."""

    def __init__(self, version: int, mount: str, own: str | None, controllers: list[str]):
        self.version = version
        self.mount = mount
        self.own = own  # our group's directory (None: not visible under the mount)
        self.controllers = controllers  # v1: the hierarchy's controllers; v2: those available at its root

    def __repr__(self) -> str:
        return f"Hierarchy(v{self.version}, {self.mount}, own={self.own}, {self.controllers})"


def unified() -> bool:
    """True on a cgroup v2 (unified) host: /sys/fs/cgroup itself is a cgroup2 filesystem."""
    return fs_magic(ROOT) == CGROUP2_SUPER_MAGIC


def hierarchies() -> list[Hierarchy]:
    """On a unified host the one v2 hierarchy at /sys/fs/cgroup; otherwise the v1 hierarchies
    of the pids, memory and freezer controllers (hybrid hosts bind those to v1)."""
    own = _own_paths()
    mounts = _mounts()
    if unified():
        for mp, mroot, fstype, _ in mounts:
            if fstype == "cgroup2" and mp == ROOT:
                try:
                    ctrls = _read(os.path.join(ROOT, "cgroup.controllers")).split()
                except OSError:
                    ctrls = []
                return [Hierarchy(2, ROOT, _in_mount(ROOT, mroot, own.get("", "/")), ctrls)]
        return [Hierarchy(2, ROOT, _in_mount(ROOT, "/", own.get("", "/")), [])]
    out, seen = [], set()
    for mp, mroot, fstype, opts in mounts:
        if fstype != "cgroup":
            continue
        ctrls = [c for c in ("pids", "memory", "freezer") if c in opts]
        if not ctrls or ctrls[0] in seen or not below(mp, ROOT):
            continue
        seen.update(ctrls)
        path = own.get(ctrls[0])
        out.append(Hierarchy(1, mp, _in_mount(mp, mroot, path) if path is not None else None, ctrls))
    return out


# --------------------------------------------------------------------------- configuration


def named_parent(env: dict[str, str] | None = None) -> tuple[str, str] | None:
    """(cgroup path, where it was set) of the parent the platform names, or None.

    Raises SandboxError for a malformed value (naming the variable or file and the fix)."""
    env = os.environ if env is None else env
    value, source = env.get(PARENT_ENV, "").strip(), PARENT_ENV
    if not value:
        try:
            with open(PARENT_FILE) as fh:
                lines = [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SandboxError(f"{PARENT_FILE}: cannot read it ({_strerror(e)}); make it readable or remove it") from None
        if not lines:
            return None
        value, source = lines[0], PARENT_FILE
    if not value.startswith("/") or "\0" in value or any(p in ("..", ".") for p in value.split("/")):
        raise SandboxError(f"{source}={value!r}: the cgroup parent must be an absolute cgroup path without '.' or "
                           f"'..' (e.g. /jupyter.slice/kernels.scope, as in /proc/self/cgroup, or a directory "
                           f"under {ROOT})")
    return value, source


def _parent_dir(h: Hierarchy, value: str, source: str) -> str:
    """The directory of the named parent in hierarchy `h` (a cgroup path, or a path under the mount)."""
    if within(value, h.mount):
        d = value
    elif h.version == 1 and below(value, ROOT):
        raise SandboxError(f"{source}={value!r}: on this cgroup v1 host name the parent as a cgroup path "
                           f"(e.g. /kernels), which is used in each of the pids, memory and freezer hierarchies")
    else:
        d = os.path.join(h.mount, value.strip("/"))
    if not os.path.isdir(d):
        raise SandboxError(f"{source}={value!r}: {d} does not exist; create that cgroup (for systemd, a scope or "
                           f"service with Delegate=yes) or fix {source}")
    if not is_cgroupfs(d):
        raise SandboxError(f"{source}={value!r}: {d} is not on a cgroup filesystem; name a directory under a "
                           f"cgroup mount ({h.mount})")
    return d


def systemd_managed() -> bool:
    return os.path.isdir(SYSTEMD_MARKER)


def delegated(d: str, mount: str) -> bool:
    """`d` lies in a subtree systemd delegated (Delegate=yes marks the unit's group with the
    trusted.delegate or user.delegate xattr), at or below the marked group."""
    d = d.rstrip("/")
    while below(d, mount):
        for attr in ("trusted.delegate", "user.delegate"):
            try:
                if os.getxattr(d, attr).strip() == b"1":
                    return True
            except OSError:
                pass
        d = os.path.dirname(d)
    return False
