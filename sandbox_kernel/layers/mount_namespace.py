"""Mount namespace: each kernel's private view of the filesystem.

Enforcement: hard. In the kernel's own mount namespace (entered by the PID namespace's
init, see the pid_namespace layer, or here when that layer is off or unavailable; an ordinary user gets a user
namespace mapping only its own uid and gid), before Landlock forbids mounting:

- **read-only /**: once the view is built, every mount in it is made read-only
  (mount_setattr(2) with AT_RECURSIVE, all or nothing; before Linux 5.12, a bind remount of
  each mount in /proc/self/mountinfo keeping the flags a user namespace locks; neither: the
  layer fails closed), and only what must be writable is made read-write again: each
  ``filesystem.writable`` directory (bound onto itself where it is not a mount point), the
  private /tmp and /dev/shm, what was brought back read-write (the audit log, an ipc socket
  directory) and /proc as it was. Host mounts that were read-only, and every read-only mount
  below a writable directory (protected paths, the connection file), stay read-only. Landlock
  has no right for chmod, chown, utime or xattrs: here a root tenant changed the mode, owner
  and times of host files outside every writable directory, and made a setuid-root copy of a
  program. On a read-only mount all of these fail (EROFS); device nodes keep working (a
  read-only mount does not stop writes to a character device) and so do ptys. The supervisor
  is outside this namespace (the PID namespace's init enters it): it still kills and removes
  the kernel's cgroup when the kernel exits.
- **private /tmp and /dev/shm**: fresh tmpfs mounts sized by ``filesystem.tmp_size`` and
  ``filesystem.shm_size``; nothing another kernel wrote there is visible, and their
  pages are charged to the kernel's memory cgroup and freed with the namespace when the
  kernel exits. TMPDIR becomes /tmp. What lies under the host's /tmp or /dev/shm and the
  kernel needs is brought back (a checkout cloned into /tmp with its .venv): read-only, the
  environment (sys.prefix and the base interpreter's), this package, the kernelspec and
  profile directories and the policy cache; $HOME and the working directory read-write where
  the profile makes them writable (the host's directories, not the private /tmp's), with the
  protected paths inside them read-only mounts as anywhere else.
- **Jupyter's runtime directory**, and any other directory holding the connection file, is
  covered by a tmpfs holding only this kernel's own connection file (read-only): other
  kernels' connection files, and so their HMAC keys, are out of reach even for a kernel of
  the same uid. That holds when the directory also holds a writable directory of the tenant
  (connection files in /scratch, HOME=/scratch/<user>): that directory is brought back into
  the tmpfs. A connection file in a directory the tenant writes itself (its working
  directory) cannot be hidden: the launcher refuses to start there
  (``connection_dir.connection_dir_problem``), and so does this layer when it cannot apply
  and the connection file lies under the host's /tmp or /dev/shm (then shared).
- ``filesystem.hidden`` (host daemons' sockets by default) is covered: a socket that
  cannot be reached by path cannot be connected to.
- ``filesystem.home`` (set by the launcher: HOME and ``{home}`` become the tenant's own
  directory, so tenants that share a uid each get their own) is bound back into place when
  ``hidden`` covers the directory that holds every tenant's home.
- **W^X**: with ``filesystem.noexec_writable`` (on in every shipped profile) every
  writable directory is remounted ``noexec,nosuid,nodev``, so ``ld.so ./binary`` and
  ``mmap(PROT_EXEC)``/``dlopen`` of files there fail, not only ``execve`` (which Landlock
  refuses anyway). Protected paths inside writable directories (kernelspecs, profiles,
  the policy cache, this package, the interpreter and its standard library, and every
  ``exec.allow`` directory, see ``LaunchContext.protected_paths``) become read-only bind
  mounts of the original, keeping ``exec`` where they are programs; each directory between
  the writable root and a protected path is bound onto itself so it cannot be renamed
  away (EBUSY).
- **/proc**: with a PID namespace, a fresh procfs that shows only this kernel's
  processes; for root, ``/proc/sys``, ``sysrq-trigger``, ``irq``, ``bus`` and ``fs`` are
  read-only (as container runtimes do); under the read view all of /proc is.
- **the read view** (``read_view.py``): once the view above is made, the kernel's root
  becomes a tmpfs holding only what it may read (``filesystem.readable``, the protected,
  writable and exec.allow paths, its connection file) bound from that view, and a /dev of its
  own with the standard devices and a devpts instance; the rest of the host is absent, /proc
  is read-only, and Landlock handles no filesystem right (``landlock.files_handled``: an open
  costs what it costs under bubblewrap's mounts; ``filesystem.landlock_with_view`` keeps its
  write, exec and device rules as a second line). Not for GPU profiles, ``host_uid: subordinate``, an audit log the kernel cannot be
  kept from reading (read_view.why_not), a
  profile that reads ``/``, or where ``SANDBOX_KERNEL_READ_VIEW=off``: there Landlock's read
  rules grant the reads, as without a namespace.

The working directory, the connection file and an ipc socket directory that lie under a
covered path are bound back into place, and the process moves into the new view of its
working directory. seccomp denies mount/umount afterwards (and Landlock, where it handles
filesystem rights), and no capability that could is left, so nothing here can be undone
from a cell. Without a namespace, Landlock closes the parents of protected
paths instead, /tmp and /dev/shm stay shared, and / stays writable where the tenant's
permissions allow (a root tenant can then change the mode, owner and times of root's files);
the layer reports why.
"""

from __future__ import annotations

import ctypes
import os
import stat

from ..identity import is_root
from ..paths import below, real_exec_allowed, real_writable, realpath, remembered_realpaths, within
from ..profile_files import search_path
from .connection_dir import check_connection_dir, connection_dirs
from .jupyter_paths import jupyter_path
from .program_trees import program_tree_dirs
from . import read_view
from .python_files import env_paths, python_only_bin, python_program_dirs, trusted_paths
from .status import level_or_off, simulated_missing
from .system_dirs import PROGRAM_DIRS

NAME = "mount_namespace"
# What this layer is (the facts every layer declares; layers/registry.py derives every list from them)
HARD = True  # enforced by the OS kernel (True) or by in-process hooks (False)
CONFIGURABLE = True  # the profile's enforcement.mount_namespace can make it best-effort or off
CHECKED_BY_KERNEL = False  # the kernel refuses to run without the launcher's report of it
# HINT: what makes the layer available, for doctor (None: its refusal says)
HINT = "as root: CAP_SYS_ADMIN; as an ordinary user: unprivileged user namespaces"
DESCRIPTION = ("the kernel's private view: everything read-only but the writable directories, its own /tmp and "
               "/dev/shm, hidden paths covered")
# DEFAULT: its enforcement level where a profile names none (None: not configurable)
DEFAULT = "best-effort"
# README: what README.md's list of layers says of it (generated there: python -m sandbox_kernel.layer_doc --write)
README = ("the kernel's private view: `/` and every other mount read-only (bubblewrap's `--ro-bind / /`: "
          "`mount_setattr(2)`, or a bind remount of each mount before Linux 5.12; the layer fails closed when "
          "neither works; `doctor` says which one this host has), with only the writable directories, the "
          "private `/tmp` and `/dev/shm`, the audit FIFO to the supervisor and `/proc` read-write again, so no "
          "host file outside the writable directories can be chmod-ed, chown-ed, re-timed, given xattrs or made"
          " setuid, even by root (Landlock has no right for those); its own tmpfs `/tmp` and `/dev/shm` "
          "(`filesystem.tmp_size`, `shm_size`; TMPDIR=/tmp; gone with the kernel), with what the kernel needs "
          "from the host's `/tmp` or `/dev/shm` brought back (a checkout cloned into `/tmp`: the environment, "
          "the package, kernelspecs and profiles read-only; `$HOME` and the working directory as the profile "
          "says, their protected paths read-only); Jupyter's runtime directory, and any directory holding the "
          "connection file (also one holding the tenant's home, such as a shared `/scratch`), holding only its "
          "own connection file, `filesystem.hidden` covered (the tenant's own `filesystem.home` bound back "
          "inside a hidden parent), a fresh `/proc` showing only its processes; writable directories remounted "
          "`noexec,nosuid,nodev` (`filesystem.noexec_writable`); protected paths inside writable directories "
          "read-only bind mounts of the originals (their parents pinned so they cannot be renamed away), and "
          "for root `/proc/sys`, `/proc/sysrq-trigger`, `/proc/irq`, `/proc/bus` and `/proc/fs` too. It is "
          "entered by the PID namespace's init, in the kernel's own user namespace. Without it, Landlock "
          "protects the same paths by not granting their parents as a whole (then nothing new can be created "
          "directly in those parents), keeps other kernels' connection files unreadable, and `/tmp` and "
          "`/dev/shm` are shared (a kernel whose connection file lies under them then refuses to start). The read "
          "view: the kernel's root then holds only what `filesystem.readable` (and the protected, writable and "
          "`exec.allow` paths) grant, with a `/dev` of its own (standard devices, its own devpts): the rest of "
          "the host is absent, `/proc` is read-only too, and Landlock handles no filesystem right, so an open "
          "costs what it does under bubblewrap (`filesystem.landlock_with_view: true` keeps Landlock's write, exec "
          "and device rules as a second line; not for "
          "GPU profiles, `host_uid: subordinate`, or `SANDBOX_KERNEL_READ_VIEW=off`; with an audit log the kernel's "
          "FIFO to the supervisor is mode 0200 on a read-only mount).")
NEEDS = ("pid_namespace",)  # the earlier layers whose results apply() reads (given[NAME])
# RESULT (below): the class of what apply() returns for later layers
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MS_REMOUNT, MS_BIND, MS_REC, MS_SLAVE = 32, 4096, 16384, 1 << 19
SAFE = MS_NOSUID | MS_NODEV
ST_RDONLY = 1  # statvfs f_flag
# statvfs f_flag bits -> mount flags that a remount must keep (locked in a user namespace)
_KEEP_FLAGS = {2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME, 2048: MS_NODIRATIME, 4096: MS_RELATIME}
PROC_READONLY = ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"]
RUNTIME_TMPFS = "size=4m,mode=700"
HIDDEN_TMPFS = "size=64k,mode=755"

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]


def _check(res: int, what: str) -> None:
    if res != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _mount(src, target, flags, fstype: str | None = None, data: str | None = None) -> None:
    _check(_libc.mount(src and os.fsencode(src), os.fsencode(target), fstype and fstype.encode(), flags,
                       data and ctypes.c_char_p(data.encode())), f"mount {target}")


def _flags_of(st_flags: int) -> int:
    return sum(ms for bit, ms in _KEEP_FLAGS.items() if st_flags & bit)


def writable_dirs(policy, ctx) -> list[str]:
    return list(dict.fromkeys(w for w in real_writable(policy, ctx) if os.path.isdir(w)))


def targets(policy, ctx, covered: list[str] = (), exposed: list[str] = ()) -> tuple[list[str], list[str]]:
    """(directories to anchor as mount points, protected paths to mount read-only), leaving
    out what a private mount covers anyway (unless a writable directory brought back into
    it, `exposed`, shows it again); a protected path that is itself covered (a connection-file
    directory) is anchored, not mounted read-only."""
    writable = writable_dirs(policy, ctx)
    protected, anchors = [], []
    target = getattr(ctx, "audit_target", None)
    audit_log = realpath(target) if target else None
    for p in sorted({realpath(x) for x in ctx.protected_paths(policy)}):
        roots = [w for w in writable if below(p, w)]
        hidden = any(below(p, c) for c in covered) and not any(below(p, e) for e in exposed)
        if not roots or not os.path.exists(p) or hidden or p == audit_log:
            continue  # (the audit FIFO, or the log without a supervisor, stays writable: Landlock grants write_file only)
        if any(below(p, q) for q in protected):
            continue  # already inside a read-only mount
        if p not in covered:
            protected.append(p)
        # else a cover of its own (a connection-file directory inside the home): its tmpfs needs no
        # read-only bind, but its parents are pinned too, or a cell renames one away and puts a
        # directory of its own, with a planted connection file, where Jupyter and the next start look
        root = max(roots, key=len)
        a = os.path.dirname(p)
        while a != root and below(a, root):
            anchors.append(a)
            a = os.path.dirname(a)
    anchors = sorted(set(anchors) - set(protected), key=lambda d: (d.count("/"), d))
    return anchors, protected


def shared_connection_dirs(policy, ctx, conn_dirs: list[str]) -> list[str]:
    """Directories holding connection files that `connection_dir.connection_dirs` leaves out
    because a writable directory lies inside them (connection files in /scratch, HOME=/scratch/
    <user>): covered all the same, with the writable directories inside bound back. Not a
    directory the tenant writes itself, nor one holding /tmp or /dev/shm."""
    candidates = [ctx.runtime_dir] + ([os.path.dirname(ctx.connection.path)] if ctx.connection else [])
    writable = real_writable(policy, ctx)
    out = []
    for d in dict.fromkeys(realpath(c) for c in candidates):
        if d == "/" or d in conn_dirs or not os.path.isdir(d):
            continue
        if any(within(d, w) for w in writable + ["/tmp", "/dev/shm"]):
            continue  # the tenant writes it anyway: nothing in it can be hidden (see the note in build)
        if any(below(t, d) for t in ("/tmp", "/dev/shm")):
            continue
        if any(below(w, d) for w in writable):
            out.append(d)
    return out


def enter_namespace(in_user_ns: bool = False) -> str:
    from .pid_namespace import unshare

    if is_root() or in_user_ns:
        unshare(CLONE_NEWNS)
        return "mount namespace"
    unshare(CLONE_NEWUSER | CLONE_NEWNS)
    return "user + mount namespace"


# --------------------------------------------------------------------------- read-only /

SYS_MOUNT_SETATTR = {"x86_64": 442, "aarch64": 442}
AT_FDCWD, AT_SYMLINK_NOFOLLOW, AT_RECURSIVE = -100, 0x100, 0x8000
MOUNT_ATTR_RDONLY = 0x1
MS_NOSYMFOLLOW = 256
_OPT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "nosymfollow": MS_NOSYMFOLLOW}


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _mount_setattr(path: str, flags: int, attr_set: int = 0, attr_clr: int = 0) -> None:
    """mount_setattr(2) (Linux 5.12+): change only the given attributes of the mount at `path`
    (AT_RECURSIVE: and of every mount below it, all or none). ENOSYS where there is none."""
    nr = SYS_MOUNT_SETATTR.get(os.uname().machine)
    if nr is None or simulated_missing("mount_setattr"):
        raise OSError(38, "mount_setattr: not available")
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    res = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(AT_FDCWD), os.fsencode(path),
                        ctypes.c_uint(flags | AT_SYMLINK_NOFOLLOW), ctypes.byref(attr),
                        ctypes.c_size_t(ctypes.sizeof(attr)))
    if res != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount_setattr {path}: {os.strerror(e)}")


def mount_setattr_support() -> str | None:
    """None where this host and this process's seccomp filters allow mount_setattr(2), else why
    not. Asked with a flag it never accepts: where the call exists it fails EINVAL before it
    looks at any mount or permission, so asking changes nothing."""
    nr = SYS_MOUNT_SETATTR.get(os.uname().machine)
    if nr is None:
        return f"no mount_setattr number known for {os.uname().machine}"
    if simulated_missing("mount_setattr"):
        return "not available (simulated)"
    res = _libc.syscall(ctypes.c_long(nr), ctypes.c_int(AT_FDCWD), b"/", ctypes.c_uint(0x1), None, ctypes.c_size_t(0))
    e = ctypes.get_errno() if res != 0 else 0
    if e == 22:  # EINVAL: the call exists and refused the flag
        return None
    if e == 38:
        return "ENOSYS: Linux before 5.12, or a seccomp filter that answers ENOSYS"
    return f"{errno_name(e)}: refused (a seccomp filter)" if e else "answered a call it must refuse"


def errno_name(e: int) -> str:
    import errno

    return errno.errorcode.get(e, str(e))


def _unescape(field: str) -> str:
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts() -> dict[str, set[str]]:
    """Mount point -> the per-mount options of the mount on top there, from /proc/self/mountinfo
    (a mount stacked on another comes later in the file)."""
    out: dict[str, set[str]] = {}
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            f = line.split()
            if len(f) >= 6:
                out[_unescape(f[4])] = set(f[5].split(","))
    return out


def _remount(path: str, opts: set[str], readonly: bool) -> None:
    """The fallback without mount_setattr: a bind remount keeping the mount's own flags (those
    a user namespace locks must be kept), the atime ones left as they are."""
    flags = sum(ms for name, ms in _OPT_FLAGS.items() if name in opts)
    _mount(None, path, MS_REMOUNT | MS_BIND | flags | (MS_RDONLY if readonly else 0))


def make_readonly(writable: list[str], unreachable: list[str]) -> tuple[str, list[str]]:
    """Make every mount in this namespace read-only, then read-write again only the mounts at
    or below a `writable` path that were read-write before and lie in no read-only mount below
    that path (protected paths, the connection file, locked read-only host mounts stay so).
    Returns (how, the mount points left writable). Raises OSError when neither mount_setattr
    nor remounting works: the caller fails closed."""
    before = mounts()
    was_ro = {mp for mp, opts in before.items() if "ro" in opts}
    try:
        _mount_setattr("/", AT_RECURSIVE, attr_set=MOUNT_ATTR_RDONLY)
        how = "mount_setattr"
    except OSError as e:
        if e.errno not in (38, 22, 1):  # ENOSYS (before 5.12), EINVAL, EPERM (filtered): remount each
            raise
        how = "bind remounts"
        for mp, opts in before.items():
            try:
                _remount(mp, opts, readonly=True)
            except OSError as e2:
                if e2.errno in (2, 13, 22) and any(below(mp, u) for u in unreachable):
                    continue  # covered by this kernel's own mounts: nothing can reach it by path
                raise
    left = []
    for mp in sorted(before, key=lambda m: (m.count("/"), m)):
        if mp in was_ro:
            continue
        roots = [w for w in writable if within(mp, w)]
        if not roots:
            continue
        if all(any(below(mp, q) and within(q, w) for q in was_ro) for w in roots):
            continue  # inside a read-only mount (a protected path) within the writable directory
        try:
            if how == "mount_setattr":
                _mount_setattr(mp, 0, attr_clr=MOUNT_ATTR_RDONLY)
            else:
                _remount(mp, before[mp], readonly=False)
        except OSError as e:
            if e.errno in (2, 13, 22) and any(below(mp, u) for u in unreachable):
                continue
            raise
        left.append(mp)
    return how, left


class Mounted:
    """What this layer hands on (to landlock): the paths it made read-only mounts (protected
    paths, what it brought back read-only), the paths it covered with the kernel's own view
    (its /tmp and /dev/shm, connection-file directories, hidden ones), whether /proc/sys and the
    like are read-only (root), and the writable directories it mounted noexec. (It also makes
    /tmp the kernel's own: ``ctx.private_tmp``, which changes what {tmp} means for every later
    reader of the launch context.)"""

    def __init__(self, readonly: list[str], covered: list[str], proc_hardened: bool, noexec: list[str],
                 reads: bool = False):
        self.readonly = readonly
        self.covered = covered
        self.proc_hardened = proc_hardened
        self.noexec = noexec
        self.reads = reads  # the view holds only what the kernel may read (read_view): Landlock handles no read right


RESULT = Mounted
# Nothing mounted (the layer off, or not available): what landlock then closes itself.
NOTHING = Mounted([], [], False, [])


def kept(policy, ctx, covers: list[str], conn_dirs: list[str], shared: list[str]) -> dict[str, bool]:
    """What stays visible where a cover hides it: real path -> bound back read-only. The
    connection file (read-only), the working directory and $HOME (read-write where the
    profile makes them writable: the host's directory itself, not the private /tmp that
    covers it), an ipc socket directory and the audit log; writable directories inside a
    shared connection-file directory; and, read-only, what the kernel runs and the next
    start trusts: the environment and the base interpreter ({env}: with the directories its
    .pth files add, e.g. an editable checkout or another environment), this package, the kernelspec
    directories, the profile search path, the policy cache; what every process reads."""
    writable = real_writable(policy, ctx)

    def host_writable(p: str) -> bool:
        around = [c for c in covers if below(p, c)]
        return any(within(p, w) and all(below(w, c) for c in around) for w in writable)

    out: dict[str, bool] = {}

    def keep(p: str | None, readonly: bool) -> None:
        if not p:
            return
        r = realpath(p)
        if os.path.exists(r) and r != "/":
            out[r] = out.get(r, True) and readonly

    for p in (os.getcwd(), ctx.home):
        keep(p, readonly=not host_writable(realpath(p)))
    if ctx.connection:
        keep(ctx.connection.path, readonly=True)
    keep(ctx.ipc_dir, readonly=False)
    keep(ctx.audit_target, readonly=False)
    for w in writable:
        if any(below(w, s) for s in shared):
            keep(w, readonly=False)
    for p in ctx.read_kept():
        keep(p, readonly=True)
    trusted = trusted_paths() + env_paths() + jupyter_path(ctx.env, "kernels") + search_path(ctx.env)
    trusted += [os.path.dirname(ctx.policy_cache)] if ctx.policy_cache else []
    for p in trusted:
        r = realpath(p)
        if not any(within(r, c) or within(c, r) for c in conn_dirs + shared):
            keep(r, readonly=True)
    return out


def program_dirs(policy, ctx, read_only: list[str] = ()) -> list[tuple[str, list[str]]]:
    """(program directory outside exec.allow, the exec.allow entries inside it) pairs: the
    system's program directories, the directory each interpreter file of {python} lies in (a
    conda or pyenv prefix's bin, shared with whatever else is installed there), and the bin
    directories of packages' trees below the library directories (/usr/lib/jvm/*/bin) and the
    ELF programs kept elsewhere, single files or directories of programs only (the lists install
    wrote into the policy cache, layers/program_trees.py and program_files.py) that still exist.
    A virtual environment's bin that exec.allow grants only through {python} (for its console
    scripts) still gets its ELF programs mounted noexec. `read_only`: what the view makes
    read-only inside writable directories before these mounts (the protected paths ``targets``
    mounts, and what ``kept`` brings back read-only into a cover: a checkout cloned into /tmp)."""
    allowed = real_exec_allowed(policy, ctx)
    allowed = [a for a in allowed if os.path.exists(a)]
    out = []
    # (the trees' directories and programs are real paths where they were scanned: one exec.allow
    # grants, as {system} grants /usr/lib's, is passed over before any system call; a venv's bin,
    # which {python} grants for its console scripts, still gets its ELF programs mounted noexec)
    env_bin = python_only_bin(policy, ctx)

    def granted(p: str) -> bool:
        return any(within(p, a) and not (a == env_bin and p != a) for a in allowed)

    # a listed path in a writable directory (a profile that makes part of /opt writable) is left to
    # W^X: a tenant could swap it for a link between the plan and the mount; one in a protected
    # path there (the environment under a writable home) is read-only by then, and stays listed
    writable = writable_dirs(policy, ctx)
    trees = [t for t in program_tree_dirs() if not granted(t)
             and not (any(within(t, w) for w in writable) and not any(within(t, q) for q in read_only))]
    dirs = [p for p in PROGRAM_DIRS + python_program_dirs() if os.path.isdir(p)]
    for d in dict.fromkeys([realpath(p) for p in dirs] + [t for t in trees if os.path.lexists(t)]):
        if granted(d):
            continue  # the profile lets programs run from here anyway
        out.append((d, [a for a in allowed if below(a, d)]))
    return out


class ViewPlan:
    """The kernel's view, decided before any mount (see ``plan``): what is covered (its own /tmp
    and /dev/shm, connection-file directories, hidden directories), what is brought back into
    the covers (real path -> read-only), the read-only protected paths and the anchors that pin
    their parents, and the program directories mounted noexec (with the exec.allow entries
    inside them bound back)."""

    def __init__(self, hidden, covers, kept, anchors, protected, programs, reads_why=None, visible=(), devices=()):
        self.hidden: list[str] = hidden
        self.covers: list[str] = covers
        self.kept: dict[str, bool] = kept
        self.anchors: list[str] = anchors
        self.protected: list[str] = protected
        self.programs: list[tuple[str, list[str]]] = programs
        self.reads_why: str | None = reads_why  # why the read view is not made (None: it is; read_view)
        self.visible: list[str] = list(visible)  # what the read view shows (read_view.plan)
        self.devices: list[str] = list(devices)  # what its /dev holds (read_view.plan)


def plan(policy, host) -> ViewPlan:
    """The view `policy` gives the kernel of the launch `host` describes (the launch context):
    pure, it reads the host's paths and changes nothing. (Under user_namespace.host_uid:
    subordinate the layer computes it once the idmapped mounts are attached: it looks at the
    tenant's paths through them.)"""
    with remembered_realpaths():  # (nothing is mounted while the view is planned)
        return _plan(policy, host)


def _plan(policy, host) -> ViewPlan:
    ctx, fs = host, policy.data["filesystem"]
    conn_dirs = connection_dirs(ctx, policy)
    shared = shared_connection_dirs(policy, ctx, conn_dirs)
    hidden = [realpath(h) for h in fs.get("hidden", []) if os.path.isdir(h)]
    covers = ["/tmp", "/dev/shm"] + conn_dirs + shared + hidden
    keep = kept(policy, ctx, covers, conn_dirs, shared)
    exposed = [k for k, ro in keep.items() if not ro and any(below(k, c) for c in covers)]
    anchors, protected = targets(policy, ctx, covers, exposed)
    read_only = protected + [k for k, ro in keep.items() if ro]
    return ViewPlan(hidden, covers, keep, anchors, protected, program_dirs(policy, ctx, read_only),
                    *read_view.plan(policy, ctx, keep))


class PrivateView:
    """Builds the kernel's view, one mount at a time; records what it made."""

    def __init__(self, policy, ctx, namespaces: set[str], subordinate=None):
        self.policy, self.ctx = policy, ctx
        self.namespaces = namespaces  # the namespaces this process is in (pid_namespace.Entered)
        self.subordinate = subordinate  # user_namespace.host_uid: subordinate (subuid.Plan; pid_namespace.Entered)
        self.fs = policy.data["filesystem"]
        self.made: list[str] = []
        self.notes: list[str] = []
        self.covered: list[str] = []  # mount points whose earlier contents are now hidden
        self.fds: dict[str, int] = {}
        self.read_only_later: list[tuple[str, str]] = []
        self.brought: list[tuple[str, bool]] = []  # (path bound back, read-only)
        self.fresh_proc = False
        self.readonly: list[str] = []  # read-only mounts: protected paths, what was brought back read-only
        self.covered_view: list[str] = []  # self.covered once the view's covers and binds are all made
        self.proc_hardened = False  # /proc/sys, /proc/sysrq-trigger, ... read-only (root)
        self.noexec: list[str] = []  # writable directories mounted noexec
        self.reads = False  # the read view was made (read_view)

    def result(self) -> Mounted:
        """What landlock is handed: what was made so far (all of it, unless a mount failed)."""
        return Mounted(self.readonly, self.covered_view, self.proc_hardened, self.noexec, self.reads)

    def _fd(self, path: str) -> int:
        if path not in self.fds:
            self.fds[path] = os.open(path, os.O_PATH | os.O_CLOEXEC)
        return self.fds[path]

    def _bind_from(self, source: str, target: str, flags: int = 0) -> None:
        """Bind `source` as it was in the original view (opened before anything was covered)."""
        _mount(f"/proc/self/fd/{self._fd(source)}", target, MS_BIND | MS_REC)
        if flags:
            locked = _flags_of(os.fstatvfs(self._fd(source)).f_flag)
            _mount(None, target, MS_REMOUNT | MS_BIND | flags | locked)

    def build(self) -> None:
        ctx, fs = self.ctx, self.fs
        if self.subordinate is not None:  # first: what follows looks at the tenant's paths through them
            _mount(None, "/", MS_REC | MS_SLAVE)
            self._attach_idmapped()
        noexec = MS_NOEXEC if fs.get("noexec_writable", True) else 0
        cwd = os.getcwd()
        pl = plan(self.policy, ctx)
        hidden, covers, kept = pl.hidden, pl.covers, pl.kept
        anchors, protected, programs = pl.anchors, pl.protected, pl.programs
        for p in list(kept) + protected + [e for _, inside in programs for e in inside]:
            # opened in the original view, before anything is covered
            if os.path.exists(p):
                self._fd(p)

        _mount(None, "/", MS_REC | MS_SLAVE)
        # Covers and what is brought back into them, shallowest first: a connection-file
        # directory inside a home brought back out of the private /tmp is covered again.
        ops = [(c, "cover") for c in dict.fromkeys(covers)] + [(k, "keep") for k in kept]
        for path, op in sorted(ops, key=lambda o: (o[0].count("/"), o[1] != "cover", o[0])):
            if op == "keep":
                self._bring_back(path, readonly=kept[path])
            elif path in ("/tmp", "/dev/shm"):
                if os.path.isdir(path):
                    size = fs.get("tmp_size", "2GiB") if path == "/tmp" else fs.get("shm_size", "1GiB")
                    self._tmpfs(path, f"size={_size(size)},mode=1777", SAFE | noexec)
            elif path in hidden:
                self._hide(path)
            elif os.path.isdir(path):  # only this kernel's connection file stays visible there
                self._tmpfs(path, RUNTIME_TMPFS, SAFE | MS_NOEXEC)
                self.read_only_later.append((path, RUNTIME_TMPFS))
        ctx.private_tmp = "/tmp" in self.covered  # (then TMPDIR=/tmp: ctx.tmp, launcher.apply_layers)
        for h in fs.get("hidden", []):  # files (not directories) to hide
            if os.path.lexists(h) and not os.path.isdir(realpath(h)):
                self._hide(realpath(h), name=h)
        for d, data in self.read_only_later:  # the runtime dir and hidden dirs hold only what was brought back
            _mount(None, d, MS_REMOUNT | SAFE | MS_NOEXEC | MS_RDONLY, "tmpfs", data)
        writable = sorted(writable_dirs(self.policy, ctx), key=lambda d: d.count("/"))
        if noexec:
            for w in writable:
                if w in ("/tmp", "/dev/shm"):
                    continue  # tmpfs mounted noexec above
                _mount(w, w, MS_BIND | MS_REC)
                _mount(None, w, MS_REMOUNT | MS_BIND | SAFE | MS_NOEXEC | _flags_of(os.statvfs(w).f_flag))
                self.noexec.append(w)
            self.noexec += [d for d in ("/tmp", "/dev/shm") if d in self.covered]
        for a in anchors:
            if os.path.isdir(a):
                _mount(a, a, MS_BIND | MS_REC)
        for p in protected:
            self._bind_from(p, p, MS_RDONLY)
            self.made.append(f"{p} (read-only)")
        # after the protected mounts: a program directory inside one (a base interpreter's
        # prefix under a writable home) stays noexec rather than being bound back whole
        for d, inside in programs:  # the ELF loader runs nothing from here that exec.allow does not name
            if not os.path.exists(d):
                continue  # inside a hidden directory (a package's tree the profile hides): no path reaches it
            was = os.statvfs(d).f_flag  # read-only where a protected mount made it so: kept
            _mount(d, d, MS_BIND | MS_REC)
            _mount(None, d, MS_REMOUNT | MS_BIND | MS_NOEXEC | _flags_of(was) | (MS_RDONLY if was & ST_RDONLY else 0))
            for e in inside:  # directories or single files (the interpreter {python} names)
                self._bind_from(e, e, MS_RDONLY)
            self.made.append(f"{d} (noexec" + (f" but {', '.join(inside)})" if inside else ")"))
        self.readonly = protected + [k for k, ro in self.brought if ro]
        self.covered_view = list(self.covered)
        self._read_view(pl)
        self._proc()
        self._read_only_root(writable, kept)
        os.chdir(cwd)  # the working directory as seen in the new view (noexec, rebound)
        for fd in self.fds.values():
            os.close(fd)

    def _read_view(self, pl: ViewPlan) -> None:
        """The kernel's root holds only what it may read (read_view), where the plan allows it."""
        if pl.reads_why is not None:
            self.made.append(f"reads: Landlock's ({pl.reads_why})")
            return
        try:
            bound = read_view.build(pl.visible, pl.devices, _mount, read_view.shown_not_run(self.policy, self.ctx))
        except read_view.NotPivoted as e:
            self.made.append(f"reads: Landlock's (the read view could not be made: {e.strerror})")
            return
        self.reads = True
        self.made.append(f"/ holds only what the kernel may read ({len(bound)} trees and files bound, its own /dev "
                         f"with {len(pl.devices)} devices): reads are the view's, not Landlock's")

    def _attach_idmapped(self) -> None:
        """user_namespace.host_uid: subordinate: the supervisor's idmapped copies of the tenant's
        directories and files (layers.subuid), put in place before anything else, so that what
        is brought back from them, and every cover and read-only mount, lies on top."""
        plan = self.subordinate
        if plan is None:
            return
        from .subuid import attach

        for path in sorted(plan.clones, key=lambda p: (p.count("/"), p)):
            fd = plan.clones.pop(path)
            try:
                attach(fd, path)
            finally:
                os.close(fd)
            self.made.append(f"{path} (idmapped: the tenant's uid {plan.inside_uid} on the host is the kernel's)")

    def _read_only_root(self, writable: list[str], kept: dict[str, bool]) -> None:
        """/ and every mount below it read-only; read-write again: the writable directories
        (each bound onto itself first where it is not a mount point yet), the private /tmp and
        /dev/shm, what was brought back read-write (the audit log, an ipc directory), and the
        mount of /proc as it was (its /proc/sys and the like stay read-only for root), except under
        the read view: there /proc stays read-only as well (the mounts hold the file rules, and
        Landlock grants no /proc write where it holds them: layers.landlock.files_handled)."""
        rw = writable + [d for d in ("/tmp", "/dev/shm") if d in self.covered]
        rw += [k for k, ro in self.brought if not ro]
        if self.ctx.audit_target and os.path.exists(self.ctx.audit_target) and not self.reads:
            rw.append(realpath(self.ctx.audit_target))  # bound onto itself: write only (Landlock)
        # (with the read view the audit FIFO stays on a read-only mount: its mode 0200 cannot be changed,
        # and a FIFO is written on a read-only mount all the same)
        rw = list(dict.fromkeys(rw))
        points = mounts()
        for w in rw:
            if w not in points and os.path.exists(w):
                _mount(w, w, MS_BIND | MS_REC)
        # (the host's mounts below /proc are under this kernel's own procfs, where there is one)
        unreachable = self.covered + (["/proc"] if self.fresh_proc else [])
        how, left = make_readonly(rw + ([] if self.reads else ["/proc"]), unreachable)
        shown = [m for m in left if m in rw]
        self.made.append(f"/ read-only ({how}); read-write: {', '.join(shown) or 'nothing'}")

    def _tmpfs(self, target: str, data: str, flags: int) -> None:
        _mount("tmpfs", target, flags, "tmpfs", data)
        self.covered.append(target)
        self.made.append(f"{target} (tmpfs {data.split(',')[0]})")

    def _bring_back(self, path: str, readonly: bool) -> None:
        """Bind a kept path back where a tmpfs now covers it (unless what was brought back
        around it already shows it the same way)."""
        if path not in self.fds:
            return
        around = [c for c in self.covered if below(path, c)]
        if not around:
            return
        cover = max(around, key=len)
        shown = [(k, ro) for k, ro in self.brought if below(path, k) and len(k) > len(cover)]
        if shown and max(shown, key=lambda s: len(s[0]))[1] == readonly:
            return
        is_dir = stat.S_ISDIR(os.fstat(self.fds[path]).st_mode)
        os.makedirs(path if is_dir else os.path.dirname(path), mode=0o755, exist_ok=True)
        if not is_dir and not os.path.exists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        self._bind_from(path, path, MS_RDONLY if readonly else 0)
        self.brought.append((path, readonly))
        if not any(below(path, k) for k, _ in self.brought[:-1]) and path not in self.ctx.read_kept():
            self.made.append(f"{path} (brought back{', read-only' if readonly else ''})")

    def _hide(self, r: str, name: str | None = None) -> None:
        if os.path.isdir(r):
            _mount("tmpfs", r, SAFE | MS_NOEXEC, "tmpfs", HIDDEN_TMPFS)
            self.covered.append(r)
            self.read_only_later.append((r, HIDDEN_TMPFS))
        else:
            _mount("/dev/null", r, MS_BIND)
            _mount(None, r, MS_REMOUNT | MS_BIND | MS_RDONLY | SAFE | MS_NOEXEC)
        self.made.append(f"{name or r} (hidden)")

    def _proc(self) -> None:
        if "pid" in self.namespaces:
            try:
                _mount("proc", "/proc", SAFE | MS_NOEXEC, "proc")
                self.fresh_proc = True
                self.made.append("/proc (this kernel's processes only)")
            except OSError as e:
                self.notes.append(f"the host's /proc stays ({e.strerror})")
        if is_root():
            proc = [p for p in PROC_READONLY if os.path.exists(p)]
            for p in proc:
                _mount(p, p, MS_BIND | MS_REC)
                _mount(None, p, MS_REMOUNT | MS_BIND | MS_RDONLY | _flags_of(os.statvfs(p).f_flag))
            self.proc_hardened = bool(proc)


def _size(value) -> int:
    from ..resolved import parse_size

    return parse_size(value)


def _shared_tmp_refused(policy, ctx) -> None:
    """Without this kernel's own /tmp and /dev/shm, a connection file under them is not private
    (the launcher checked it assuming this layer would apply): refuse to start."""
    check_connection_dir(ctx, policy, private_tmp=False, ownership=False)


def prepare(policy, ctx) -> None:
    """Nothing to do before any layer narrows the process."""


def apply(policy, ctx, status, given) -> Mounted | None:
    level = level_or_off(policy, NAME, status, "enforcement.mount_namespace is off: Landlock closes the "
                                               "parents of protected paths instead; /tmp and /dev/shm are shared")
    if level is None:
        return
    entered = given["pid_namespace"]
    namespaces = entered.namespaces
    view = PrivateView(policy, ctx, namespaces, entered.subordinate)
    try:
        if simulated_missing(NAME):
            raise OSError(0, "namespaces are not available (simulated)")
        kind = "mount namespace" + (" in a user namespace" if "user" in namespaces else "")
        if "mount" not in namespaces:
            kind = enter_namespace(in_user_ns="user" in namespaces)
            namespaces |= {"mount"} | ({"user"} if not is_root() else set())
        view.build()
    except OSError as e:
        why = e.strerror or str(e)
        if view.made:
            why += f" (after: {', '.join(view.made)})"
        if entered.subordinate is not None:
            from ..errors import SandboxError

            raise SandboxError(f"user_namespace.host_uid is subordinate, but the kernel's view could not be built "
                               f"({why}); not starting") from None
        status.cannot(NAME, level, f"{why}; Landlock closes the parents of protected paths instead "
                                   f"(no new entries directly in them); /tmp and /dev/shm are shared")
        _shared_tmp_refused(policy, ctx)
        return view.result()
    detail = f"{kind}; " + "; ".join(view.made + view.notes)
    if view.noexec:
        detail += f"; noexec: {', '.join(view.noexec)}"
    (status.partial if view.notes and any("stays" in n for n in view.notes) else status.active)(NAME, detail)
    return view.result()
