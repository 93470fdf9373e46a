"""PID namespace and supervisor: no process outlives its kernel.

Enforcement: hard. A process a cell starts can leave the kernel's process group and
session (``start_new_session=True``, ``setsid``, a double fork), so killing the group,
which is what Jupyter does at shutdown, restart and kill, misses it; such a survivor
kept running across restarts and rewrote files the next start read. Here the launcher
enters a new PID namespace (with a new IPC namespace, and a user namespace of the kernel's
own: for an ordinary user it maps only its own uid and gid, for root every uid and gid the
launcher has onto itself) and forks:

- the launcher process, which Jupyter knows as the kernel, stays outside as the
  **supervisor**: it waits for the namespace's init and exits with the kernel's status;
  it ignores SIGINT (Jupyter interrupts the kernel's process group, which still holds
  the kernel) and passes SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 on;
- its child is **pid 1 of the namespace** (init): it enters the kernel's new mount
  namespace (so the supervisor keeps the host's view, where it can still kill and remove
  the kernel's cgroup once the kernel's view of / is read-only), dies with the supervisor
  (``PR_SET_PDEATHSIG``), reaps orphans, passes those signals on to the kernel, and
  exits when the kernel exits. When the init of a PID namespace exits, the OS kernel
  kills every other process in it: nothing survives, however it detached. Tenant code
  cannot kill init (it ignores signals from inside the namespace it has no handler for,
  SIGKILL included) nor trace it (seccomp, and Landlock's ptrace rule). Once it has forked
  the kernel, init execs ``sandbox-kernel-init`` (``init.c``; ``init_helper.py``), which does
  the same in C and saves ~4 MiB per kernel, where ``sandbox-kernel install`` could build it
  beside the kernelspec's policy cache; elsewhere the Python init goes on. The layer's detail
  says which;
- the init's child goes on through the remaining layers and becomes the kernel.

The kernel's own user namespace is what makes Linux count per kernel what it otherwise
counts per uid (ucounts are kept per user namespace and uid): the rlimits layer, which
runs after this one, sets RLIMIT_NPROC, RLIMIT_MSGQUEUE and RLIMIT_SIGPENDING and the
namespace's /proc/sys/user/max_inotify_* there, so one kernel cannot use up what the
uid's other kernels and host processes need (see rlimits). Charges still count toward the
host uid's own limits as well (Linux checks every level), so the host limits must cover
the uid's kernels together: ``sandbox-kernel doctor`` compares them. Root maps every uid
onto itself, so root in the kernel holds no capability over the host's user namespace
(those it keeps, see capabilities, act inside the kernel's own namespaces); the map is
written by a helper forked beforehand, still in the host's namespace (a process cannot map
more than its own id from inside, as newuidmap does for rootless containers). Where root
cannot create a user namespace (a container whose seccomp profile refuses it), the PID
namespace is entered without one, and the layer says that the per-uid counters are shared.

With ``user_namespace.host_uid: subordinate`` (a root launcher; see layers/subuid.py) the
chain has one more process: the supervisor (host root, the host's namespaces) forks a relay
that becomes a host uid and gid of this kernel's own, from root's /etc/subuid range, and
creates the user, PID and IPC namespaces, so that the namespace is *owned* by that uid; the
supervisor writes its maps (the tenant's uid inside, the subordinate one outside), and the
relay forks the namespace's init, waits for it and passes signals on. Linux charges what a
namespace's processes count per uid to the namespace's owner at every level up to the host's,
so only this kernel's uid is charged; and a root tenant is uid 0 only inside: host files are
not its own, whatever capabilities it keeps. vm.memfd_noexec is then not set (it is host
root's file; seccomp still requires MFD_NOEXEC_SEAL).

Where Jupyter's stdout or stderr is a regular file (its output redirected to a log), the
kernel gets a pipe instead, which the supervisor copies into the file, and a regular file
on stdin is replaced by /dev/null: an open file is reached through the mount it was opened
on, the host's, not the kernel's read-only view, so with the file itself a root tenant
changed the log's mode (setuid), owner, times and length.

Inside the new namespace, as root, ``vm.memfd_noexec`` is set to 2 (it is per PID
namespace since Linux 6.3): memory files are created sealed non-executable, so a
program written to a memfd cannot be exec'd (seccomp refuses the rest, see there).

Without a PID namespace (no CAP_SYS_ADMIN and no user namespaces, as in a default
container) but with a cgroup, the supervisor still forks the kernel and, when it exits,
kills whatever is left in the kernel's cgroup; a supervisor killed outright leaves that
to the next start's cgroup sweep. That is reported ``partial``.

This module makes the namespaces; the processes of the chain (supervisor, relay, init)
are in ``sandbox_kernel/supervisor.py``.
"""

from __future__ import annotations

import ctypes
import errno
import os

from ..identity import is_root
from .status import level_or_off, simulated_missing

NAME = "pid_namespace"
# What this layer is (the facts every layer declares; layers/registry.py derives every list from them)
HARD = True  # enforced by the OS kernel (True) or by in-process hooks (False)
CONFIGURABLE = True  # the profile's enforcement.pid_namespace can make it best-effort or off
CHECKED_BY_KERNEL = False  # the kernel refuses to run without the launcher's report of it
# HINT: what makes the layer available, for doctor (None: its refusal says)
HINT = "as root: CAP_SYS_ADMIN; as an ordinary user: unprivileged user namespaces"
DESCRIPTION = "the kernel is pid 2 of its own PID, IPC and user namespace under a supervisor: its processes die with it"
# DEFAULT: its enforcement level where a profile names none (None: not configurable)
DEFAULT = "best-effort"
# README: what README.md's list of layers says of it (generated there: python -m sandbox_kernel.layer_doc --write)
README = ("the kernel runs as pid 2 of its own PID (and IPC, and user) namespace under an init that dies with "
          "the launcher process Jupyter knows as the kernel (the supervisor). When the kernel exits, is shut "
          "down, restarted or killed, the OS kernel kills every process left in the namespace, however it "
          "detached (`start_new_session`, `setsid`, a double fork). That init is a small C program "
          "(`sandbox-kernel-init`, which `sandbox-kernel install` builds where the host has a C compiler; "
          "else the launcher's Python). The supervisor also watches the Jupyter "
          "process (`JPY_PARENT_PID`) as ipykernel does. As root, `vm.memfd_noexec=2` in that namespace. The "
          "kernel's own user namespace (an ordinary user's maps only its uid; root's maps every uid onto "
          "itself, so root in the kernel holds no capability over the host's namespaces: any a profile keeps in"
          " `capabilities.keep` act on files and on the kernel's own namespaces; `CAP_NET_BIND_SERVICE`, for "
          "instance, does not bind ports below 1024 in the host's network namespace) is what lets Linux count "
          "per kernel what it counts per uid (next layer). With `user_namespace.host_uid: subordinate` (root "
          "launcher; default `same`) that namespace is owned by a host uid of the kernel's own from root's "
          "`/etc/subuid` range, with the tenant's uid inside (root stays uid 0 there): a root tenant is then "
          "not uid 0 on the host (root's files elsewhere are read as anyone's), its per-uid counts never reach "
          "the tenant's uid, and its writable directories, connection file and audit log are idmapped mounts, "
          "so what it writes still belongs to the tenant. Without a namespace (no CAP_SYS_ADMIN and no user "
          "namespaces), the supervisor kills the kernel's cgroup when the kernel exits. The supervisor keeps "
          "the host's mount namespace (the init enters the kernel's), and where Jupyter's stdout or stderr is a"
          " log file it copies the kernel's output there from a pipe, so the kernel holds no open host file.")
NEEDS = ("cgroup",)  # the earlier layers whose results apply() reads (given[NAME])
# RESULT (below): the class of what apply() returns for later layers
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x08000000, 0x10000000, 0x20000000
MEMFD_NOEXEC = "/proc/sys/vm/memfd_noexec"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(res: int, what: str) -> None:
    if res != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def unshare(flags: int) -> None:
    """unshare(2); with CLONE_NEWUSER, map this process's own uid and gid into the new namespace
    (as root: every uid and gid it has, see unshare_root_mapped)."""
    if flags & CLONE_NEWUSER and is_root():
        unshare_root_mapped(flags)
        return
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(flags), "unshare")
    if flags & CLONE_NEWUSER:
        write_id_maps("self", uid, uid, gid, gid)


def write_id_maps(pid: str, inside_uid: int, outside_uid: int, inside_gid: int, outside_gid: int) -> None:
    """One uid and one gid mapped in the user namespace of /proc/<pid> ("self" or a number),
    setgroups denied first (as Linux requires of an unprivileged map, and so that a tenant
    cannot drop a group to pass a group-denying mode). O_WRONLY without O_CREAT: these are
    /proc files, never new plain ones."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"{inside_uid} {outside_uid} 1"),
                       ("gid_map", f"{inside_gid} {outside_gid} 1")):
        fd = os.open(f"/proc/{pid}/{name}", os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, text.encode())
        finally:
            os.close(fd)


def _identity_map(which: str) -> str:
    """Every id of this process's user namespace mapped onto itself (``0 0 4294967295`` on a host)."""
    lines = []
    with open(f"/proc/self/{which}") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) == 3:
                lines.append(f"{parts[0]} {parts[0]} {parts[2]}")
    return "\n".join(lines)


def unshare_root_mapped(flags: int) -> None:
    """unshare(2) with CLONE_NEWUSER as root, every uid and gid mapped onto itself.

    Mapping more than one's own id needs CAP_SETUID over the parent namespace, which a
    process loses by entering the new one: a helper forked beforehand, still in the parent
    namespace, writes the maps (newuidmap's part for rootless containers). A failure after
    the namespace exists leaves this process unmapped: SandboxError, never a fallback."""
    from ..errors import SandboxError

    maps = {name: _identity_map(name) for name in ("uid_map", "gid_map")}
    go_r, go_w = os.pipe()
    done_r, done_w = os.pipe()
    helper = os.fork()
    if helper == 0:  # the helper: only os calls, then _exit
        said, name = b"the launcher did not enter its user namespace", ""
        try:
            os.close(go_w)
            os.close(done_r)
            if os.read(go_r, 1) == b"u":
                parent = os.getppid()
                for name, text in maps.items():
                    fd = os.open(f"/proc/{parent}/{name}", os.O_WRONLY | os.O_CLOEXEC)
                    try:
                        os.write(fd, text.encode())
                    finally:
                        os.close(fd)
                said = b"ok"
        except OSError as e:
            said = f"writing its {name}: {e.strerror}".encode()
        finally:
            try:
                os.write(done_w, said)
            finally:
                os._exit(0)
    os.close(go_r)
    os.close(done_w)
    try:
        res = _libc.unshare(flags)
        err = ctypes.get_errno()
        os.write(go_w, b"u" if res == 0 else b"n")
        os.close(go_w)
        go_w = -1
        said = os.read(done_r, 512)
    finally:
        if go_w >= 0:
            os.close(go_w)
        os.close(done_r)
        os.waitpid(helper, 0)
    if res != 0:
        raise OSError(err, f"unshare: {os.strerror(err)}")
    if said != b"ok":
        raise SandboxError(f"the kernel's user namespace was created but could not be mapped "
                           f"({said.decode(errors='replace') or 'the helper process died'}); not starting")


def _set_memfd_noexec() -> bool:
    """vm.memfd_noexec=2 in this (new) PID namespace: memfds are sealed non-executable, MFD_EXEC refused."""
    try:
        with open(MEMFD_NOEXEC, "w") as fh:
            fh.write("2")
        with open(MEMFD_NOEXEC) as fh:
            return fh.read().strip() == "2"
    except OSError:
        return False


class Entered:
    """What this layer hands on (to rlimits, mount_namespace and seccomp): the namespaces this
    process is in now ("pid", "ipc", "user"; "mount" once the namespace's init entered one for it,
    or the mount_namespace layer did), the inode of the user namespace the launcher started in, why
    root's kernel has no user namespace of its own ("" where it has one, or was not asked), whether
    vm.memfd_noexec=2 holds, the supervisor's listen() channel and the subordinate-uid plan."""

    def __init__(self):
        self.namespaces: set[str] = set()
        self.host_userns: int | None = None
        self.no_userns_why = ""
        self.memfd_noexec = False  # vm.memfd_noexec=2 is in force in the kernel's PID namespace (seccomp)
        self.listen_channel = None  # the kernel's end of the supervisor's listen() channel (seccomp takes it)
        self.subordinate = None  # user_namespace.host_uid: subordinate (subuid.Plan; rlimits, mount_namespace)


RESULT = Entered


def prepare(policy, ctx) -> None:
    """user_namespace.host_uid: subordinate: the ids and the idmapped mounts, made while the
    launcher is still host root and in the host's view (refuses to start where it cannot)."""
    if policy.data.get("user_namespace", {}).get("host_uid", "same") != "subordinate":
        return  # (asked here: importing subuid costs ~1 ms of a start that does not use it)
    from . import subuid

    ctx.subordinate_plan = subuid.prepare(policy, ctx)  # (this layer's apply hands it on in Entered)


def _apply_subordinate(policy, ctx, status, plan, cgroups: list[str], entered: Entered) -> None:
    from .. import supervisor
    from ..errors import SandboxError

    try:
        entered.host_userns = os.stat("/proc/self/ns/user").st_ino
    except OSError:
        pass
    if simulated_missing(NAME):
        raise SandboxError("user_namespace.host_uid is subordinate, but namespaces are not available (simulated); "
                           "not starting")
    entered.namespaces |= {"pid", "ipc", "user"}
    entered.subordinate = plan
    entered.listen_channel = supervisor.fork_chain(
        ctx, cgroups, entered.namespaces, with_init=True, broker=supervisor.listen_broker_for(policy, ctx),
        mount_ns=policy.enforcement("mount_namespace") != "off", plan=plan,
        trail=supervisor.trail_for(policy, ctx, entered.namespaces))
    # (vm.memfd_noexec stays unset: /proc/sys/vm is host root's, the kernel's uid is not uid 0 on the host)
    groups = f", supplementary groups {', '.join(map(str, plan.groups))} (accelerator nodes)" if plan.groups else ""
    status.active(NAME, f"PID + IPC namespaces in the kernel's own user namespace, owned by host uid {plan.alloc.uid} "
                        f"(gid {plan.alloc.gid}{groups}; user_namespace.host_uid: subordinate), uid {plan.inside_uid} "
                        f"inside: per-uid counters are this kernel's own, host files are not its own"
                        f"; the kernel is pid 2 under its own init: every process dies with it")


def _open_kaudit(policy, ctx) -> None:
    """The kernel audit reader (kaudit.open_reader), joined while the launcher still holds
    CAP_AUDIT_READ in the host's user namespace: before it enters the kernel's."""
    if policy.audit_log and ctx.audit_fifo and getattr(ctx, "kaudit", None) is None:
        from .. import kaudit

        ctx.kaudit = kaudit.open_reader()


def apply(policy, ctx, status, given) -> Entered:
    from .. import supervisor  # (it imports this module)

    groups = given["cgroup"].groups if given["cgroup"] is not None else []
    entered = Entered()
    _open_kaudit(policy, ctx)
    level = level_or_off(policy, NAME, status, "enforcement.pid_namespace is off: processes a cell detaches "
                                               "may outlive the kernel")
    why = None
    plan = None
    if level is not None and ctx.subordinate_plan is not None:
        plan = ctx.subordinate_plan
        _apply_subordinate(policy, ctx, status, plan, groups, entered)
        return entered
    if level is not None:
        root = is_root()
        want_mount = policy.enforcement("mount_namespace") != "off"
        # (the mount namespace is entered after the supervisor's fork, by the namespace's init)
        flags = CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUSER
        try:
            entered.host_userns = os.stat("/proc/self/ns/user").st_ino
        except OSError:
            pass
        try:
            if simulated_missing(NAME):
                raise OSError(errno.EPERM, "namespaces are not available (simulated)")
            try:
                unshare(flags)
            except OSError as e:
                if not root:
                    raise
                # root without a user namespace (e.g. a container's seccomp profile refuses it):
                # the PID namespace still works; the per-uid counters are shared (rlimits says so)
                entered.no_userns_why = e.strerror or str(e)
                flags &= ~CLONE_NEWUSER
                unshare(flags)
        except OSError as e:
            why = e.strerror or str(e)
        else:
            entered.namespaces |= {"pid", "ipc"} | ({"user"} if flags & CLONE_NEWUSER else set())
            entered.listen_channel = supervisor.fork_chain(
                ctx, groups, entered.namespaces, with_init=True, broker=supervisor.listen_broker_for(policy, ctx),
                mount_ns=want_mount, trail=supervisor.trail_for(policy, ctx, entered.namespaces))
            entered.memfd_noexec = root and _set_memfd_noexec()
            userns = ("" if not flags & CLONE_NEWUSER else " in the kernel's own user namespace"
                      + (" (every uid mapped onto itself)" if root else ""))
            nouserns = (f" (no user namespace of its own: {entered.no_userns_why}; the uid's per-user counters are "
                        f"shared with its other processes)" if entered.no_userns_why else "")
            status.active(NAME, "PID + IPC namespaces" + userns + nouserns
                          + "; the kernel is pid 2 under its own init: every process dies with it"
                          + (f" (init: {ctx.init_program})" if ctx.init_program else "")
                          + ("; vm.memfd_noexec=2" if entered.memfd_noexec else ""))
            return entered
        fallback = (f"without a PID namespace ({why}) the cgroup is killed when the kernel exits, and at the next "
                    f"start if the supervisor was killed" if groups else
                    f"no PID namespace ({why}) and no cgroup: processes a cell detaches may outlive the kernel")
        status.cannot(NAME, level, fallback)  # raises when required
        if groups:
            status.partial(NAME, fallback)
    if groups:
        entered.listen_channel = supervisor.fork_chain(
            ctx, groups, entered.namespaces, with_init=False, broker=supervisor.listen_broker_for(policy, ctx),
            trail=supervisor.trail_for(policy, ctx, entered.namespaces))
    else:
        from .. import trail

        trail.no_supervisor(ctx)  # the kernel appends to audit.log itself (soft)
    return entered
