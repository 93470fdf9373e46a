"""Per-uid kernel counters: tenants of one uid must not exhaust, for
each other or for the host's own processes of that uid, what Linux counts per user:
processes and threads, inotify instances and watches, fanotify groups, POSIX message
queue bytes and queued signals.

Two kernels A and B of one uid and a plain host process of that uid (as root, and as an
ordinary user). A takes all it can of one counter, in a child process that holds it (so
the kernel survives), until the OS kernel refuses (EAGAIN, EMFILE, ENOSPC); while A holds
it, B, a new kernel of that uid and the host process each still get one. The effect
checked: A obtained no more than its share (the profile's limit), and the others were
not refused. Every loop is bounded (a cap above the share, far below the host's
per-uid limit), so that a failing run does not exhaust the uid for other sessions.

What stops it (see docs/security.md "Per-uid counters"): each kernel runs in a user
namespace of its own (pid_namespace layer; root's maps every uid onto itself), and the
rlimits layer sets RLIMIT_NPROC, RLIMIT_MSGQUEUE and RLIMIT_SIGPENDING, and
/proc/sys/user/max_inotify_* there, after that namespace exists: Linux then counts them
per (user namespace, uid), that is per kernel. RLIMIT_NPROC does not bind root, whose
processes the cgroup layer's pids.max bounds per kernel."""

from __future__ import annotations

import os
import resource
import subprocess
import sys

import pytest
from rtutil import attempt, probe, start, stop

pytestmark = pytest.mark.redteam

SHARE = {"processes": 48, "inotify_instances": 8, "inotify_watches": 64, "message_queues": 200_000,
         "pending_signals": 64}
PROFILE = "rt-counters"
PROFILE_TEXT = f"""
extends: free
limits:
  processes: {SHARE['processes']}
  inotify_instances: {SHARE['inotify_instances']}
  inotify_watches: {SHARE['inotify_watches']}
  message_queues: {SHARE['message_queues']}
  pending_signals: {SHARE['pending_signals']}
"""

# One of each counter, where it is checked (kernel B, the host process): "ok" or the errno name.
CHECKS = r'''
import ctypes as _c, errno as _e, os as _o, signal as _s
_libc = _c.CDLL(None, use_errno=True)
_libc.mq_open.argtypes = [_c.c_char_p, _c.c_int, _c.c_int, _c.c_void_p]
def _err(n=None):
    n = _c.get_errno() if n is None else n
    return _e.errorcode.get(n, str(n))
def _in_child(fn):
    """fn() in a forked child (one thread: signals stay there); its errno comes back as the status."""
    try:
        pid = _o.fork()
    except OSError as ex:
        return "fork:" + _err(ex.errno)
    if pid == 0:
        _o._exit(fn())
    _, st = _o.waitpid(pid, 0)
    code = _o.waitstatus_to_exitcode(st)
    return "ok" if code == 0 else _err(code)
def check_processes():
    return _in_child(lambda: 0)
def check_threads():
    import threading
    try:
        th = threading.Thread(target=lambda: None)
        th.start()
    except RuntimeError:
        return "EAGAIN"
    th.join()
    return "ok"
def check_fanotify_groups():
    fd = _libc.fanotify_init(0x200, 0)  # FAN_CLASS_NOTIF | FAN_REPORT_FID: allowed without privileges
    if fd < 0:
        return _err()
    _o.close(fd)
    return "ok"
def check_inotify_instances():
    fd = _libc.inotify_init1(_o.O_CLOEXEC)
    if fd < 0:
        return _err()
    _o.close(fd)
    return "ok"
def check_inotify_watches():
    fd = _libc.inotify_init1(_o.O_CLOEXEC)
    if fd < 0:
        return "inotify_init1:" + _err()
    try:
        return "ok" if _libc.inotify_add_watch(fd, b"/", 0x100) >= 0 else _err()
    finally:
        _o.close(fd)
def _mq_create(name):
    """Create a queue: "ok", or the errno name. Landlock refuses *opening* it (EACCES) after
    it was created and charged: that counts as created (O_EXCL again says EEXIST)."""
    fd = _libc.mq_open(name, _o.O_CREAT | _o.O_EXCL | _o.O_RDWR, 0o600, None)
    if fd >= 0:
        _o.close(fd)
        return "ok"
    err = _c.get_errno()
    if err == _e.EACCES and _libc.mq_open(name, _o.O_CREAT | _o.O_EXCL | _o.O_RDWR, 0o600, None) < 0 \
            and _c.get_errno() == _e.EEXIST:
        return "ok"
    return _err(err)
def check_message_queues():
    name = b"/rt-counters-check-" + _o.urandom(6).hex().encode()
    got = _mq_create(name)
    _libc.mq_unlink(name)
    return got
def check_pending_signals():
    def queue():
        _s.pthread_sigmask(_s.SIG_BLOCK, {_s.SIGRTMIN})
        return 0 if _libc.sigqueue(_o.getpid(), _s.SIGRTMIN, _c.c_void_p(0)) == 0 else _c.get_errno()
    return _in_child(queue)
'''

# Run by kernel A in a child process: take all of one counter (at most CAP), print
# "COUNT ERRNO", hold it until stdin closes, then give it back.
HOLDER = r'''
import ctypes, errno, os, signal, sys, tempfile
libc = ctypes.CDLL(None, use_errno=True)
libc.mq_open.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int, ctypes.c_void_p]
what, cap = sys.argv[1], int(sys.argv[2])
held, error, names = [], None, []
def failed(n=None):
    global error
    n = ctypes.get_errno() if n is None else n
    error = errno.errorcode.get(n, str(n))
if what == "processes":
    for _ in range(cap):
        try:
            pid = os.fork()
        except OSError as e:
            failed(e.errno)
            break
        if pid == 0:  # until the kernel closes our stdin
            os.read(0, 1)
            os._exit(0)
        held.append(pid)
elif what == "threads":
    import threading
    stop = threading.Event()
    for _ in range(cap):
        th = threading.Thread(target=stop.wait, daemon=True)
        try:
            th.start()
        except RuntimeError:  # pthread_create's EAGAIN
            error = "EAGAIN"
            break
        held.append(th)
elif what == "fanotify_groups":
    for _ in range(cap):
        fd = libc.fanotify_init(0x200, 0)
        if fd < 0:
            failed()
            break
        held.append(fd)
elif what == "inotify_instances":
    for _ in range(cap):
        fd = libc.inotify_init1(os.O_CLOEXEC)
        if fd < 0:
            failed()
            break
        held.append(fd)
elif what == "inotify_watches":
    fd = libc.inotify_init1(os.O_CLOEXEC)
    d = tempfile.mkdtemp()
    for i in range(cap):
        p = os.path.join(d, str(i))
        open(p, "w").close()
        if libc.inotify_add_watch(fd, p.encode(), 0x2) < 0:
            failed()
            break
        held.append(i)
elif what == "message_queues":
    for i in range(cap):
        name = b"/rt-counters-hold-" + os.urandom(6).hex().encode()
        fd = libc.mq_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600, None)
        if fd < 0:
            err = ctypes.get_errno()
            # Landlock refuses opening it (EACCES) after the queue was created and charged: go on
            if err == errno.EACCES and libc.mq_open(name, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600, None) < 0 \
                    and ctypes.get_errno() == errno.EEXIST:
                held.append(None)
                names.append(name)
                continue
            failed(err)
            break
        held.append(fd)
        names.append(name)
elif what == "pending_signals":
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGRTMIN})
    for i in range(cap):
        if libc.sigqueue(os.getpid(), signal.SIGRTMIN, ctypes.c_void_p(0)) != 0:
            failed()
            break
        held.append(i)
print(len(held), error, flush=True)
sys.stdin.read()
for name in names:
    libc.mq_unlink(name)
if what == "processes":
    for pid in held:
        os.waitpid(pid, 0)
'''

TAKE = """
import subprocess as _rt_sp, sys as _rt_sys
rt_holder = _rt_sp.Popen([_rt_sys.executable, "-c", {holder!r}, {what!r}, "{cap}"], stdin=_rt_sp.PIPE,
                         stdout=_rt_sp.PIPE, stderr=_rt_sp.PIPE, text=True)
_rt_line = rt_holder.stdout.readline().split()
rt_out({{"count": int(_rt_line[0]) if _rt_line else -1,
         "error": _rt_line[1] if len(_rt_line) > 1 else "holder failed: " + rt_holder.stderr.read()[-800:]}})
"""

RELEASE = """
rt_holder.stdin.close()
rt_out({"rc": rt_holder.wait(timeout=60)})
"""

# A's bound: the most it may take is its share (processes: the kernel's own tasks count too);
# the cap is a little above it, far below the host's per-uid limits.
CAP = {"processes": 2 * SHARE["processes"], "threads": 2 * SHARE["processes"],
       "fanotify_groups": 2 * SHARE["inotify_instances"] + 8, "inotify_instances": 2 * SHARE["inotify_instances"] + 8,
       "inotify_watches": 4 * SHARE["inotify_watches"], "message_queues": 12,
       "pending_signals": 4 * SHARE["pending_signals"]}
REFUSED = {"processes": "EAGAIN", "threads": "EAGAIN", "fanotify_groups": "EMFILE", "inotify_instances": "EMFILE",
           "inotify_watches": "ENOSPC", "message_queues": "EMFILE", "pending_signals": "EAGAIN"}


def share_taken(what: str, count: int) -> bool:
    if what == "threads":
        return count <= SHARE["processes"]
    if what == "fanotify_groups":  # limits.inotify_instances also sets max_fanotify_groups
        return count <= SHARE["inotify_instances"]
    if what == "message_queues":  # a default queue (10 messages of 8 KiB) takes a little over 80 KiB
        return count * 80 * 1024 <= SHARE[what]
    return count <= SHARE[what]


def host_check(who, what: str, host_limited: bool = False) -> str:
    """`what` checked once by an unsandboxed process of the tenants' uid (with `host_limited`,
    under the launcher's lowered limits of the shares-above-the-host test)."""
    argv = [sys.executable, "-I", "-c", CHECKS + f"\nprint(check_{what}())"]
    if who is not None:
        argv = ["setpriv", f"--reuid={who.pw_uid}", f"--regid={who.pw_gid}", "--init-groups", "--"] + argv
    p = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd="/",
                       preexec_fn=_host_limited if host_limited else None)
    assert p.returncode == 0, p.stderr
    return p.stdout.strip().splitlines()[-1]


def kernel_check(k, what: str) -> str:
    return probe(k, CHECKS + f"\nrt_out({{'r': check_{what}()}})")["r"]


@pytest.fixture(scope="module")
def tenants(mwho):
    """Kernels A and B: one profile, one uid, as a platform starts two tenants' kernels."""
    import kernelutil

    kernelutil.write_profile(PROFILE, PROFILE_TEXT)
    a = start(PROFILE, mwho, spec_suffix="-countersA")
    try:
        b = start(PROFILE, mwho, spec_suffix="-countersB")
    except BaseException:
        stop(a)
        raise
    yield {"a": a, "b": b, "who": mwho}
    stop(a)
    stop(b)


def _others(tenants, what: str) -> dict:
    return {"kernel B": kernel_check(tenants["b"], what),
            "host process": host_check(tenants["who"], what, tenants.get("host_limited", False))}


def _exhaust_and_check(tenants, what: str, *, new_kernel: bool = False, refused=None) -> None:
    """What B and the host process get (one of `what`) is the same before and while A holds
    all it can; the host process gets it; A took no more than its share."""
    a, who = tenants["a"], tenants["who"]
    before = _others(tenants, what)
    took = probe(a, TAKE.format(holder=HOLDER, what=what, cap=CAP[what]))
    try:
        during = _others(tenants, what)
        if new_kernel:
            c = start(PROFILE, who, spec_suffix="-countersC")
            try:
                during["new kernel"] = kernel_check(c, what)
            finally:
                stop(c)
    finally:
        released = probe(a, RELEASE)
    assert took["error"] in (refused or [REFUSED[what]]) and share_taken(what, took["count"]), \
        f"kernel A took {took['count']} ({took['error']}): not bounded by its share {SHARE[what]}"
    assert before["host process"] == "ok", before
    assert during == {**before, **({"new kernel": before["kernel B"]} if new_kernel else {})}, \
        f"A holding its share of {what} changed what the others get: before {before}, during {during}"
    assert released["rc"] == 0, released


@attempt("cgroup+rlimits")
@pytest.mark.covers("limits.processes")
def test_processes_of_one_kernel_leave_the_uids_other_processes_alone(tenants):
    """A forks until EAGAIN; B, a new kernel of that uid and a host process of that uid still fork."""
    _exhaust_and_check(tenants, "processes", new_kernel=True)


@attempt("cgroup+rlimits")
def test_threads_of_one_kernel_leave_the_uids_other_processes_alone(tenants):
    """A starts threads until EAGAIN; B and a host process of that uid still start one."""
    _exhaust_and_check(tenants, "threads")


@attempt("rlimits")
def test_fanotify_groups_of_one_kernel_leave_the_uids_other_processes_alone(tenants):
    """A takes fanotify groups (unprivileged, FAN_REPORT_FID) until EMFILE; B and a host process still get one."""
    _exhaust_and_check(tenants, "fanotify_groups")


@attempt("rlimits")
@pytest.mark.covers("limits.inotify_instances")
def test_inotify_instances_of_one_kernel_leave_the_uids_other_processes_alone(tenants):
    """A takes inotify instances until EMFILE; B and a host process of that uid still inotify_init."""
    _exhaust_and_check(tenants, "inotify_instances")


@attempt("rlimits")
@pytest.mark.covers("limits.inotify_watches")
def test_inotify_watches_of_one_kernel_leave_the_uids_other_processes_alone(tenants):
    """A adds inotify watches until ENOSPC; B and a host process of that uid still add one."""
    _exhaust_and_check(tenants, "inotify_watches")


@attempt("rlimits")
@pytest.mark.covers("limits.message_queues")
def test_message_queues_of_one_kernel_leave_the_uids_other_processes_alone(tenants):
    """A creates POSIX message queues until EMFILE (RLIMIT_MSGQUEUE bytes; Landlock refuses
    opening one, EACCES, but only after it was created and charged); B and a host process of
    that uid still create one."""
    _exhaust_and_check(tenants, "message_queues")


@attempt("rlimits")
@pytest.mark.covers("limits.pending_signals")
def test_queued_signals_of_one_kernel_leave_the_uids_other_processes_alone(tenants):
    """A queues real-time signals until EAGAIN (RLIMIT_SIGPENDING); B and a host process still queue one."""
    _exhaust_and_check(tenants, "pending_signals")


@attempt("rlimits")
def test_message_queue_share_without_landlock(mwho):
    """With Landlock off (a profile may turn it off), RLIMIT_MSGQUEUE is the kernel's share:
    sandbox A opens message queues until EMFILE; sandbox B of that uid and a host process of
    that uid still open one. (Through the launcher, as a kernelspec starts it.)"""
    import kernelutil
    from sandbox_kernel.install import launch_argv

    import tempfile

    from sandbox_kernel import policy_cache

    name = PROFILE + "-nolandlock"
    kernelutil.write_profile(name, PROFILE_TEXT + "enforcement:\n  landlock: off\n")
    cache = os.path.join(tempfile.mkdtemp(prefix="sbx-rt-cache-"), policy_cache.FILE_NAME)
    os.chmod(os.path.dirname(cache), 0o755)
    policy_cache.write(cache, [name])
    os.chmod(cache, 0o644)
    argv = launch_argv(name, policy_cache_file=cache) + ["--", sys.executable]
    env = dict(os.environ)
    cwd = kernelutil.user_workdir(mwho) if mwho is not None else None
    if mwho is not None:
        argv = kernelutil.setpriv(mwho.pw_name) + argv
        env.update(HOME=mwho.pw_dir, USER=mwho.pw_name, LOGNAME=mwho.pw_name)
        env.pop("TMPDIR", None)
    a = subprocess.Popen(argv + ["-c", HOLDER, "message_queues", str(CAP["message_queues"])], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    try:
        line = a.stdout.readline().split()
        b = subprocess.run(argv + ["-c", CHECKS + "\nprint(check_message_queues())"], capture_output=True, text=True,
                           env=env, cwd=cwd, timeout=120)
        host = host_check(mwho, "message_queues")
    finally:
        a.stdin.close()
        a.wait(timeout=60)
        import shutil

        shutil.rmtree(os.path.dirname(cache), ignore_errors=True)
    assert len(line) == 2, a.stderr.read()
    assert line[1] == "EMFILE" and share_taken("message_queues", int(line[0])), \
        f"sandbox A opened {line[0]} queues ({line[1]}): not bounded by its share {SHARE['message_queues']} bytes"
    assert b.returncode == 0, b.stderr
    assert (b.stdout.strip(), host) == ("ok", "ok"), (b.stdout, b.stderr[-2000:], host)


# --------------------------------------------------------------------------- shares above the host's limit

# Where the kernels' shares together exceed what the host allows the uid, Linux's per-uid
# counts still reach the host uid: each kernel's namespace charges its *owner's* count in the
# parent namespace too, checked against the launcher's own rlimit when the namespace was made.
# Here the launcher (Jupyter, in this test) runs with RLIMIT_MSGQUEUE and RLIMIT_SIGPENDING
# equal to one kernel's share, a per-process setting that touches no other session: kernel A
# at its full share then leaves nothing of the uid's host count to kernel B or to a host
# process of that uid, unless each kernel has a host uid of its own
# (user_namespace.host_uid: subordinate, a root launcher only).
HOST_LIMITS = {"message_queues": (resource.RLIMIT_MSGQUEUE, SHARE["message_queues"]),
               "pending_signals": (resource.RLIMIT_SIGPENDING, SHARE["pending_signals"])}
SUBUID_PROFILE = PROFILE + "-subuid"


def _host_limited():
    """The soft limits only (what Linux records for a namespace, and checks): raising a hard
    limit back needs CAP_SYS_RESOURCE, which the test's own process may not hold."""
    for res, value in HOST_LIMITS.values():
        resource.setrlimit(res, (value, resource.getrlimit(res)[1]))


@pytest.fixture(scope="module")
def tenants_over_host(mwho):
    """Kernels A and B of one uid started by a launcher whose limits are one kernel's share."""
    import kernelutil

    if mwho is not None:
        pytest.skip("an ordinary account cannot give its kernels host uids of their own: every namespace it "
                    "creates is charged to its uid (docs/security.md, 'Per-uid counters')")
    kernelutil.write_profile(SUBUID_PROFILE, PROFILE_TEXT + "user_namespace:\n  host_uid: subordinate\n")
    saved = {res: resource.getrlimit(res) for res, _ in HOST_LIMITS.values()}
    started = []
    try:
        _host_limited()
        for name in ("A", "B"):
            started.append(start(SUBUID_PROFILE, mwho, spec_suffix=f"-overhost{name}"))
    except BaseException:
        for k in started:
            stop(k)
        raise
    finally:
        for res, lim in saved.items():
            resource.setrlimit(res, lim)
    yield {"a": started[0], "b": started[1], "who": mwho, "host_limited": True}
    for k in started:
        stop(k)


@pytest.mark.parametrize("what", [pytest.param(w, marks=attempt("pid_namespace+rlimits")) for w in HOST_LIMITS])
def test_shares_above_the_host_limit_leave_the_uids_other_processes_alone(tenants_over_host, what):
    """Two kernels' shares together above the host uid's limit (RLIMIT_MSGQUEUE, RLIMIT_SIGPENDING
    of the launcher): A takes its whole share; B and a host process of that uid still get one."""
    _exhaust_and_check(tenants_over_host, what)
