"""PID namespace and supervisor: no process outlives its kernel.

Enforcement: hard. A process a cell starts can leave the kernel's process group and
session (``start_new_session=True``, ``setsid``, a double fork), so killing the group,
which is what Jupyter does at shutdown, restart and kill, misses it; such a survivor
kept running across restarts and rewrote files the next start read. Here the launcher
enters a new PID namespace (with new IPC and mount namespaces, and for an ordinary
user a user namespace mapping only its own uid and gid) and forks:

- the launcher process, which Jupyter knows as the kernel, stays outside as the
  **supervisor**: it waits for the namespace's init and exits with the kernel's status;
  it ignores SIGINT (Jupyter interrupts the kernel's process group, which still holds
  the kernel) and passes SIGTERM, SIGHUP, SIGQUIT, SIGUSR1 and SIGUSR2 on;
- its child is **pid 1 of the namespace** (init): it dies with the supervisor
  (``PR_SET_PDEATHSIG``), reaps orphans, passes those signals on to the kernel, and
  exits when the kernel exits. When the init of a PID namespace exits, the OS kernel
  kills every other process in it: nothing survives, however it detached. Tenant code
  cannot kill init (it ignores signals from inside the namespace it has no handler for,
  SIGKILL included) nor trace it (seccomp, and Landlock's ptrace rule);
- the init's child goes on through the remaining layers and becomes the kernel.

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

# signal's C module: the same functions and constants without the enum wrappers (enum, functools
# and collections cost the launcher about 5 ms at every start)
import _signal as signal

from .base import level_or_off, simulated_missing

NAME = "pid_namespace"
CLONE_NEWNS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x08000000, 0x10000000, 0x20000000
PR_SET_PDEATHSIG = 1
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
MEMFD_NOEXEC = "/proc/sys/vm/memfd_noexec"

_libc = ctypes.CDLL(None, use_errno=True)


def _check(res: int, what: str) -> None:
    if res != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"{what}: {os.strerror(e)}")


def unshare(flags: int) -> None:
    """unshare(2); with CLONE_NEWUSER, map this process's own uid and gid into the new namespace."""
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(flags), "unshare")
    if flags & CLONE_NEWUSER:
        with open("/proc/self/setgroups", "w") as fh:
            fh.write("deny")
        with open("/proc/self/uid_map", "w") as fh:
            fh.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as fh:
            fh.write(f"{gid} {gid} 1")


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


def _supervise(child: int, groups: list[str], parent_fd: int | None, broker=None, channel=None) -> None:
    """The launcher process after the fork: pass signals on, answer the kernel's listen()
    calls (``listen_broker``: the seccomp layer sends the listener over `channel`), wait for
    the kernel (or for the Jupyter process to vanish), clean up, exit like the kernel."""
    import select

    from . import cgroup

    signal.signal(signal.SIGINT, signal.SIG_IGN)
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
    status = 1 << 8
    while True:
        events = dict(poller.poll())
        ready = set(events)
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
    _exit_like(status)


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


def fork_chain(ctx, with_init: bool, broker=None) -> None:
    """Fork the supervisor chain; returns only in the process that becomes the kernel.
    With a `broker` (listen_broker.Broker), the supervisor decides listen(): the kernel side
    gets ``ctx.listen_channel``, over which the seccomp layer sends the filter's listener."""
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
        _supervise(child, list(ctx.cgroups), ctx.jupyter_parent_fd, broker, channel)  # never returns
    os.close(write_end)
    if channel is not None:
        channel.close()
    ctx.listen_channel = kernel_end
    _die_with_parent(read_end)
    if not with_init:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, *FORWARDED})
    read_end, write_end = os.pipe()
    kernel = os.fork()
    if kernel:
        os.close(read_end)
        if ctx.listen_channel is not None:
            ctx.listen_channel.close()
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
    if ports == "any" or policy.enforcement("seccomp") == "off":
        return None
    from .. import listen_broker

    return listen_broker.Broker(ctx.kernel_ports, ports)


def apply(policy, ctx, status) -> None:
    level = level_or_off(policy, NAME, status, "enforcement.pid_namespace is off: processes a cell detaches "
                                               "may outlive the kernel")
    why = None
    if level is not None:
        user = os.getuid() != 0
        want_mount = policy.enforcement("mount_namespace") != "off"
        flags = CLONE_NEWPID | CLONE_NEWIPC | (CLONE_NEWNS if want_mount else 0) | (CLONE_NEWUSER if user else 0)
        try:
            if simulated_missing(NAME):
                raise OSError(errno.EPERM, "namespaces are not available (simulated)")
            unshare(flags)
        except OSError as e:
            why = e.strerror or str(e)
        else:
            ctx.namespaces = {"pid", "ipc"} | ({"mount"} if want_mount else set()) | ({"user"} if user else set())
            fork_chain(ctx, with_init=True, broker=listen_broker_for(policy, ctx))
            ctx.memfd_noexec = os.getuid() == 0 and _set_memfd_noexec()
            status.active(NAME, "PID + IPC namespaces" + (" in a user namespace" if user else "")
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
        fork_chain(ctx, with_init=False, broker=listen_broker_for(policy, ctx))
