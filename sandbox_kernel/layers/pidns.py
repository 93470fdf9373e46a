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
  SIGKILL included) nor trace it (seccomp, and Landlock's ptrace rule);
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
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat

from ..standins import signal  # the C module: enum, functools and collections cost ~5 ms of every start
from .base import level_or_off, simulated_missing

NAME = "pid_namespace"
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x08000000, 0x10000000, 0x20000000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
MEMFD_NOEXEC = "/proc/sys/vm/memfd_noexec"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(res: int, what: str) -> None:
    if res != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def unshare(flags: int) -> None:
    """unshare(2); with CLONE_NEWUSER, map this process's own uid and gid into the new namespace
    (as root: every uid and gid it has, see unshare_root_mapped)."""
    if flags & CLONE_NEWUSER and os.getuid() == 0:
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


def _exit_like(status: int) -> None:
    """Exit with the status of a child that ended with `status` (as waitpid reported it)."""
    if os.WIFSIGNALED(status):
        os._exit(128 + os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def watch_jupyter_parent() -> int | None:
    """A pidfd of the process to die with, as ipykernel's parent poller decides it: where
    JPY_PARENT_PID is set (Jupyter started us), our parent: Jupyter itself, or the process
    between us (ipykernel exits when its parent changes). The kernel's own poller cannot do
    this: its parent is its init, pid 1. Called first thing in the launcher, so that if Jupyter
    dies while the layers are being applied the pidfd still says so; if it is gone already (we
    were handed to pid 1), there is no kernel to start."""
    from ..errors import SandboxError

    try:
        expected = int(os.environ.get("JPY_PARENT_PID", ""))
    except ValueError:
        return None
    parent = os.getppid()
    if parent == 1 and expected != 1:
        raise SandboxError(f"the Jupyter process that started this kernel (JPY_PARENT_PID={expected}) is gone; "
                           f"not starting an orphaned kernel")
    try:
        fd = os.pidfd_open(parent)
    except OSError:
        return None
    if os.getppid() != parent:  # it died between the two looks: the pidfd may name a reused pid
        os.close(fd)
        raise SandboxError(f"the process that started this kernel (pid {parent}) is gone; not starting an "
                           f"orphaned kernel")
    return fd


def _output_relays() -> list[tuple[list[int], int, int]]:
    """([fds], read end, write end) for stdout and stderr where they are regular files (Jupyter's
    output redirected to a log file): the kernel gets a pipe instead, which the supervisor copies
    into the file. An open file is reached through the mount it was opened on, the host's, not
    the kernel's read-only view: with it a root tenant changed the log's mode (setuid), owner,
    times and length (fchmod, fchown, futimens, ftruncate on fd 2)."""
    out: dict[tuple[int, int], list[int]] = {}
    for fd in (1, 2):
        try:
            st = os.fstat(fd)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            out.setdefault((st.st_dev, st.st_ino), []).append(fd)
    relays = []
    for fds in out.values():
        r, w = os.pipe()
        relays.append((fds, r, w))
    return relays


def _copy(src: int, dst: int) -> bool:
    """Copy what `src` holds now into `dst`; False at end of file (every writer gone)."""
    try:
        data = os.read(src, 65536)
    except BlockingIOError:
        return True
    except OSError:
        return False
    if not data:
        return False
    while data:
        try:
            data = data[os.write(dst, data):]
        except OSError:
            break  # the log is gone or full: the kernel's output is dropped, never blocked on
    return True


def _is_file(fd: int) -> bool:
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode)
    except OSError:
        return False


def _supervise(child: int, groups: list[str], parent_fd: int | None, broker=None, channel=None,
               relays=(), trail=None) -> None:
    """The launcher process after the fork: pass signals on, answer the kernel's listen()
    calls (``listen_broker``: the seccomp layer sends the listener over `channel`), copy the
    kernel's output into the files Jupyter gave (relays), wait for the kernel (or for the
    Jupyter process to vanish), clean up, exit like the kernel."""
    import select

    from . import cgroup

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # It keeps the host's mount namespace: not dumpable, so that no process of the kernel's
    # uid reaches the host's view through /proc/<supervisor>/root or /cwd (ptrace access).
    _libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    for sig in FORWARDED:
        signal.signal(sig, lambda signum, frame: _forward(child, signum))
    poller = select.poll()
    child_fd = os.pidfd_open(child)
    poller.register(child_fd, select.POLLIN)
    if parent_fd is not None:
        poller.register(parent_fd, select.POLLIN)
    channel_fd = notify_fd = None
    if channel is not None:
        channel_fd = channel.fileno()
        poller.register(channel_fd, select.POLLIN)
    copies = {r: fds[0] for fds, r, _w in relays}
    for r in copies:
        poller.register(r, select.POLLIN)
    fifo_fd = None
    if trail is not None:
        fifo_fd = trail.fifo_fd
        poller.register(fifo_fd, select.POLLIN)
        if broker is not None:
            broker.trail = trail
        os.close(trail.notice_r)
        trail.accounting.stop_kernel = lambda: _stop(child)
        kaudit_reader = None
        sock, why = getattr(trail, "kaudit", (None, "the launcher did not ask"))
        if sock is not None:
            from ..kaudit import LandlockAudit

            watched = {"net.connect_tcp", "fs.execute"} if broker is not None and getattr(broker, "watch", None) else ()
            kaudit_reader = LandlockAudit(sock, trail, child, trail.kaudit_pidns, watched)
            poller.register(kaudit_reader.fileno(), select.POLLIN)
        said = ("read by the supervisor (kernel audit, Landlock ABI 7)" + (f"; {why}" if why else "")
                if sock is not None else f"not recorded by the supervisor: {why}")
        trail.write("kernel started", layer="pid_namespace", host_pid=child, landlock_audit=said,
                    detail="the supervisor writes this trail; the kernel's events arrive marked source=kernel; "
                           f"file and device access Landlock refuses: {said}")
    status = 1 << 8
    while True:
        try:
            events = dict(poller.poll(None if trail is None else 1000))
        except InterruptedError:
            events = {}
        ready = set(events)
        if trail is not None:
            if fifo_fd in ready:
                trail.drain()
            if kaudit_reader is not None:
                kaudit_reader.drain()
            trail.maybe_summarize()
        for r in ready & set(copies):
            if not _copy(r, copies[r]):
                poller.unregister(r)  # no writer is left
                del copies[r]
                os.close(r)
        if parent_fd in ready:  # Jupyter is gone: so is the kernel (its init dies with us)
            _forward(child, signal.SIGKILL)
        if channel_fd in ready:  # the seccomp layer's listener, once (or EOF: none is coming)
            from .. import listen_broker

            notify_fd = listen_broker.receive_listener(channel)
            poller.unregister(channel_fd)
            channel.close()
            channel_fd = None
            if notify_fd is not None:
                poller.register(notify_fd, select.POLLIN)
        elif notify_fd in ready:
            if events[notify_fd] & select.POLLIN:
                broker.handle(notify_fd)
            elif events[notify_fd] & (select.POLLHUP | select.POLLERR | select.POLLNVAL):
                poller.unregister(notify_fd)  # no process of the sandbox is left to ask
                os.close(notify_fd)
                notify_fd = None
        try:
            pid, status = os.waitpid(child, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == child:
            break
    kill = getattr(cgroup, "kill", None)
    if groups and kill is not None:
        try:
            kill(groups, spare_pid=os.getpid())
        except OSError:
            pass
    for r, dst in copies.items():  # what the kernel wrote last
        os.set_blocking(r, False)
        while _copy(r, dst):
            try:
                if not select.select([r], [], [], 0)[0]:
                    break
            except OSError:
                break
    if trail is not None:
        try:
            if kaudit_reader is not None:
                kaudit_reader.close()  # the refusals of the kernel's last moments
            trail.close()  # what the FIFO still holds, the last flood summary
            ended = ({"signal": os.WTERMSIG(status)} if os.WIFSIGNALED(status)
                     else {"exit_status": os.waitstatus_to_exitcode(status)} if os.WIFEXITED(status) else {})
            trail.write("kernel exited", layer="pid_namespace", **ended)
        except Exception:
            pass
    _exit_like(status)


def _stop(child: int) -> None:
    """The violation policy stops the kernel: a moment for the notebook to show why, then SIGKILL
    to the namespace's init (every process of the kernel dies with it)."""
    import time

    time.sleep(0.5)
    _forward(child, signal.SIGKILL)


def _forward(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except OSError:
        pass


def _die_with_parent(alive_fd: int) -> None:
    """PR_SET_PDEATHSIG(SIGKILL), then make sure the parent did not die before it took effect."""
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    os.set_blocking(alive_fd, False)
    try:
        if os.read(alive_fd, 1) == b"":  # EOF: every write end is closed, the parent is gone
            os._exit(1)
    except BlockingIOError:
        pass  # the parent holds the write end: alive
    os.close(alive_fd)


def _init(kernel: int) -> None:
    """pid 1 of the namespace: reap every orphan, pass signals on, exit when the kernel exits."""
    waited = {signal.SIGCHLD, *FORWARDED}
    while True:
        info = signal.sigwaitinfo(waited)
        if info.si_signo != signal.SIGCHLD:
            if info.si_pid != os.getpid():
                _forward(kernel, info.si_signo)
            continue
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                os._exit(1)
            if pid == 0:
                break
            if pid == kernel:
                _exit_like(status)  # the OS kernel now kills every process left in the namespace


_MAP_TIMEOUT_S = 30


def _map_relay(relay: int, plan) -> None:
    """In the supervisor: wait until the relay has created its namespaces, write their maps
    (the supervisor is still host root), tell it to go on. A failure kills the relay (and so
    the chain) and refuses the start."""
    from ..errors import SandboxError

    said = b""
    try:
        import select

        r, w = plan.channel
        os.close(plan.relay_end[0])
        os.close(plan.relay_end[1])
        if select.select([r], [], [], _MAP_TIMEOUT_S)[0]:
            said = os.read(r, 512)
        if said == b"u":
            from .subuid import write_maps

            write_maps(relay, plan.inside_uid, plan.inside_gid, plan.alloc)
            os.write(w, b"g")
            os.close(r)
            os.close(w)
            return
        why = said.decode(errors="replace") or "it died"
    except OSError as e:
        why = f"writing its maps: {e.strerror}"
    _forward(relay, signal.SIGKILL)
    try:
        os.waitpid(relay, 0)
    except ChildProcessError:
        pass
    raise SandboxError(f"user_namespace.host_uid is subordinate, but the kernel's user namespace (owned by host uid "
                       f"{plan.alloc.uid}) could not be created and mapped ({why}); not starting")


def _relay_chain(ctx, plan, read_end: int) -> int:
    """In the supervisor's child: become the subordinate uid, create the namespaces, wait for
    the maps, fork init; the relay stays here (waiting for init) and init returns the read
    end of its own pipe to the relay."""
    to_sup_w, from_sup_r = plan.relay_end
    os.close(plan.channel[0])
    os.close(plan.channel[1])
    try:
        plan.become()  # (changing the uid clears PR_SET_PDEATHSIG: set after this, by the caller)
        _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWIPC), "unshare")
    except OSError as e:
        os.write(to_sup_w, (e.strerror or str(e)).encode()[:500])
        os._exit(1)
    os.write(to_sup_w, b"u")
    if os.read(from_sup_r, 1) != b"g":
        os._exit(1)
    os.close(to_sup_w)
    os.close(from_sup_r)
    _die_with_parent(read_end)
    init_r, init_w = os.pipe()
    init = os.fork()
    if init:
        os.close(init_r)
        if ctx.listen_channel is not None:
            ctx.listen_channel.close()
        plan.close_clones()
        _relay(init)  # never returns
    os.close(init_w)
    return init_r


def _relay(child: int) -> None:
    """The relay between the supervisor and the namespace's init: passes signals on, exits like init."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in FORWARDED:
        signal.signal(sig, lambda signum, frame: _forward(child, signum))
    while True:
        try:
            pid, status = os.waitpid(child, 0)
        except ChildProcessError:
            os._exit(1)
        if pid == child:
            _exit_like(status)


def fork_chain(ctx, with_init: bool, broker=None, mount_ns: bool = False, plan=None, trail=None) -> None:
    """Fork the supervisor chain; returns only in the process that becomes the kernel.
    With a `broker` (listen_broker.Broker), the supervisor decides listen(): the kernel side
    gets ``ctx.listen_channel``, over which the seccomp layer sends the filter's listener.

    With `mount_ns`, the namespace's init enters a new mount namespace before it forks the
    kernel: the kernel's view (read-only /, private /tmp, ...) is shared by init and the
    kernel, never by the supervisor, which must still write the host's cgroup files
    (cgroup.kill, cgroup.procs) and remove the kernel's groups when the kernel exits.

    With a `plan` (subuid.Plan: ``user_namespace.host_uid: subordinate``), the supervisor's
    child is a relay: it becomes the subordinate uid, creates the user (owned by that uid),
    PID and IPC namespaces, waits for the supervisor (host root) to write its maps, and
    forks the namespace's init; it then waits for init and passes signals on."""
    relays = _output_relays()
    read_end, write_end = os.pipe()
    channel = kernel_end = None
    if broker is not None:
        from .. import listen_broker

        channel, kernel_end = listen_broker.pair()
    child = os.fork()
    if child:
        os.close(read_end)
        if kernel_end is not None:
            kernel_end.close()
        for _fds, _r, w in relays:
            os.close(w)
        if plan is not None:
            plan.close_clones()
            _map_relay(child, plan)
        _supervise(child, list(ctx.cgroups), ctx.jupyter_parent_fd, broker, channel, relays, trail)  # never returns
    os.close(write_end)
    if trail is not None:
        from .. import trail as trail_module

        trail_module.kernel_side(ctx, trail)
    if channel is not None:
        channel.close()
    ctx.listen_channel = kernel_end
    for fds, r, w in relays:
        for fd in fds:
            os.dup2(w, fd)
        os.close(r)
        os.close(w)
    if _is_file(0):  # nothing reads a kernel's stdin; a file there could be fchmod-ed like the log
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.close(null)
    if plan is not None:
        read_end = _relay_chain(ctx, plan, read_end)  # returns in the namespace's init
    _die_with_parent(read_end)
    if not with_init:
        return
    if mount_ns:
        try:
            unshare(CLONE_NEWNS)
            ctx.namespaces.add("mount")
        except OSError:
            pass  # the mount_namespace layer tries again in the kernel's process, and says why if it cannot
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, *FORWARDED})
    read_end, write_end = os.pipe()
    kernel = os.fork()
    if kernel:
        os.close(read_end)
        if ctx.listen_channel is not None:
            ctx.listen_channel.close()
        if plan is not None:
            plan.close_clones()
        _init(kernel)  # never returns
    os.close(write_end)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD, *FORWARDED})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _die_with_parent(read_end)


def _set_memfd_noexec() -> bool:
    """vm.memfd_noexec=2 in this (new) PID namespace: memfds are sealed non-executable, MFD_EXEC refused."""
    try:
        with open(MEMFD_NOEXEC, "w") as fh:
            fh.write("2")
        with open(MEMFD_NOEXEC) as fh:
            return fh.read().strip() == "2"
    except OSError:
        return False


def listen_broker_for(policy, ctx):
    """The supervisor's listen() rules (listen_broker.Broker), where seccomp will send it listen()."""
    ports = policy.network.get("listen_ports", [])
    if policy.enforcement("seccomp") == "off" or (ports == "any" and not policy.audit_log):
        return None
    from .. import listen_broker

    # (with listen_ports: any and an audit log, the broker only answers the refused system calls)
    broker = listen_broker.Broker(ctx.kernel_ports, [] if ports == "any" else ports)
    if policy.audit_log:
        broker.watch = _landlock_watch(policy, ctx)
    return broker


def _landlock_watch(policy, ctx) -> dict:
    """What the Landlock layer will refuse, for the supervisor's records of connect() and execve()."""
    mode = policy.network["mode"]
    roots = [os.path.realpath(d) for d in ctx.expand_paths(policy.data["exec"]["allow"])]
    if policy.gpu["enabled"]:
        from . import accelerators

        try:
            roots += accelerators.exec_dirs(policy, ctx)
        except Exception:
            pass
    return {"mode": mode, "exec_roots": roots,
            "connect_ports": set(policy.network["tcp_connect_ports"]) if mode == "restricted" else set()}


def prepare(policy, ctx) -> None:
    """user_namespace.host_uid: subordinate: the ids and the idmapped mounts, made while the
    launcher is still host root and in the host's view (refuses to start where it cannot)."""
    from . import subuid

    if subuid.wanted(policy):
        ctx.subordinate_plan = subuid.prepare(policy, ctx)


def _apply_subordinate(policy, ctx, status, plan) -> None:
    from ..errors import SandboxError

    try:
        ctx.host_userns = os.stat("/proc/self/ns/user").st_ino
    except OSError:
        pass
    if simulated_missing(NAME):
        raise SandboxError("user_namespace.host_uid is subordinate, but namespaces are not available (simulated); "
                           "not starting")
    ctx.namespaces = {"pid", "ipc", "user"}
    fork_chain(ctx, with_init=True, broker=listen_broker_for(policy, ctx),
               mount_ns=policy.enforcement("mount_namespace") != "off", plan=plan, trail=_trail_for(policy, ctx))
    ctx.memfd_noexec = False  # (/proc/sys/vm is host root's: the kernel's uid is not uid 0 on the host)
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


def apply(policy, ctx, status) -> None:
    _open_kaudit(policy, ctx)
    level = level_or_off(policy, NAME, status, "enforcement.pid_namespace is off: processes a cell detaches "
                                               "may outlive the kernel")
    why = None
    plan = None
    if level is not None and ctx.subordinate_plan is not None:
        plan = ctx.subordinate_plan
        _apply_subordinate(policy, ctx, status, plan)
        return
    if level is not None:
        root = os.getuid() == 0
        want_mount = policy.enforcement("mount_namespace") != "off"
        # (the mount namespace is entered after the supervisor's fork, by the namespace's init)
        flags = CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUSER
        try:
            ctx.host_userns = os.stat("/proc/self/ns/user").st_ino
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
                ctx.no_userns_why = e.strerror or str(e)
                flags &= ~CLONE_NEWUSER
                unshare(flags)
        except OSError as e:
            why = e.strerror or str(e)
        else:
            ctx.namespaces = {"pid", "ipc"} | ({"user"} if flags & CLONE_NEWUSER else set())
            fork_chain(ctx, with_init=True, broker=listen_broker_for(policy, ctx), mount_ns=want_mount,
                       trail=_trail_for(policy, ctx))
            ctx.memfd_noexec = root and _set_memfd_noexec()
            userns = ("" if not flags & CLONE_NEWUSER else " in the kernel's own user namespace"
                      + (" (every uid mapped onto itself)" if root else ""))
            nouserns = (f" (no user namespace of its own: {ctx.no_userns_why}; the uid's per-user counters are "
                        f"shared with its other processes)" if ctx.no_userns_why else "")
            status.active(NAME, "PID + IPC namespaces" + userns + nouserns
                          + "; the kernel is pid 2 under its own init: every process dies with it"
                          + ("; vm.memfd_noexec=2" if ctx.memfd_noexec else ""))
            return
        fallback = (f"without a PID namespace ({why}) the cgroup is killed when the kernel exits, and at the next "
                    f"start if the supervisor was killed" if ctx.cgroups else
                    f"no PID namespace ({why}) and no cgroup: processes a cell detaches may outlive the kernel")
        status.cannot(NAME, level, fallback)  # raises when required
        if ctx.cgroups:
            status.partial(NAME, fallback)
    if ctx.cgroups:
        fork_chain(ctx, with_init=False, broker=listen_broker_for(policy, ctx), trail=_trail_for(policy, ctx))
    else:
        from .. import trail

        trail.no_supervisor(ctx)  # the kernel appends to audit.log itself (soft)


def _trail_for(policy, ctx):
    """The supervisor's audit trail (trail.Trail), where the profile keeps an audit log."""
    if not ctx.audit_fifo:
        return None
    from ..errors import SandboxError
    from .. import trail

    try:
        t = trail.for_launch(policy, ctx)
        if t is not None:
            t.kaudit = getattr(ctx, "kaudit", None) or (None, "the launcher did not ask")
            t.kaudit_pidns = "pid" in ctx.namespaces
        if t is not None:  # the notices the supervisor sends to the notebook (violation policy)
            t.notice_r, t.notice_w = os.pipe()
            os.set_inheritable(t.notice_r, False)
            t.accounting.notice_fd = t.notice_w
            os.set_blocking(t.notice_w, False)
        return t
    except OSError as e:
        raise SandboxError(f"audit.log {policy.audit_log}: the supervisor cannot open it or the kernel's "
                           f"channel ({e.strerror}); not starting") from None
