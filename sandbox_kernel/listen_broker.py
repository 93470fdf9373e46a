"""Who may listen: the supervisor decides every ``listen()`` of the kernel and its children.

Enforcement: hard. Landlock's TCP rules see ``bind()``, but ``listen()`` on a socket that
was never bound makes Linux pick a free ephemeral port for it (autobind, in
``inet_csk_listen_start``), and no LSM hook that Landlock implements runs there: such a
server on 0.0.0.0 or ``::`` accepted connections from the host and beyond. A port that
Landlock lets the kernel bind (its own ZMQ ports) can also be bound again on another
local address (127.0.0.2, the host's external address) and listened on. seccomp cannot
tell these apart from the UNIX-socket listeners that Python's multiprocessing needs
(``multiprocessing.Manager``, and ``resource_sharer``, through which torch's DataLoader
workers pass tensors): ``listen(fd, backlog)`` shows it an fd number, never the socket.

So the seccomp filter sends every ``listen()`` to the supervisor (``SECCOMP_RET_USER_NOTIF``).
The supervisor is the launcher process outside the sandbox (``supervisor.py``): no
seccomp filter, no Landlock domain, a process tenant code cannot signal, trace or write
to (it is outside the PID namespace). For each notification it takes a copy of the socket
(``pidfd_getfd``), looks at it and, where the profile allows, performs ``listen()`` on
that copy itself, then answers with the result. It never answers "continue" (which would
let the OS kernel look the fd number up again, after another thread may have swapped it).
The rules (``decide``):

- UNIX sockets (pathname or abstract): allowed;
- IPv4 and IPv6 (and SMC, which serves TCP clients) sockets: allowed on the kernel's own
  ports (from the connection file) once each, which is ZMQ listening before any cell
  runs; allowed on the profile's ``network.listen_ports``; refused (EPERM) otherwise,
  including every socket that was never bound (autobind: port 0);
- every other family: refused.

The listener fd crosses from the kernel side to the supervisor over a socketpair made
before the supervisor forks, once, before the launcher execs anything; both ends are
closed on exec (``SOCK_CLOEXEC``). A tenant cannot install a competing notifier (a newer
filter's notifier would win over ours): the filter refuses ``seccomp()`` with
``SECCOMP_FILTER_FLAG_NEW_LISTENER``. If the supervisor is gone, listen() fails with
ENOSYS: closed, never open.
"""

from __future__ import annotations

import ctypes
import os

from .paths import within
from .standins import socket_module

AF_UNIX, AF_INET, AF_INET6, AF_SMC = 1, 2, 10, 43
INET_LIKE = (AF_INET, AF_INET6, AF_SMC)
SOL_SOCKET, SO_DOMAIN = 1, 39
SYS_PIDFD_GETFD = 438
PIDFD_THREAD = 0o200  # O_EXCL (Linux 6.9+: a pidfd for a thread, not only a thread-group leader)
SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER = 1, 1 << 3
# struct seccomp_notif (80 bytes) and struct seccomp_notif_resp (24 bytes), <linux/seccomp.h>
NOTIF_SIZE, RESP_SIZE = 80, 24
IOCTL_NOTIF_RECV = (3 << 30) | (NOTIF_SIZE << 16) | (ord("!") << 8) | 0
IOCTL_NOTIF_SEND = (3 << 30) | (RESP_SIZE << 16) | (ord("!") << 8) | 1
IOCTL_NOTIF_ID_VALID = (1 << 30) | (8 << 16) | (ord("!") << 8) | 2
ANY = "any"
SECCOMP_USER_NOTIF_FLAG_CONTINUE = 1
SO_PROTOCOL, IPPROTO_TCP = 38, 6


def _read_mem(tid: int, addr: int, size: int) -> bytes:
    """`size` bytes at `addr` in task `tid` (the supervisor may: it owns the kernel's namespaces)."""
    if not addr or size <= 0:
        return b""
    try:
        fd = os.open(f"/proc/{tid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.pread(fd, size, addr)
    except OSError:
        return b""
    finally:
        os.close(fd)


def _read_str(tid: int, addr: int, limit: int = 4096) -> str:
    out = b""
    while len(out) < limit:
        chunk = _read_mem(tid, addr + len(out), 256)
        if not chunk:
            break
        end = chunk.find(b"\0")
        if end >= 0:
            return (out + chunk[:end]).decode("utf-8", "surrogateescape")
        out += chunk
    return ""

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def pair():
    """(supervisor end, kernel end): a UNIX socketpair, both ends close-on-exec."""
    _socket = socket_module()
    return _socket.socketpair(AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)


def send_listener(sock, fd: int) -> None:
    """Pass the seccomp listener `fd` to the supervisor (no `array`: it imports collections,
    milliseconds of every start on the launch path)."""
    import sys

    _socket = socket_module()
    sock.sendmsg([b"L"], [(SOL_SOCKET, _socket.SCM_RIGHTS, fd.to_bytes(4, sys.byteorder, signed=True))])


def receive_listener(sock) -> int | None:
    """The listener fd the kernel side sent, or None (it closed its end without one)."""
    import sys

    _socket = socket_module()
    try:
        msg, anc, _flags, _addr = sock.recvmsg(1, _socket.CMSG_SPACE(4))
    except OSError:
        return None
    fds = []
    for level, kind, data in anc:
        if level == SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds += [int.from_bytes(data[i:i + 4], sys.byteorder, signed=True) for i in range(0, len(data) - 3, 4)]
    for extra in fds[1:]:
        os.close(extra)
    return fds[0] if msg == b"L" and fds else None


def _ioctl(fd: int, request: int, arg):
    """fcntl.ioctl, again after EINTR (the supervisor forwards signals with Python handlers):
    an answer lost to a signal would leave the task waiting for ever."""
    import errno
    import fcntl

    while True:
        try:
            return fcntl.ioctl(fd, request, arg)
        except InterruptedError:
            continue
        except OSError as e:
            if e.errno != errno.EINTR:
                raise


AT_FDCWD, AT_EMPTY_PATH = -100, 0x1000
EXECVEAT_RULE = ("seccomp: execveat with AT_EMPTY_PATH (a program run from a descriptor, such as a memfd, "
                 "escapes Landlock's exec rules)")
RECENT_S = 5.0  # how long a record of the broker's stands for a refusal Landlock logs (kaudit)


def _exec_target(tid: int, name: str, args) -> str | None:
    """The program an execve() or execveat() of thread `tid` names, as a path of the kernel's view
    (None where the arguments cannot be read): a relative path joined to the working directory
    or to the directory descriptor, an empty one with AT_EMPTY_PATH the descriptor's own file,
    /proc/self/ and /proc/thread-self/ (the caller's, not the supervisor's) read through
    /proc/<tid>/."""
    import struct

    if name == "execve":
        path, dirfd, flags = _read_str(tid, args[0]), AT_FDCWD, 0
    else:  # execveat: the descriptor is an int
        dirfd = struct.unpack("=i", struct.pack("=I", int(args[0]) & 0xFFFFFFFF))[0]
        path, flags = _read_str(tid, args[1]), int(args[4])
    try:
        base = os.readlink(f"/proc/{tid}/cwd" if dirfd == AT_FDCWD else f"/proc/{tid}/fd/{dirfd}")
        if not path:
            return base if flags & AT_EMPTY_PATH and dirfd != AT_FDCWD else None
        for own in ("/proc/self/", "/proc/thread-self/"):
            if path.startswith(own):
                head, _, rest = path[len(own):].partition("/")
                if head == "fd" and rest:
                    n, _, rest = rest.partition("/")
                    base, path = os.readlink(f"/proc/{tid}/fd/{n}"), rest
                elif head in ("cwd", "root"):
                    base, path = (os.readlink(f"/proc/{tid}/cwd") if head == "cwd" else "/"), rest
                break
    except (OSError, ValueError):
        return None
    return os.path.normpath(os.path.join(base, path) if path else base)


def _exec_refuser(tid: int) -> str:
    """The layer that refuses an exec outside exec.allow in task `tid`: the mount namespace where the
    task's root is the read view (a tmpfs, layers/read_view.py), whose noexec mounts refuse it while
    Landlock handles no filesystem right (layers.landlock.files_handled); else Landlock."""
    try:
        with open(f"/proc/{tid}/mountinfo") as fh:
            roots = [f for f in (line.split() for line in fh) if len(f) > 6 and f[4] == "/"]
        top = roots[-1]  # (the last mount on / is the one on top)
        return "mount_namespace" if top[top.index("-") + 1] == "tmpfs" else "landlock"
    except (OSError, IndexError, ValueError):
        return "landlock"


class Broker:
    """The supervisor's side: the profile's listen rules and the notifications."""

    def __init__(self, kernel_ports, listen_ports):
        self.kernel_ports = set(kernel_ports)
        self.listen_ports = set(listen_ports)
        self.granted_kernel: set[int] = set()
        self.trail = None  # the supervisor's audit trail (trail.Trail), where the profile keeps one
        # what Landlock refuses, for the connect() and execve() the filter shows the supervisor
        # (seccomp.OBSERVED, only with an audit trail): {"mode", "connect_ports", "exec_roots",
        # "landlock_files": filesystem.landlock_with_view}
        self.watch: dict | None = None
        # what the broker recorded lately, for the kernel audit reader (kaudit.LandlockAudit), which
        # records a refusal Landlock logged only where no record of the broker's stands for it:
        # key -> its records, oldest first, each [time, used] (an exec's record stands under its
        # path and its real path, one object under both keys)
        self.recent: dict = {}
        self._prune_at = 4096  # keys; pruned when there are this many, then at twice what is left

    def decide(self, family: int, port: int | None) -> int:
        """0 to allow, else the errno to answer."""
        import errno

        if family == AF_UNIX:
            return 0
        if family not in INET_LIKE or not port:  # port 0: never bound, listen() would autobind
            return errno.EPERM
        if port in self.kernel_ports and port not in self.granted_kernel:
            self.granted_kernel.add(port)  # ZMQ, before any cell: each kernel port listens once
            return 0
        return 0 if port in self.listen_ports else errno.EPERM

    def handle(self, notify_fd: int) -> None:
        """Answer one pending notification (poll said POLLIN)."""
        import errno
        import struct

        buf = bytearray(NOTIF_SIZE)
        try:
            _ioctl(notify_fd, IOCTL_NOTIF_RECV, buf)
        except OSError:
            return  # the task was interrupted or died: nothing to answer
        nid, tid = struct.unpack_from("=QI", buf)
        nr = struct.unpack_from("=i", buf, 16)[0]
        fd, backlog = (struct.unpack_from("=6Q", buf, 32)[i] & 0xFFFFFFFF for i in (0, 1))
        args = struct.unpack_from("=6Q", buf, 32)
        observed = self._observed().get(nr)
        # execveat with AT_EMPTY_PATH is the filter's own rule, sent here only to be recorded (the
        # flag is a register the kernel copied, not memory a thread can change): refused below
        if observed and not (observed == "execveat" and args[4] & AT_EMPTY_PATH):
            try:  # recorded only: the call goes on, and Landlock decides it
                self._observe(notify_fd, nid, tid, observed, args)
            except Exception:
                pass
            try:
                _ioctl(notify_fd, IOCTL_NOTIF_SEND, struct.pack("=QqiI", nid, 0, 0, SECCOMP_USER_NOTIF_FLAG_CONTINUE))
            except OSError:
                pass
            return
        try:
            if observed == "execveat":
                result = self._refused_call(nr, tid, observed, EXECVEAT_RULE)
            elif nr != self._listen_nr():
                result = self._refused_call(nr, tid)
            else:
                result = self._listen_for(notify_fd, nid, tid, fd, backlog)
        except OSError as e:
            result = e.errno or errno.EPERM
        except Exception:  # never leave the task waiting, never allow by accident
            result = errno.EPERM
        try:
            _ioctl(notify_fd, IOCTL_NOTIF_SEND, struct.pack("=QqiI", nid, 0, -result, 0))
        except OSError:
            pass  # the task is gone (or was interrupted and will restart the call)

    def _listen_nr(self) -> int:
        nr = getattr(self, "_lnr", None)
        if nr is None:
            from . import libseccomp

            nr = self._lnr = libseccomp.resolve("listen")
        return nr

    def _observed(self) -> dict:
        obs = getattr(self, "_obs", None)
        if obs is None:
            from . import libseccomp

            obs = self._obs = {libseccomp.resolve(n): n for n in ("connect", "execve", "execveat")}
        return obs

    def _remember(self, *keys) -> None:
        import collections
        import time

        now = time.monotonic()
        rec = [now, False]
        for key in set(keys):
            q = self.recent.setdefault(key, collections.deque())
            while q and (q[0][1] or now - q[0][0] >= RECENT_S):
                q.popleft()
            q.append(rec)
        if len(self.recent) >= self._prune_at:  # (amortized: a cell trying every port costs no more per call)
            self.recent = {k: q for k, q in self.recent.items()
                           if any(not r[1] and now - r[0] < RECENT_S for r in q)}
            self._prune_at = max(4096, 2 * len(self.recent))

    def recorded(self, key) -> bool:
        """Whether a record of the broker's stands for this refusal Landlock logged (`key`:
        ("connect", port) or ("exec", path)): each of its records stands for one refusal, for
        RECENT_S seconds. (The kernel logs a refusal after the broker let the call go on.)"""
        import time

        now = time.monotonic()
        q = self.recent.get(key)
        while q:
            rec = q.popleft()
            if not rec[1] and now - rec[0] < RECENT_S:
                rec[1] = True
                if not q:
                    del self.recent[key]
                return True
        self.recent.pop(key, None)
        return False

    def _observe(self, notify_fd: int, nid: int, tid: int, name: str, args) -> None:
        """connect() or execve() that Landlock will refuse, as far as the call's arguments show:
        a record in the trail (the supervisor read them from the task's memory; a task that
        changes that memory meanwhile can make this record miss, never the refusal)."""
        import struct

        if self.trail is None or self.watch is None:
            return
        w = self.watch
        if name == "connect":
            if w["mode"] == "full":
                return
            raw = _read_mem(tid, args[1], min(int(args[2]) & 0xFFFFFFFF, 28))
            if len(raw) < 4:
                return
            family = struct.unpack_from("=H", raw)[0]
            if family not in (AF_INET, AF_INET6):
                return
            port = struct.unpack_from(">H", raw, 2)[0]
            if port in w["connect_ports"] or not self._is_tcp(notify_fd, nid, tid, int(args[0]) & 0xFFFFFFFF):
                return
            import ipaddress

            try:
                addr = str(ipaddress.ip_address(raw[4:8] if family == AF_INET else raw[8:24]))
            except ValueError:
                addr = "?"
            _ioctl(notify_fd, IOCTL_NOTIF_ID_VALID, struct.pack("=Q", nid))
            self.trail.write("connect refused", layer="landlock", category="network", seen="arguments",
                             rule=f"network.mode {w['mode']}: TCP connect only to network.tcp_connect_ports "
                                  f"{sorted(w['connect_ports'])}",
                             detail=f"connect() to {addr} port {port}", address=addr, port=port, tid=tid)
            self._remember(("connect", port))
        else:  # execve(path, ...) or execveat(dirfd, path, ..., flags)
            path = _exec_target(tid, name, args)
            if not path:
                return
            if not os.path.exists(f"/proc/{tid}/root{path}"):
                return  # (a PATH search tries names that do not exist: not a refusal)
            real = os.path.realpath(path)
            if any(within(p, r) for p in (path, real) for r in w["exec_roots"]):
                return
            _ioctl(notify_fd, IOCTL_NOTIF_ID_VALID, struct.pack("=Q", nid))
            self.trail.write("exec refused", layer="landlock" if w.get("landlock_files") else _exec_refuser(tid),
                             category="exec", seen="arguments",
                             rule="exec.allow", detail=f"{name}({path}): outside the profile's exec.allow",
                             path=path, tid=tid)
            self._remember(("exec", path), ("exec", real))

    def _is_tcp(self, notify_fd: int, nid: int, tid: int, fd: int) -> bool:
        copy = self._copy_fd(notify_fd, nid, tid, fd)
        if copy is None:
            return False
        try:
            _socket = socket_module()
            dup = os.dup(copy)
            try:
                s = _socket.socket(fileno=dup)
            except OSError:
                os.close(dup)
                return False
            try:
                return s.getsockopt(SOL_SOCKET, SO_PROTOCOL) == IPPROTO_TCP
            finally:
                s.close()
        finally:
            os.close(copy)

    def _copy_fd(self, notify_fd: int, nid: int, tid: int, fd: int) -> int | None:
        import errno
        import struct

        try:
            pidfd = os.pidfd_open(tid, PIDFD_THREAD)
        except OSError as e:
            if e.errno != errno.EINVAL:
                return None
            pidfd = os.pidfd_open(tid)
        try:
            _ioctl(notify_fd, IOCTL_NOTIF_ID_VALID, struct.pack("=Q", nid))
            copy = _libc.syscall(ctypes.c_long(SYS_PIDFD_GETFD), ctypes.c_int(pidfd), ctypes.c_int(fd), ctypes.c_uint(0))
            return None if copy < 0 else copy
        finally:
            os.close(pidfd)

    def _refused_call(self, nr: int, tid: int, name: str | None = None,
                      rule: str = "seccomp: never needed by a notebook") -> int:
        """A system call the filter sent only to be recorded (seccomp.NOTIFIED): refuse it, EPERM."""
        import errno

        names = getattr(self, "_names", None)
        if names is None:
            from . import libseccomp
            from .layers import seccomp

            names = self._names = {libseccomp.resolve(n): n for n in seccomp.NOTIFIED}
        name = name or names.get(nr, f"syscall {nr}")
        if self.trail is not None:
            self.trail.write("syscall refused", layer="seccomp", category="syscall", rule=rule, syscall=name, tid=tid,
                             errno="EPERM", detail=f"{name}() refused by the seccomp filter (recorded by the supervisor)")
        return errno.EPERM

    def _listen_for(self, notify_fd: int, nid: int, tid: int, fd: int, backlog: int) -> int:
        import errno
        import struct

        _socket = socket_module()

        try:
            pidfd = os.pidfd_open(tid, PIDFD_THREAD)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            pidfd = os.pidfd_open(tid)  # before Linux 6.9: works for a thread-group leader
        try:
            # the notification is still pending, so `tid` is still that task: the pidfd is right
            _ioctl(notify_fd, IOCTL_NOTIF_ID_VALID, struct.pack("=Q", nid))
            copy = _libc.syscall(ctypes.c_long(SYS_PIDFD_GETFD), ctypes.c_int(pidfd), ctypes.c_int(fd),
                                 ctypes.c_uint(0))
            if copy < 0:
                err = ctypes.get_errno()
                return errno.EBADF if err == errno.EBADF else errno.EPERM
        finally:
            os.close(pidfd)
        try:
            dup = os.dup(copy)
            try:
                sock = _socket.socket(fileno=dup)
            except OSError as e:
                os.close(dup)
                return e.errno or errno.ENOTSOCK
            try:
                family = sock.getsockopt(SOL_SOCKET, SO_DOMAIN)
                port = None
                if family in INET_LIKE:
                    name = sock.getsockname()
                    port = name[1] if isinstance(name, tuple) and len(name) >= 2 else None
            finally:
                sock.close()
            verdict = self.decide(family, port)
            if verdict:
                if self.trail is not None:
                    self.trail.write("listen refused", layer="seccomp", category="network", rule="network.listen_ports",
                                     detail=f"listen() on a socket of family {family}"
                                            + (f" bound to port {port}" if port else " never bound (autobind)")
                                            + ": not the kernel's own port nor in network.listen_ports",
                                     family=family, port=port, tid=tid)
                return verdict
            # the socket we looked at is the one that listens: never the fd number again
            if _libc.listen(ctypes.c_int(copy), ctypes.c_int(backlog)) != 0:
                return ctypes.get_errno() or errno.EPERM
            return 0
        finally:
            os.close(copy)
