"""The read view: reads granted by the mount namespace, not by Landlock (issue 21).

A helper of the mount_namespace layer. Landlock walks a path up to its nearest rule on every
open of a file when its ruleset handles the read rights: about 1 µs per open+close on the
2-vCPU development VM (``benchmarks peer-targets``), where bubblewrap's read-only mounts cost
nothing. Where the kernel has its own mount namespace, the same grant is made with mounts:
the kernel's root becomes a fresh tmpfs holding only what it may read, each bound from the
view the layer built (covers, read-only and noexec mounts included):

- every path Landlock would grant read: ``filesystem.readable`` and the protected paths
  (``LaunchContext.readable_paths``), the writable and ``exec.allow`` directories, the
  resolver files (``read_kept``), the kernel's own connection file, what the layer brought back
  into its covers, the ipc socket directory, and where ``accelerators.gpu.tool_dirs`` points
  (a GPU-less profile runs none of them: refused with its reason, not "not found");
- the top-level symbolic links of / (``/lib -> usr/lib``): what they point to is bound or not;
- /proc (with a PID namespace, the kernel's own procfs, mounted afterwards);
- a /dev of its own (a tmpfs, as bubblewrap's ``--dev``): the standard character devices,
  the accelerator nodes the profile allows, a devpts instance of its own (``/dev/ptmx`` a link
  into it), the kernel's /dev/shm and the ``/proc/self/fd`` links; never a block device, raw memory, the kernel log or a denied
  accelerator node, whatever ``filesystem.readable`` says.

Everything else of the host is not there (ENOENT), root tenant or not, including what the host
adds later: entries are granted, not assumed. The view then holds the file rules
(``Mounted.reads``): read-only mounts but the writable directories (writes, creation, truncate:
EROFS), ``noexec`` but ``exec.allow`` (which also stops the ELF loader, as Landlock's exec right
does not), a read-only /proc, a /dev of its own. Landlock handles no filesystem right there
(``landlock.files_handled``: a domain that handles any costs every open ~0.1-0.3 µs on Linux
6.18, even a read-only one it has no rule for), and keeps what only it does: TCP ports, scopes,
and the ptrace rule of its domain; ``filesystem.landlock_with_view: true`` has it enforce its
write, exec and device rules again as a second line.

Not used (Landlock keeps the read rules, as without a mount namespace) where the view cannot
say the same: ``filesystem.readable`` granting / itself, a GPU or TPU profile (device nodes and
tool paths the accelerators layer resolves), ``user_namespace.host_uid: subordinate``, an audit
log the kernel writes itself (no supervisor), an audit log with CAP_DAC_OVERRIDE kept or in a
directory the kernel reads (the kernel's FIFO to the supervisor is its own uid's file, mode 0200
on a read-only mount: only the mode keeps a cell from reading its events off it), or
``pivot_root(2)`` refused (a chroot). ``why_not`` says
which; the layer's report names it.
"""

from __future__ import annotations

import ctypes
import os
import stat

from ..identity import is_root
from ..paths import below, realpath, within

SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
MNT_DETACH = 2
STAGE = "/tmp/.sandbox-kernel-root"  # in the kernel's own /tmp (covered before the read view is made)
OLD = "/.old-root"
# /dev links a process expects (bubblewrap's --dev makes the same)
DEV_LINKS = {"fd": "/proc/self/fd", "stdin": "/proc/self/fd/0", "stdout": "/proc/self/fd/1",
             "stderr": "/proc/self/fd/2"}

_libc = ctypes.CDLL(None, use_errno=True)


class NotPivoted(OSError):
    """The read view could not be made, and nothing visible changed: Landlock keeps the reads."""


def plan(policy, ctx, kept: dict[str, bool]) -> tuple[str | None, list[str], list[str]]:
    """(why the read view is not made, or None; what it shows, ``visible``; what its /dev holds,
    ``devices``): `filesystem.readable` resolved once for all three."""
    readable = [realpath(p) for p in ctx.readable_paths(policy)]
    why, shown = _decide(policy, ctx, kept, readable)
    return (why, [], []) if why is not None else (None, shown, devices(policy, ctx, readable))


def why_not(policy, ctx, kept: dict[str, bool] | None = None) -> str | None:
    """None where the read view can grant exactly Landlock's reads, else why not."""
    return _decide(policy, ctx, kept or {}, [realpath(p) for p in ctx.readable_paths(policy)])[0]


def _decide(policy, ctx, kept: dict[str, bool], readable: list[str]) -> tuple[str | None, list[str]]:
    why = _why_not(policy, ctx, readable)
    if why is not None:
        return why, []
    shown = visible(policy, ctx, kept, readable)
    return _audit_why_not(policy, ctx, shown), shown


def _why_not(policy, ctx, readable: list[str]) -> str | None:
    env = getattr(ctx, "env", None) or os.environ
    if env.get("SANDBOX_KERNEL_READ_VIEW", "") == "off":  # (the platform's switch, not a cell's: read at start)
        return "SANDBOX_KERNEL_READ_VIEW=off"
    if "/" in readable:
        return "filesystem.readable grants / (read-everywhere)"
    if "/proc" not in readable:
        return "filesystem.readable leaves out /proc"
    if policy.gpu["enabled"] or policy.tpu["enabled"]:
        return "an accelerator profile (its device nodes and tools stay Landlock's)"
    if policy.data.get("user_namespace", {}).get("host_uid", "same") == "subordinate":
        return "user_namespace.host_uid is subordinate"
    return None


def _audit_why_not(policy, ctx, shown: list[str]) -> str | None:
    """The kernel's channel to the supervisor (the FIFO beside audit.log, trail.py) is its own uid's
    file: mode 0200 (trail.for_launch) on a read-only mount keeps a cell from reading its events off
    it, where no capability overrides the mode; audit.log and the other kernels' FIFOs must stay out
    of the view (`shown`)."""
    if not policy.audit_log:
        return None
    if not getattr(ctx, "audit_fifo", None):
        return "an audit log the kernel writes itself (no supervisor: Landlock grants it write-only)"
    if is_root() and "CAP_DAC_OVERRIDE" in (policy.data.get("capabilities", {}).get("keep") or {}):
        return "an audit log with CAP_DAC_OVERRIDE kept (the audit FIFO's mode would not hold)"
    d = realpath(os.path.dirname(os.path.abspath(policy.audit_log)))
    inside = [v for v in shown if within(d, v)]
    if inside:
        return f"the audit log's directory {d} lies in {inside[0]}, which the kernel reads"
    return None


def visible(policy, ctx, kept: dict[str, bool], readable: list[str] | None = None) -> list[str]:
    """The real paths the read view shows (existing ones; /dev is made apart: ``devices``).
    `readable`: ``ctx.readable_paths`` already resolved, where the caller has it."""
    paths = (ctx.readable_paths(policy) if readable is None else list(readable)) + tool_paths(policy, ctx)
    paths += ctx.expand_paths(policy.data["filesystem"]["writable"])
    paths += ctx.expand_paths(policy.data["exec"]["allow"])
    paths += ctx.read_kept() + list(kept)
    paths += [p for p in (ctx.connection.path if ctx.connection else None, ctx.audit_target, ctx.ipc_dir,
                          os.getcwd(), ctx.home) if p]
    out = []
    for p in paths:
        r = realpath(p)
        if r != "/" and not within(r, "/dev") and os.path.lexists(r):
            out.append(r)
    return sorted(dict.fromkeys(out), key=lambda d: (d.count("/"), d))


def tool_paths(policy, ctx) -> list[str]:
    """Where ``accelerators.gpu.tool_dirs`` points (its directories, and each ``{which:NAME}`` found on
    PATH): shown by the read view of a GPU-less profile, which runs none of them, so that running
    nvidia-smi is refused (EACCES, and the kernel says GPU tools run only where the GPU is enabled)
    rather than not found."""
    from .. import accelerators

    path_var = ctx.env.get("PATH", os.defpath)
    out = []
    for entry in policy.gpu.get("tool_dirs", []):
        which = accelerators.which_name(entry)
        out += accelerators._which_all(which, path_var) if which else [entry]
    return [p for p in out if os.path.isabs(p)]


def devices(policy, ctx, readable: list[str] | None = None) -> list[str]:
    """The device nodes and /dev directories the read view's /dev holds (`readable`: as ``visible``)."""
    from .. import accelerators
    from .landlock import STANDARD_DEVICES, sensitive_devices

    allowed = accelerators.allowed_nodes(policy)
    denied = {realpath(n) for n in accelerators.denied_nodes(policy, allowed)}
    never = denied | {realpath(n) for n in sensitive_devices()}
    asked = [p for p in (ctx.readable_paths(policy) if readable is None else readable) if below(realpath(p), "/dev")]
    out = []
    for p in STANDARD_DEVICES + allowed + ["/dev/shm"] + asked:
        r = realpath(p)
        if within(r, "/dev") and r != "/dev" and os.path.exists(r) and r not in never \
                and not any(within(r, n) or within(n, r) for n in never):
            out.append(r)
    return sorted(dict.fromkeys(out), key=lambda d: (d.count("/"), d))


def _pivot_root(new: str, old: str) -> None:
    nr = SYS_PIVOT_ROOT.get(os.uname().machine)
    if nr is None:
        raise OSError(38, f"no pivot_root number known for {os.uname().machine}")
    if _libc.syscall(ctypes.c_long(nr), os.fsencode(new), os.fsencode(old)) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"pivot_root: {os.strerror(e)}")


def _umount(path: str) -> None:
    if _libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"umount {path}: {os.strerror(e)}")


def _place(path: str, is_dir: bool) -> None:
    """An empty directory or file at `path` in the new root (and the directories above it)."""
    if is_dir:
        os.makedirs(path, mode=0o755, exist_ok=True)
        return
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    if not os.path.lexists(path):
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600))


def _ptys(mount, wanted: bool) -> None:
    """/dev/pts and /dev/ptmx: a devpts instance of the kernel's own (as bubblewrap's --dev makes;
    the host's /dev/ptmx bound alone finds no devpts beside it), ptmx a link into it. Where no new
    instance can be mounted, the host's /dev/pts is bound and ptmx links into it."""
    from .mount_namespace import MS_BIND, MS_NOEXEC, MS_NOSUID, MS_REC

    if not wanted:
        return
    os.makedirs("/dev/pts", mode=0o755, exist_ok=True)
    try:
        mount("devpts", "/dev/pts", MS_NOSUID | MS_NOEXEC, "devpts", "newinstance,ptmxmode=0666,mode=620")
    except OSError:
        mount(OLD + "/dev/pts", "/dev/pts", MS_BIND | MS_REC)
    os.symlink("pts/ptmx", "/dev/ptmx")


def shown_not_run(policy, ctx) -> list[str]:
    """What the view shows only so that running it is refused rather than not found: the GPU tool
    paths (``tool_paths``) outside ``exec.allow``, as real paths. ``build`` mounts them noexec:
    Landlock handles no exec right under the view (``landlock.files_handled``)."""
    from ..paths import real_exec_allowed

    allowed = real_exec_allowed(policy, ctx)
    out = []
    for p in tool_paths(policy, ctx):
        r = realpath(p)
        if os.path.lexists(r) and not any(within(r, a) for a in allowed):
            out.append(r)
    return sorted(dict.fromkeys(out))


def build(paths: list[str], devs: list[str], mount, noexec: list[str] = ()) -> list[str]:
    """Make the kernel's root a tmpfs holding `paths` and a /dev holding `devs`, each bound from
    the view as it is now (called once every cover and read-only mount of that view is made, in
    the kernel's own /tmp), with `noexec` (``shown_not_run``) mounted noexec, also where a tree
    bound whole holds them. `mount`: mount_namespace._mount. Returns what it bound, for the
    layer's report. Raises OSError: before pivot_root nothing visible has changed (the caller
    removes the stage and keeps Landlock's reads); after it the caller fails as for any mount."""
    from .mount_namespace import MS_BIND, MS_NODEV, MS_NOEXEC, MS_NOSUID, MS_RDONLY, MS_REC, MS_REMOUNT, _flags_of

    os.mkdir(STAGE, 0o755)
    try:
        mount("tmpfs", STAGE, MS_NOSUID | MS_NODEV, "tmpfs", "size=1m,mode=755")
        for name in os.listdir("/"):
            if os.path.islink("/" + name):
                os.symlink(os.readlink("/" + name), f"{STAGE}/{name}")
        os.mkdir(STAGE + OLD, 0o700)
        _pivot_root(STAGE, STAGE + OLD)
    except OSError as e:
        try:
            _umount(STAGE)
        except OSError:
            pass
        os.rmdir(STAGE)
        raise NotPivoted(e.errno, e.strerror or str(e)) from None
    os.chdir("/")
    bound: list[str] = []
    for p in paths:
        if any(below(p, b) for b in bound):
            continue  # inside a tree bound whole (its mounts came with it)
        src = OLD + p
        try:
            st = os.lstat(src)
        except FileNotFoundError:
            continue  # vanished since planning
        if stat.S_ISLNK(st.st_mode):
            continue  # (real paths only: a link here is a race; nothing is bound through it)
        _place(p, stat.S_ISDIR(st.st_mode))
        mount(src, p, MS_BIND | MS_REC)
        bound.append(p)
    for p in noexec:
        if os.path.lexists(p) and not os.path.islink(p):
            mount(p, p, MS_BIND | MS_REC)
            was = os.statvfs(p).f_flag
            mount(None, p, MS_REMOUNT | MS_BIND | MS_NOEXEC | _flags_of(was) | (MS_RDONLY if was & os.ST_RDONLY else 0))
    os.makedirs("/dev", mode=0o755, exist_ok=True)
    mount("tmpfs", "/dev", MS_NOSUID | MS_NOEXEC, "tmpfs", "size=64k,mode=755")
    _ptys(mount, "/dev/pts" in devs or "/dev/ptmx" in devs)
    for d in devs:
        src = OLD + d
        if d in ("/dev/pts", "/dev/ptmx") or not os.path.exists(src):
            continue
        is_dir = stat.S_ISDIR(os.stat(src).st_mode)
        _place(d, is_dir)
        mount(src, d, MS_BIND | (MS_REC if is_dir else 0))
    for name, target in DEV_LINKS.items():
        if not os.path.lexists(f"/dev/{name}"):
            os.symlink(target, f"/dev/{name}")
    _umount(OLD)
    os.rmdir(OLD)
    try:
        os.rmdir(STAGE)  # (the empty directory left in the kernel's /tmp)
    except OSError:
        pass
    return bound
