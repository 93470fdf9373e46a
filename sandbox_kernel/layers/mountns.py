"""Mount namespace: each kernel's private view of the filesystem.

Enforcement: hard. In the kernel's own mount namespace (entered by the pid_namespace
layer, or here when that layer is off or unavailable; an ordinary user gets a user
namespace mapping only its own uid and gid), before Landlock forbids mounting:

- **private /tmp and /dev/shm**: fresh tmpfs mounts sized by ``filesystem.tmp_size`` and
  ``filesystem.shm_size``; nothing another kernel wrote there is visible, and their
  pages are charged to the kernel's memory cgroup and freed with the namespace when the
  kernel exits. TMPDIR becomes /tmp.
- **Jupyter's runtime directory** is covered by a tmpfs holding only this kernel's own
  connection file (read-only): other kernels' connection files, and so their HMAC keys,
  are out of reach even for a kernel of the same uid.
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
  read-only (as container runtimes do).

The working directory, the connection file and an ipc socket directory that lie under a
covered path are bound back into place, and the process moves into the new view of its
working directory. seccomp and Landlock deny mount/umount afterwards, so nothing here can
be undone from a cell. Without a namespace, Landlock closes the parents of protected
paths instead and /tmp and /dev/shm stay shared; the layer reports why.
"""

from __future__ import annotations

import ctypes
import os
import stat

from .base import PROGRAM_DIRS, level_or_off, python_program_dirs, simulated_missing

NAME = "mount_namespace"
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


def _within(p: str, root: str) -> bool:
    return p.startswith(root.rstrip("/") + "/")


def _under(p: str, root: str) -> bool:
    return p == root or _within(p, root)


def _flags_of(st_flags: int) -> int:
    return sum(ms for bit, ms in _KEEP_FLAGS.items() if st_flags & bit)


def writable_dirs(policy, ctx) -> list[str]:
    out = [os.path.realpath(w) for w in ctx.expand_paths(policy.data["filesystem"]["writable"])]
    return list(dict.fromkeys(w for w in out if os.path.isdir(w)))


def targets(policy, ctx, covered: list[str] = ()) -> tuple[list[str], list[str]]:
    """(directories to anchor as mount points, protected paths to mount read-only), leaving
    out what a private mount covers anyway."""
    writable = writable_dirs(policy, ctx)
    protected, anchors = [], []
    audit_log = os.path.realpath(policy.audit_log) if policy.audit_log else None
    for p in sorted({os.path.realpath(x) for x in ctx.protected_paths(policy)}):
        roots = [w for w in writable if _within(p, w)]
        if not roots or not os.path.exists(p) or any(_under(p, c) for c in covered) or p == audit_log:
            continue  # (the audit log stays writable: Landlock grants it write_file only, no delete or rename)
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


def enter_namespace() -> str:
    from .pidns import unshare

    if os.getuid() == 0:
        unshare(CLONE_NEWNS)
        return "mount namespace"
    unshare(CLONE_NEWUSER | CLONE_NEWNS)
    return "user + mount namespace"


class PrivateView:
    """Builds the kernel's view, one mount at a time; records what it made."""

    def __init__(self, policy, ctx):
        self.policy, self.ctx = policy, ctx
        self.fs = policy.data["filesystem"]
        self.made: list[str] = []
        self.notes: list[str] = []
        self.covered: list[str] = []  # mount points whose earlier contents are now hidden
        self.fds: dict[str, int] = {}
        self.read_only_later: list[tuple[str, str]] = []

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
        noexec = MS_NOEXEC if fs.get("noexec_writable", True) else 0
        cwd = os.getcwd()
        conn_dirs = ctx.connection_dirs(self.policy)
        if ctx.connection and os.path.dirname(ctx.connection.path) not in conn_dirs + ["/tmp", "/dev/shm"]:
            self.notes.append(f"the connection file's directory {os.path.dirname(ctx.connection.path)} is writable "
                              f"by the tenant: other kernels' files there are not hidden (keep connection files in "
                              f"Jupyter's runtime directory)")
        kept = [cwd] + ([ctx.connection.path] if ctx.connection else []) + ([ctx.ipc_dir] if ctx.ipc_dir else [])
        kept += [self.policy.audit_log] if self.policy.audit_log else []
        kept += [ctx.home] if fs.get("home") else []  # the tenant's own home, inside a hidden parent
        kept = [os.path.realpath(k) for k in kept]
        read_kept = [k for k in ctx.read_kept() if k not in kept]
        hidden = [os.path.realpath(h) for h in fs.get("hidden", []) if os.path.isdir(h)]
        covers = ["/tmp", "/dev/shm"] + conn_dirs + hidden
        anchors, protected = targets(self.policy, ctx, covers)
        programs = self._program_dirs()
        for p in kept + read_kept + protected + [e for _, inside in programs for e in inside]:
            # opened in the original view, before anything is covered
            if os.path.exists(p):
                self._fd(p)

        _mount(None, "/", MS_REC | MS_SLAVE)
        self._tmpfs("/tmp", f"size={_size(fs.get('tmp_size', '2GiB'))},mode=1777", SAFE | noexec)
        ctx.private_tmp = True
        ctx.env["TMPDIR"] = "/tmp"
        if os.path.isdir("/dev/shm"):
            self._tmpfs("/dev/shm", f"size={_size(fs.get('shm_size', '1GiB'))},mode=1777", SAFE | noexec)
        for runtime in conn_dirs:  # only this kernel's connection file stays visible there
            if os.path.isdir(runtime) and not any(_under(runtime, c) for c in self.covered):
                self._tmpfs(runtime, RUNTIME_TMPFS, SAFE | MS_NOEXEC)
                self.read_only_later.append((runtime, RUNTIME_TMPFS))
        self._hide()
        for k in kept:
            self._bring_back(k, readonly=ctx.connection is not None and k == os.path.realpath(ctx.connection.path))
        for k in read_kept:
            self._bring_back(k, readonly=True)
        for d, data in self.read_only_later:  # the runtime dir and hidden dirs hold only what was brought back
            _mount(None, d, MS_REMOUNT | SAFE | MS_NOEXEC | MS_RDONLY, "tmpfs", data)
        if noexec:
            for w in sorted(writable_dirs(self.policy, ctx), key=lambda d: d.count("/")):
                if w in ("/tmp", "/dev/shm"):
                    continue  # tmpfs mounted noexec above
                _mount(w, w, MS_BIND | MS_REC)
                _mount(None, w, MS_REMOUNT | MS_BIND | SAFE | MS_NOEXEC | _flags_of(os.statvfs(w).f_flag))
                ctx.noexec.append(w)
            ctx.noexec += [d for d in ("/tmp", "/dev/shm") if d in self.covered]
        for a in anchors:
            if os.path.isdir(a):
                _mount(a, a, MS_BIND | MS_REC)
        for p in protected:
            self._bind_from(p, p, MS_RDONLY)
            self.made.append(f"{p} (read-only)")
        # after the protected mounts: a program directory inside one (a base interpreter's
        # prefix under a writable home) stays noexec rather than being bound back whole
        for d, inside in programs:  # the ELF loader runs nothing from here that exec.allow does not name
            was = os.statvfs(d).f_flag  # read-only where a protected mount made it so: kept
            _mount(d, d, MS_BIND | MS_REC)
            _mount(None, d, MS_REMOUNT | MS_BIND | MS_NOEXEC | _flags_of(was) | (MS_RDONLY if was & ST_RDONLY else 0))
            for e in inside:  # directories or single files (the interpreter {python} names)
                self._bind_from(e, e, MS_RDONLY)
            self.made.append(f"{d} (noexec" + (f" but {', '.join(inside)})" if inside else ")"))
        ctx.mounted_readonly = protected
        ctx.covered = list(self.covered)
        self._proc()
        os.chdir(cwd)  # the working directory as seen in the new view (noexec, rebound)
        for fd in self.fds.values():
            os.close(fd)

    def _program_dirs(self) -> list[tuple[str, list[str]]]:
        """(program directory outside exec.allow, the exec.allow entries inside it) pairs: the
        system's program directories, and the directory each interpreter file of {python} lies
        in (a conda or pyenv prefix's bin, shared with whatever else is installed there)."""
        allowed = [os.path.realpath(d) for d in self.ctx.expand_paths(self.policy.data["exec"]["allow"])]
        allowed = [a for a in allowed if os.path.exists(a)]
        out = []
        for d in dict.fromkeys(os.path.realpath(p) for p in PROGRAM_DIRS + python_program_dirs() if os.path.isdir(p)):
            if any(_under(d, a) for a in allowed):
                continue  # the profile lets programs run from here anyway
            out.append((d, [a for a in allowed if _within(a, d)]))
        return out

    def _tmpfs(self, target: str, data: str, flags: int) -> None:
        _mount("tmpfs", target, flags, "tmpfs", data)
        self.covered.append(target)
        self.made.append(f"{target} (tmpfs {data.split(',')[0]})")

    def _bring_back(self, path: str, readonly: bool) -> None:
        """Bind a kept path back where a tmpfs now covers it."""
        if path not in self.fds or not any(_within(path, c) for c in self.covered):
            return
        is_dir = stat.S_ISDIR(os.fstat(self.fds[path]).st_mode)
        os.makedirs(path if is_dir else os.path.dirname(path), mode=0o755, exist_ok=True)
        if not is_dir and not os.path.exists(path):
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))
        self._bind_from(path, path, MS_RDONLY if readonly else 0)

    def _hide(self) -> None:
        for h in self.fs.get("hidden", []):
            if not os.path.lexists(h):
                continue
            r = os.path.realpath(h)
            if os.path.isdir(r):
                _mount("tmpfs", r, SAFE | MS_NOEXEC, "tmpfs", HIDDEN_TMPFS)
                self.covered.append(r)
                self.read_only_later.append((r, HIDDEN_TMPFS))
            else:
                _mount("/dev/null", r, MS_BIND)
                _mount(None, r, MS_REMOUNT | MS_BIND | MS_RDONLY | SAFE | MS_NOEXEC)
            self.made.append(f"{h} (hidden)")

    def _proc(self) -> None:
        if "pid" in self.ctx.namespaces:
            try:
                _mount("proc", "/proc", SAFE | MS_NOEXEC, "proc")
                self.made.append("/proc (this kernel's processes only)")
            except OSError as e:
                self.notes.append(f"the host's /proc stays ({e.strerror})")
        if os.getuid() == 0:
            proc = [p for p in PROC_READONLY if os.path.exists(p)]
            for p in proc:
                _mount(p, p, MS_BIND | MS_REC)
                _mount(None, p, MS_REMOUNT | MS_BIND | MS_RDONLY | _flags_of(os.statvfs(p).f_flag))
            self.ctx.proc_hardened = bool(proc)


def _size(value) -> int:
    from ..resolved import parse_size

    return parse_size(value)


def apply(policy, ctx, status) -> None:
    level = level_or_off(policy, NAME, status, "enforcement.mount_namespace is off: Landlock closes the "
                                               "parents of protected paths instead; /tmp and /dev/shm are shared")
    if level is None:
        return
    view = PrivateView(policy, ctx)
    try:
        if simulated_missing(NAME):
            raise OSError(0, "namespaces are not available (simulated)")
        kind = "mount namespace" + (" in a user namespace" if "user" in ctx.namespaces else "")
        if "mount" not in ctx.namespaces:
            kind = enter_namespace()
            ctx.namespaces |= {"mount"} | ({"user"} if os.getuid() != 0 else set())
        view.build()
    except OSError as e:
        why = e.strerror or str(e)
        if view.made:
            why += f" (after: {', '.join(view.made)})"
        status.cannot(NAME, level, f"{why}; Landlock closes the parents of protected paths instead "
                                   f"(no new entries directly in them); /tmp and /dev/shm are shared")
        return
    detail = f"{kind}; " + "; ".join(view.made + view.notes)
    if ctx.noexec:
        detail += f"; noexec: {', '.join(ctx.noexec)}"
    (status.partial if view.notes and any("stays" in n for n in view.notes) else status.active)(NAME, detail)
