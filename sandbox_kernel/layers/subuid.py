"""A host uid of the kernel's own: ``user_namespace.host_uid: subordinate``.

Enforcement: hard (the OS kernel's user namespaces and idmapped mounts). Used by the
pid_namespace layer (which creates the kernel's user namespace) and the mount_namespace
layer (which puts the idmapped mounts in the kernel's view); not a layer of its own.

With ``same`` (the default) the kernel's user namespace maps the tenant's uid onto itself:
a root tenant is uid 0 on the host, so it reads root's 0600 files wherever Landlock grants
reads and ``filesystem.hidden`` does not cover them, and what Linux counts per uid
(processes, inotify instances and watches, POSIX message queues, queued signals) is charged
to the tenant's host uid as well as to the kernel's namespace.

With ``subordinate`` each live kernel takes one uid of the launching account's
``/etc/subuid`` range and one gid of its ``/etc/subgid`` range (rootless containers' ranges,
``usermod --add-subuids``), locked with flock(2) on ``/run/sandbox-kernel/subuid/<uid>``
(a root-owned directory) by the supervisor, the relay and the namespace's init, so the
id is free again only when every process of that kernel is gone. Then:

- the supervisor forks a relay that becomes that uid and gid on the host (no supplementary
  groups, except the groups of the accelerator nodes the profile allows, which a root
  tenant opened by ownership before) and creates the kernel's user, PID and IPC namespaces;
  the namespace is *owned* by the subordinate uid. Linux charges a namespace's processes,
  inotify instances, message queues and signals up the chain of namespace owners, so
  owning it is what takes the kernel off the tenant's host uid (a namespace the tenant's
  uid creates, whatever it maps, charges that uid). The supervisor, still host root,
  writes the maps: the tenant's uid and gid inside, the subordinate ones outside, one id
  each, setgroups denied. The kernel still sees itself as the tenant (root stays uid 0,
  with capabilities only over its namespace's own objects: host files are not its own).
- before the fork, the supervisor makes an idmapped copy (open_tree(OPEN_TREE_CLONE) +
  mount_setattr(MOUNT_ATTR_IDMAP), Linux 5.12+) of each directory or file of the tenant
  the kernel must use: the writable directories, the working directory and home, the
  connection file, the audit log. In those mounts the tenant's host uid and gid appear as
  the kernel's, so it writes them as before, and what it creates belongs to the tenant on
  the host. The mount_namespace layer moves them into the kernel's view before anything
  else, so every later cover and read-only mount lies on top of them.
  Where one of them lies in a directory only the tenant may search (a 0700 directory of
  root's above a root tenant's working directory, /tmp/pytest-of-root), that directory is
  idmapped instead: the view is built by path, with the kernel's credentials. Landlock still
  grants only what the profile names there, and only the writable directories stay
  read-write. A filesystem without idmapped mounts (overlayfs, as a container's root; NFS;
  FUSE), also one mounted below such a directory, makes the launcher refuse to start
  (ext4 and tmpfs work on Linux 6.18 here; overlayfs does not).

Nothing of the host stays owned by a subordinate uid after its kernel: it writes only
through the idmapped mounts (its files belong to the tenant) and into its own tmpfs, so the
next kernel that takes the same id finds nothing of the last one's. Start-up cost: a fork
for the idmapping's namespace, one open_tree + mount_setattr per path, the relay's fork
and the maps (about 40 to 60 ms more per start on this 2-core VM under load).

An ordinary account cannot do this: only host root can create idmapped mounts of a host
filesystem, and any namespace an ordinary account creates, whatever newuidmap maps in it,
is owned by (so charged to) that account. The launcher then refuses to start.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import stat

from ..errors import SandboxError
from ..identity import is_root
from ..paths import below

RUN_DIR = "/run/sandbox-kernel/subuid"
SUBUID, SUBGID = "/etc/subuid", "/etc/subgid"
KEY = "user_namespace.host_uid"
CLONE_NEWUSER = 0x10000000
SYS_OPEN_TREE, SYS_MOUNT_SETATTR, SYS_MOVE_MOUNT = 428, 442, 429
OPEN_TREE_CLONE, AT_EMPTY_PATH, AT_RECURSIVE, AT_FDCWD = 1, 0x1000, 0x8000, -100
MOUNT_ATTR_IDMAP = 0x00100000
MOVE_MOUNT_F_EMPTY_PATH = 0x4

_libc = ctypes.CDLL(None, use_errno=True)


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64), ("propagation", ctypes.c_uint64),
                ("userns_fd", ctypes.c_uint64)]


def _refuse(why: str) -> SandboxError:
    return SandboxError(f"{KEY} is subordinate, but {why}; not starting")


def ranges(path: str, name: str, uid: int) -> list[tuple[int, int]]:
    """The (first id, count) ranges of `name` (or of its number) in /etc/subuid or /etc/subgid."""
    out = []
    try:
        with open(path) as fh:
            for line in fh:
                parts = line.strip().split(":")
                if len(parts) != 3 or parts[0] not in (name, str(uid)):
                    continue
                try:
                    first, count = int(parts[1]), int(parts[2])
                except ValueError:
                    continue
                if first > 0 and count > 0:
                    out.append((first, count))
    except FileNotFoundError:
        pass
    return out


def _run_dir() -> str:
    """/run/sandbox-kernel/subuid, created root-owned 0700; refused if anything but root could
    write it or a directory above it (a sticky one, like /tmp, excepted: others cannot rename
    root's entries there)."""
    d = ""
    for part in RUN_DIR.strip("/").split("/"):
        d += "/" + part
        try:
            os.mkdir(d, 0o700 if d == RUN_DIR else 0o755)
        except FileExistsError:
            pass
        st = os.lstat(d)
        sticky_above = d != RUN_DIR and st.st_mode & stat.S_ISVTX  # /tmp for a test's own RUN_DIR
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or (st.st_mode & 0o022 and not sticky_above):
            raise _refuse(f"{d} is not a directory only root can write (owner {st.st_uid}, mode "
                          f"{oct(st.st_mode & 0o7777)}): remove it")
    return RUN_DIR


class Allocation:
    """One subordinate uid and gid, held by an flock on a file in RUN_DIR."""

    def __init__(self, uid: int, gid: int, lock_fd: int):
        self.uid, self.gid, self.lock_fd = uid, gid, lock_fd


def allocate() -> Allocation:
    """The first uid of the launching account's /etc/subuid ranges that no live kernel holds,
    with the gid at the same offset of its /etc/subgid ranges."""
    import pwd

    uid = os.getuid()
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    uids = [u for first, count in ranges(SUBUID, name, uid) for u in range(first, first + count)]
    gids = [g for first, count in ranges(SUBGID, name, uid) for g in range(first, first + count)]
    if not uids or not gids:
        missing = SUBUID if not uids else SUBGID
        raise _refuse(f"{missing} has no range for {name}: add one, e.g. `usermod --add-subuids 200000-265535 "
                      f"--add-subgids 200000-265535 {name}` (ids no account or other range uses)")
    d = _run_dir()
    for i, sub in enumerate(uids[:len(gids)]):
        fd = os.open(os.path.join(d, str(sub)), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return Allocation(sub, gids[i], fd)
    raise _refuse(f"every id of {name}'s /etc/subuid range ({len(uids)}) is held by a live kernel: add a larger range")


def _check(res: int, what: str) -> int:
    if res < 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")
    return res


def write_maps(pid: int, inside_uid: int, inside_gid: int, alloc: Allocation) -> None:
    """Map the tenant's uid and gid (inside) onto the subordinate ones (outside) in `pid`'s
    user namespace; setgroups denied (a tenant cannot drop a group to pass a group-denying mode)."""
    from .pid_namespace import write_id_maps

    write_id_maps(str(pid), inside_uid, alloc.uid, inside_gid, alloc.gid)


def idmap_userns(alloc: Allocation, inside_uid: int, inside_gid: int) -> int:
    """An fd of a user namespace with the kernel's maps, for mount_setattr(MOUNT_ATTR_IDMAP):
    a helper child creates it and waits while this process writes its maps."""
    go_r, go_w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(go_w)
            os.close(ready_r)
            ok = _libc.unshare(CLONE_NEWUSER) == 0
            os.write(ready_w, b"u" if ok else b"n")
            os.read(go_r, 1)
        finally:
            os._exit(0)
    os.close(go_r)
    os.close(ready_w)
    try:
        if os.read(ready_r, 1) != b"u":
            raise OSError(errno.EPERM, "cannot create a user namespace for the idmapping")
        write_maps(pid, inside_uid, inside_gid, alloc)
        return os.open(f"/proc/{pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(go_w)
        os.close(ready_r)
        os.waitpid(pid, 0)


def idmapped_clone(path: str, userns_fd: int) -> int:
    """A detached copy of the mount tree at `path` (a directory or a file), idmapped through
    `userns_fd`; move_mount() attaches it (see attach)."""
    fd = _check(_libc.syscall(ctypes.c_long(SYS_OPEN_TREE), ctypes.c_int(AT_FDCWD), os.fsencode(path),
                              ctypes.c_uint(OPEN_TREE_CLONE | os.O_CLOEXEC | AT_RECURSIVE)), f"open_tree {path}")
    attr = _MountAttr(MOUNT_ATTR_IDMAP, 0, 0, userns_fd)
    try:
        _check(_libc.syscall(ctypes.c_long(SYS_MOUNT_SETATTR), ctypes.c_int(fd), b"",
                             ctypes.c_uint(AT_EMPTY_PATH | AT_RECURSIVE), ctypes.byref(attr),
                             ctypes.c_size_t(ctypes.sizeof(attr))), f"idmapping {path}")
    except OSError:
        os.close(fd)
        raise
    return fd


def attach(fd: int, target: str) -> None:
    _check(_libc.syscall(ctypes.c_long(SYS_MOVE_MOUNT), ctypes.c_int(fd), b"", ctypes.c_int(AT_FDCWD),
                         os.fsencode(target), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), f"move_mount {target}")


def device_groups(policy) -> list[int]:
    """The groups of the accelerator nodes the profile allows that are not open to everyone
    (root:video 0660): the kernel keeps them as supplementary groups."""
    if not (policy.data["accelerators"]["gpu"]["enabled"] or policy.data["accelerators"]["tpu"]["enabled"]):
        return []
    from ..accelerators import allowed_nodes

    out = set()
    for n in allowed_nodes(policy):
        try:
            st = os.stat(n)
        except OSError:
            continue
        if st.st_mode & 0o006 != 0o006:
            out.add(st.st_gid)
    return sorted(out)


class Plan:
    """What the pid_namespace layer does for a kernel with a host uid of its own."""

    def __init__(self, alloc: Allocation, inside_uid: int, inside_gid: int, groups: list[int],
                 clones: dict[str, int]):
        self.alloc, self.inside_uid, self.inside_gid = alloc, inside_uid, inside_gid
        self.groups, self.clones = groups, clones
        a_r, a_w = os.pipe()  # relay -> supervisor
        b_r, b_w = os.pipe()  # supervisor -> relay
        self.channel, self.relay_end = (a_r, b_w), (a_w, b_r)

    def close_clones(self) -> None:
        for fd in self.clones.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.clones = {}

    def become(self) -> None:
        """In the relay: become the subordinate uid and gid on the host, then create the
        kernel's user, PID and IPC namespaces (owned by that uid)."""
        os.setgroups(self.groups)
        os.setresgid(self.alloc.gid, self.alloc.gid, self.alloc.gid)
        os.setresuid(self.alloc.uid, self.alloc.uid, self.alloc.uid)


def _reachable_from(path: str, uid: int, gid: int) -> str:
    """`path`, or the highest directory above it that the kernel's host uid could not search
    (a 0700 directory of the tenant's, such as /tmp/pytest-of-root): the mount_namespace
    layer builds the view by path, so that directory is idmapped instead (what lies in it is
    the tenant's; Landlock still grants only what the profile names, and only the writable
    directories stay read-write). Refused where the idmapping would not make it searchable
    (another account's private directory)."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts)):
        d = "/" + "/".join(parts[:i])
        st = os.stat(d)
        if st.st_mode & 0o001:
            continue
        if (st.st_uid == uid and st.st_mode & 0o100) or (st.st_gid == gid and st.st_mode & 0o010):
            return d
        raise _refuse(f"{path} lies in {d}, which neither the kernel's host uid nor, idmapped, the tenant "
                      f"(uid {uid}) may search (owner {st.st_uid}, mode {oct(st.st_mode & 0o7777)})")
    return path


def paths_to_idmap(policy, ctx) -> list[str]:
    """The tenant's own directories and files the kernel uses, shallowest first, none inside
    another: the writable directories (but /tmp and /dev/shm, private tmpfs), the working
    directory and home (read-only again at the end where the profile does not make them
    writable), the connection file, an ipc socket directory and the audit log (its FIFO, where the supervisor
    writes the trail); for one of
    them in a directory only the tenant may search, that directory (see _reachable_from)."""
    from .mount_namespace import writable_dirs

    cands = [w for w in writable_dirs(policy, ctx) if w not in ("/tmp", "/dev/shm")]
    cands += [os.getcwd(), ctx.home or ""]
    if ctx.connection:
        cands.append(ctx.connection.path)
    # (where the supervisor writes the trail, the kernel only opens its FIFO: that is what it needs)
    cands += [ctx.ipc_dir or "", getattr(ctx, "audit_fifo", None) or policy.audit_log or ""]
    real = [os.path.realpath(c) for c in cands if c]
    real = [r for r in dict.fromkeys(real) if r not in ("/", "/tmp", "/dev/shm") and os.path.exists(r)]
    real = [_reachable_from(r, os.getuid(), os.getgid()) for r in real]
    out: list[str] = []
    for r in sorted(real, key=lambda p: (p.count("/"), p)):
        if not any(below(r, o) for o in out):
            out.append(r)
    return out


def prepare(policy, ctx) -> Plan:
    """Before the pid_namespace layer forks: check that this host can, allocate the ids,
    make the idmapped copies. Raises SandboxError (one line) where anything is missing."""
    if not is_root():
        raise _refuse(f"the launcher runs as uid {os.getuid()}, not root: only root can make a kernel's namespace "
                      f"owned by another uid and create idmapped mounts of the tenant's directories (set "
                      f"{KEY}: same, or start kernels from a root launcher)")
    for layer in ("pid_namespace", "mount_namespace"):
        if policy.enforcement(layer) == "off":
            raise _refuse(f"enforcement.{layer} is off (the kernel's own user namespace and its view need it)")
    alloc = allocate()
    clones: dict[str, int] = {}
    try:
        uid, gid = os.getuid(), os.getgid()
        ns = idmap_userns(alloc, uid, gid)
        try:
            for p in paths_to_idmap(policy, ctx):
                try:
                    clones[p] = idmapped_clone(p, ns)
                except OSError as e:
                    raise _refuse(f"{p} cannot be idmapped ({e.strerror}: its filesystem, or one mounted below it, "
                                  f"may not support idmapped mounts, or Linux is older than 5.12)") from None
        finally:
            os.close(ns)
    except BaseException:
        for fd in clones.values():
            os.close(fd)
        os.close(alloc.lock_fd)
        raise
    return Plan(alloc, uid, gid, device_groups(policy), clones)


def host_support(paths: list[str]) -> tuple[bool, str]:
    """(whether a kernel of this launcher could have a host uid of its own, a one-line why):
    root, a /etc/subuid and /etc/subgid range, idmapped mounts on `paths` (tried, detached,
    never attached)."""
    import pwd

    uid = os.getuid()
    if uid != 0:
        return False, (f"no: the launcher is uid {uid}, not root (an ordinary account cannot create idmapped mounts, "
                       f"and every namespace it creates is charged to its uid)")
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        name = str(uid)
    us, gs = ranges(SUBUID, name, uid), ranges(SUBGID, name, uid)
    if not us or not gs:
        return False, (f"no: {SUBUID if not us else SUBGID} has no range for {name} (add one: `usermod --add-subuids "
                       f"200000-265535 --add-subgids 200000-265535 {name}`)")
    n = min(sum(c for _, c in us), sum(c for _, c in gs))
    held = 0
    try:
        for entry in os.listdir(RUN_DIR):
            fd = os.open(os.path.join(RUN_DIR, entry), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held += 1
            finally:
                os.close(fd)
    except OSError:
        pass
    alloc = Allocation(us[0][0], gs[0][0], -1)
    try:
        ns = idmap_userns(alloc, uid, os.getgid())
    except OSError as e:
        return False, f"no: cannot create a user namespace ({e.strerror})"
    try:
        for p in paths:
            try:
                os.close(idmapped_clone(p, ns))
            except OSError as e:
                return False, f"no: {p} cannot be idmapped ({e.strerror}; Linux 5.12+ and ext4, xfs, btrfs or tmpfs)"
    finally:
        os.close(ns)
    return True, (f"yes: {name}'s range holds {n} kernels ({held} running); idmapped mounts work on "
                  f"{', '.join(paths)}")
