"""Mount namespace: protected paths inside writable directories become read-only mounts.

Enforcement: hard. Why a layer of its own: Landlock only grants, so keeping
``~/.local/share/jupyter/kernels`` read-only inside a writable home would mean not
granting home itself, and then no new file could be created directly in home
(IPython cannot even create ``~/.ipython``). Instead, in a private mount namespace,
each protected path that lies inside a writable directory is bind-mounted onto
itself read-only (writes fail with EROFS), and each directory between the writable
root and the protected path is bind-mounted onto itself too, so that it cannot be
renamed or removed (EBUSY) to make room for an unprotected copy. Home stays fully
writable; Landlock still grants it as a whole.

Root uses a new mount namespace; an ordinary user uses a new user namespace (mapped
to its own uid and gid) with a mount namespace, where the kernel allows that.
seccomp denies mount/umount afterwards and Landlock denies them too, so the mounts
cannot be undone from a cell. Where no namespace can be created, the Landlock layer
falls back to granting every sibling of the protected paths instead (protection
kept; new entries directly in their parents are then refused), and this layer
reports ``unavailable``.
"""

from __future__ import annotations

import ctypes
import os

from .base import level_or_off, simulated_missing

NAME = "mount_namespace"
CLONE_NEWNS, CLONE_NEWUSER = 0x00020000, 0x10000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MS_REMOUNT, MS_BIND, MS_REC, MS_SLAVE = 32, 4096, 16384, 1 << 19
# statvfs f_flag bits -> mount flags that a remount must keep (locked in a user namespace)
_KEEP_FLAGS = {2: MS_NOSUID, 4: MS_NODEV, 8: MS_NOEXEC, 1024: MS_NOATIME, 2048: MS_NODIRATIME, 4096: MS_RELATIME}

# For root, the parts of /proc through which uid 0 changes the host (sysctls, SysRq, IRQ
# affinity, ...) become read-only too, as container runtimes do: GPU profiles must grant
# write on /proc to the NVIDIA driver (see landlock.py), and root is not refused by
# ordinary file permissions there.
PROC_READONLY = ["/proc/sys", "/proc/sysrq-trigger", "/proc/irq", "/proc/bus", "/proc/fs"]

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_void_p]


def _check(res: int, what: str) -> None:
    if res != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def _mount(src, target, flags) -> None:
    _check(_libc.mount(src and os.fsencode(src), os.fsencode(target), None, flags, None), f"mount {target}")


def _within(p: str, root: str) -> bool:
    return p.startswith(root.rstrip("/") + "/")


def targets(policy, ctx) -> tuple[list[str], list[str]]:
    """(directories to anchor as mount points, protected paths to mount read-only)."""
    writable = [os.path.realpath(w) for w in ctx.expand_paths(policy.data["filesystem"]["writable"])]
    writable = [w for w in writable if os.path.isdir(w)]
    protected, anchors = [], []
    for p in sorted({os.path.realpath(x) for x in ctx.protected_paths(policy)}):
        roots = [w for w in writable if _within(p, w)]
        if not roots or not os.path.exists(p):
            continue
        if any(_within(p, q) for q in protected):
            continue  # already inside a read-only mount
        protected.append(p)
        root = max(roots, key=len)
        a = os.path.dirname(p)
        while a != root and _within(a, root):
            anchors.append(a)
            a = os.path.dirname(a)
    anchors = sorted(set(anchors) - set(protected), key=lambda d: (d.count("/"), d))
    return anchors, protected


def _enter_namespace() -> str:
    if os.getuid() == 0:
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        return "mount namespace"
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS), "unshare(CLONE_NEWUSER|CLONE_NEWNS)")
    with open("/proc/self/setgroups", "w") as fh:
        fh.write("deny")
    with open("/proc/self/uid_map", "w") as fh:
        fh.write(f"{uid} {uid} 1")
    with open("/proc/self/gid_map", "w") as fh:
        fh.write(f"{gid} {gid} 1")
    return "user + mount namespace"


def _locked_flags(path: str) -> int:
    f = os.statvfs(path).f_flag
    return sum(ms for st, ms in _KEEP_FLAGS.items() if f & st)


def apply(policy, ctx, status) -> None:
    anchors, protected = targets(policy, ctx)
    proc = [p for p in PROC_READONLY if os.path.exists(p)] if os.getuid() == 0 else []
    if not protected and not proc:
        status.not_needed(NAME, "no protected path lies inside a writable directory")
        return
    level = level_or_off(policy, NAME, status, "enforcement.mount_namespace is off: Landlock closes the "
                                               "parents of protected paths instead")
    if level is None:
        return
    try:
        if simulated_missing(NAME):
            raise OSError(0, "namespaces are not available (simulated)")
        kind = _enter_namespace()
        _mount(None, "/", MS_REC | MS_SLAVE)
        for a in anchors:
            _mount(a, a, MS_BIND | MS_REC)
        for p in protected + proc:
            _mount(p, p, MS_BIND | MS_REC)
            _mount(None, p, MS_REMOUNT | MS_BIND | MS_RDONLY | _locked_flags(p))
    except OSError as e:
        why = e.strerror or str(e)
        status.cannot(NAME, level, f"{why}; Landlock closes the parents of protected paths instead "
                                   f"(no new entries directly in them)")
        return
    ctx.mounted_readonly = protected
    ctx.proc_hardened = bool(proc)
    status.active(NAME, f"{kind}; read-only: {', '.join(protected + proc)}")
