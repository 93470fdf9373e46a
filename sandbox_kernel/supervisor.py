"""The supervisor chain: the processes that keep a kernel's lifetime bound to the process
Jupyter knows (see layers/pid_namespace.py for the namespaces they run in).

- the **supervisor** (``_supervise``): the launcher process, outside the sandbox; passes
  signals on, answers the kernel's listen() (``listen_broker``), copies the kernel's output
  into the log files Jupyter gave, writes the audit trail, watches the Jupyter process
  (``watch_jupyter_parent``), and when the kernel exits kills what is left in its cgroup;
- the **relay** (``user_namespace.host_uid: subordinate``): becomes the subordinate uid and
  creates the namespaces the supervisor maps;
- **init** (``_init``): pid 1 of the kernel's PID namespace; reaps orphans, passes signals
  on, exits with the kernel, and with it every process left in the namespace. Where the
  kernelspec holds ``sandbox-kernel-init`` (``init_helper``), init execs it once the kernel is
  forked (the kernel waits for that exec before its own layers change the mount namespace
  they share): the same loop in C, without the launcher's ~4 MiB.

``fork_chain`` forks them and returns only in the process that becomes the kernel.

The kernel's cgroups end here too: ``kill(groups, spare_pid)`` (the supervisor at the
kernel's exit) and ``sweep()`` (each start, for groups whose supervisor was killed).
"""

from __future__ import annotations

import os
import stat
import time

from . import init_helper
from .cgroupfs import (PREFIX, Hierarchy, _nspids, _parent_dir, _read, _write, hierarchies, named_parent,
                       parse_group_name, procs, start_time)
from .errors import SandboxError
from .layers.pid_namespace import CLONE_NEWIPC, CLONE_NEWNS, CLONE_NEWPID, CLONE_NEWUSER, _check, _libc, unshare
from .paths import real_exec_allowed
from .standins import signal  # the C module: enum, functools and collections cost ~5 ms of every start

PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4
FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)


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
    from .errors import SandboxError

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
            from .kaudit import LandlockAudit

            recorded = broker.recorded if broker is not None and getattr(broker, "watch", None) else None
            kaudit_reader = LandlockAudit(sock, trail, child, trail.kaudit_pidns, recorded)
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
            from . import listen_broker

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
    if groups:
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


def _init(kernel: int, helper: str | None, ready: bool, kept: list[int], exec_w: int) -> None:
    """pid 1 of the namespace: reap every orphan, pass signals on, exit when the kernel exits (never returns).
    With a `helper` (init_helper: the same in C), exec it, keeping the descriptors `kept`; if
    that fails, say why on `exec_w` and go on here. Closing `exec_w` lets the kernel go on: here, or
    where the helper takes it (`ready`: init_helper.takes_ready_fd) once the helper runs, its loader
    done with ld.so.cache and libc; an older helper's exec closes it (close-on-exec)."""
    if helper:
        try:
            for fd in kept + ([exec_w] if ready else []):
                os.set_inheritable(fd, True)
            os.execv(helper, [init_helper.FILE_NAME, str(kernel)] + ([str(exec_w)] if ready else []))
        except OSError as e:
            os.write(exec_w, f"cannot run {helper}: {e.strerror or e}".encode()[:500])
    os.close(exec_w)
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
    from .errors import SandboxError

    said = b""
    try:
        import select

        r, w = plan.channel
        os.close(plan.relay_end[0])
        os.close(plan.relay_end[1])
        if select.select([r], [], [], _MAP_TIMEOUT_S)[0]:
            said = os.read(r, 512)
        if said == b"u":
            from .layers.subuid import write_maps

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


def _relay_chain(plan, read_end: int, listen_channel) -> int:
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
        if listen_channel is not None:
            listen_channel.close()
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


def fork_chain(ctx, cgroups: list[str], namespaces: set[str], with_init: bool, broker=None, mount_ns: bool = False,
               plan=None, trail=None):
    """Fork the supervisor chain; returns only in the process that becomes the kernel.
    With a `broker` (listen_broker.Broker), the supervisor decides listen(): what it returns
    is then the kernel's end of the channel (else None), over which the seccomp layer sends the
    filter's listener (pid_namespace.Entered.listen_channel).

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
        from . import listen_broker

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
        _supervise(child, list(cgroups), ctx.jupyter_parent_fd, broker, channel, relays, trail)  # never returns
    os.close(write_end)
    if trail is not None:
        from . import trail as trail_module

        trail_module.kernel_side(ctx, trail)
    if channel is not None:
        channel.close()
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
        read_end = _relay_chain(plan, read_end, kernel_end)  # returns in the namespace's init
    _die_with_parent(read_end)
    if not with_init:
        return kernel_end
    if mount_ns:
        try:
            unshare(CLONE_NEWNS)
            namespaces.add("mount")  # (the pid_namespace layer's Entered: the mount_namespace layer reads it)
        except OSError:
            pass  # the mount_namespace layer tries again in the kernel's process, and says why if it cannot
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD, *FORWARDED})
    read_end, write_end = os.pipe()
    helper = init_helper.beside(ctx.policy_cache)
    ready = bool(helper) and init_helper.takes_ready_fd(helper)
    exec_r, exec_w = os.pipe()  # closed by the helper once it runs, or after init's reason why not
    kernel = os.fork()
    if kernel:
        os.close(read_end)
        os.close(exec_r)
        if kernel_end is not None:
            kernel_end.close()
        if plan is not None:
            plan.close_clones()
        # (kept across the exec: the kernel's check that init lives, and the subordinate id's lock,
        # which init holds until every process of the namespace is gone)
        _init(kernel, helper, ready, [write_end] + ([plan.alloc.lock_fd] if plan is not None else []), exec_w)
    os.close(write_end)
    os.close(exec_w)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD, *FORWARDED})
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _die_with_parent(read_end)
    # The kernel's own layers change the mount namespace it shares with init (mount_namespace):
    # not while init's exec of the helper, or the helper's loader, looks up its files
    why = b""
    while chunk := os.read(exec_r, 512):
        why += chunk
    os.close(exec_r)
    ctx.init_program = (f"{init_helper.FILE_NAME} (C)" if helper and not why else
                        f"Python ({why.decode(errors='replace') if why else 'no ' + init_helper.FILE_NAME + ' beside the policy cache'})")
    return kernel_end


def listen_broker_for(policy, ctx):
    """The supervisor's listen() rules (listen_broker.Broker), where seccomp will send it listen()."""
    ports = policy.network.get("listen_ports", [])
    if policy.enforcement("seccomp") == "off" or (ports == "any" and not policy.audit_log):
        return None
    from . import listen_broker

    # (with listen_ports: any and an audit log, the broker only answers the refused system calls)
    broker = listen_broker.Broker(ctx.kernel_ports, [] if ports == "any" else ports)
    if policy.audit_log:
        broker.watch = _landlock_watch(policy, ctx)
    return broker


def _landlock_watch(policy, ctx) -> dict:
    """What the Landlock layer will refuse, for the supervisor's records of connect() and execve()."""
    mode = policy.network["mode"]
    roots = real_exec_allowed(policy, ctx)
    if policy.gpu["enabled"]:
        from . import accelerators

        try:
            roots += accelerators.exec_dirs(policy, ctx)
        except Exception:
            pass
    return {"mode": mode, "exec_roots": roots,
            "landlock_files": policy.data["filesystem"].get("landlock_with_view", False),
            "connect_ports": set(policy.network["tcp_connect_ports"]) if mode == "restricted" else set()}


def trail_for(policy, ctx, namespaces: set[str]):
    """The supervisor's audit trail (trail.Trail), where the profile keeps an audit log."""
    if not ctx.audit_fifo:
        return None
    from .errors import SandboxError
    from . import trail

    try:
        t = trail.for_launch(policy, ctx)
        if t is not None:
            t.kaudit = getattr(ctx, "kaudit", None) or (None, "the launcher did not ask")
            t.kaudit_pidns = "pid" in namespaces
        if t is not None:  # the notices the supervisor sends to the notebook (violation policy)
            t.notice_r, t.notice_w = os.pipe()
            os.set_inheritable(t.notice_r, False)
            t.accounting.notice_fd = t.notice_w
            os.set_blocking(t.notice_w, False)
        return t
    except OSError as e:
        raise SandboxError(f"audit.log {policy.audit_log}: the supervisor cannot open it or the kernel's "
                           f"channel ({e.strerror}); not starting") from None


# --------------------------------------------------------------------------- the kernel's cgroups: kill and sweep


KILL_TIMEOUT = 10.0  # seconds kill() waits for the killed processes to leave their group
# group directory -> the directory the launcher's process came from (or where its former
# group-mates went), so that kill() can move a spared supervisor out before removing it.
_ORIGINS: dict[str, str] = {}


def _rmdir(d: str) -> bool:
    try:
        os.rmdir(d)
        return True
    except FileNotFoundError:
        return True
    except OSError:
        return False


def _wait_empty(group: str, spared: set[int], deadline: float) -> bool:
    delay = 0.001
    while True:
        if not [p for p in procs(group) if p not in spared]:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _kill_iterating(group: str, spared: set[int], deadline: float) -> bool:
    """SIGKILL every process of the group but the spared ones, again and again, until none
    is left (a process forking meanwhile is caught on the next round; pids.max bounds them)."""
    delay = 0.001
    while True:
        left = [p for p in procs(group) if p not in spared]
        if not left:
            return True
        if 0 in left:  # processes outside our PID namespace: not ours to kill
            return False
        for p in left:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        if time.monotonic() > deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _move_out(group: str, pid: int) -> bool:
    dest = _ORIGINS.get(group)
    if not dest:
        return False
    try:
        _write(os.path.join(dest, "cgroup.procs"), str(pid))
        return True
    except OSError:
        return False


def _freeze_kill(group: str, deadline: float) -> bool:
    """cgroup v1 freezer: freeze (no process can fork any more), SIGKILL all, thaw."""
    state = os.path.join(group, "freezer.state")
    try:
        _write(state, "FROZEN")
        while _read(state).strip() != "FROZEN" and time.monotonic() < deadline:
            time.sleep(0.001)
        for p in procs(group):
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
    except OSError:
        return False
    finally:
        try:
            _write(state, "THAWED")
        except OSError:
            pass
    return _wait_empty(group, set(), deadline)


def kill(groups: list[str], spare_pid: int | None = None, *, remove: bool = True) -> bool:
    """Kill every process in `groups` (a kernel's group dirs, as in cgroup.Placed.groups) except
    `spare_pid` and the caller, however they detached (setsid, double fork, new session).
    Then, with `remove`, remove the groups, first moving the spared processes back where
    the launcher came from (known in the launcher's own process). True when nothing but
    the spared processes is left.

    A spared process is moved out first where it can be; then cgroup v2 uses
    ``cgroup.kill`` and cgroup v1 the freezer group (frozen processes cannot fork away).
    Where a spared process stays inside, or neither exists, SIGKILL goes round after round
    until the group is empty. A group whose processes this process cannot see (another PID
    namespace) is left alone.
    """
    deadline = time.monotonic() + KILL_TIMEOUT
    groups = sorted((g for g in groups if os.path.isdir(g)),  # a v1 freezer group first: it takes all at once
                    key=lambda g: not os.path.exists(os.path.join(g, "freezer.state")))
    spared = {os.getpid()} | ({spare_pid} if spare_pid is not None else set())
    for g in groups:  # a spared process need not stay inside: then the whole group can go at once
        for p in spared & set(procs(g)):
            _move_out(g, p)
    done = True
    for g in groups:
        members = procs(g)
        inside = bool(spared & set(members))
        if not [p for p in members if p not in spared]:
            ok = True  # nothing to kill (the common case: an earlier kernel that ended cleanly)
        elif 0 in members:
            ok = False
        elif not inside and os.path.exists(os.path.join(g, "freezer.state")):
            ok = _freeze_kill(g, deadline)
        elif not inside and os.path.exists(os.path.join(g, "cgroup.kill")):
            try:
                _write(os.path.join(g, "cgroup.kill"), "1")
                ok = _wait_empty(g, spared, deadline)
            except OSError:
                ok = _kill_iterating(g, spared, deadline)
        else:
            ok = _kill_iterating(g, spared, deadline)
        done = done and ok
    if remove:
        for g in groups:
            if _rmdir(g):
                _ORIGINS.pop(g, None)
    return done


def _supervisor_alive(dirs: list[str], pid: int, start: int) -> bool:
    """Is the supervisor that the group's name records still running? Judged from the
    group's own processes where there are any (the supervisor is one of them, whatever
    PID namespace it was named in); an invisible process (another PID namespace) counts
    as alive: not ours to judge."""
    seen = False
    for d in dirs:
        for p in procs(d):
            if p == 0:
                return True
            seen = True
            if start_time(p) == start and pid in _nspids(p):
                return True
    if not seen:
        return start_time(pid) == start  # an empty group being created right now is kept
    return False


def _plausible(pid: int, start: int) -> bool:
    """Could (pid, start) name a process of this boot? (pid within pid_max, started by now)"""
    try:
        pid_max = int(_read("/proc/sys/kernel/pid_max"))
        now = float(_read("/proc/uptime").split()[0]) * os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError):
        return False
    return 0 < pid <= pid_max and 0 < start <= now + 1


def _sweep_parents(hs: list[Hierarchy] | None = None, named: tuple[str, str] | None = None) -> list[str]:
    out = []
    if hs is None:
        hs = hierarchies()
        try:
            named = named_parent()
        except SandboxError:
            named = None
    for h in hs:
        if named:
            try:
                out.append(_parent_dir(h, *named))
            except SandboxError:
                pass
        if h.own:
            out.append(h.own)
            if h.version == 2 and h.own.rstrip("/") != h.mount.rstrip("/"):
                out.append(os.path.dirname(h.own.rstrip("/")))
    return list(dict.fromkeys(out))


def sweep(parents: list[str] | None = None) -> list[str]:
    """Remove groups of earlier kernels under `parents` (default: every place this launcher
    could put one): empty ones whose supervisor is gone, and non-empty ones whose
    supervisor is gone after killing what is left in them. Returns the groups removed."""
    by_name: dict[str, list[str]] = {}
    for parent in (parents if parents is not None else _sweep_parents()):
        try:
            names = [n for n in os.listdir(parent) if n.startswith(PREFIX)]
        except OSError:
            continue
        for n in names:
            by_name.setdefault(n, []).append(os.path.join(parent, n))
    removed = []
    for n, dirs in by_name.items():
        m = parse_group_name(n)
        if m and not _plausible(m[1], m[2]):
            m = None  # e.g. an older name whose kernel id ends in digits, then a time stamp
        if not m:  # an older naming: removed only when empty, as before
            removed += [d for d in dirs if not procs(d) and _rmdir(d)]
            continue
        if _supervisor_alive(dirs, m[1], m[2]):
            continue
        kill(dirs)
        removed += [d for d in dirs if not os.path.exists(d)]
    return removed
