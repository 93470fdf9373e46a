"""Red team: side doors around the network rules (implicit connects: docs/network.md).

Landlock's TCP rules (ABI 4+) check bind() and connect(). Everything that opens a
connection without connect(), or that Landlock does not classify as TCP, needs a
seccomp rule wherever the network is not `full`. Each test runs a real kernel, as root
and as an ordinary user, under `free` (network restricted: TCP to 53, 80, 443) and
`offline` (network none), and asserts the effect (a connection reached a listener the
test controls), not only an error text. docs/network.md has the whole picture.
"""

from __future__ import annotations

import socket
import threading

import kernelutil
import pytest
from rtutil import attempt, run_reporting

pytestmark = pytest.mark.redteam

MODES = ["free", "offline"]


# --------------------------------------------------------------------------- fixtures


class EchoServer:
    """TCP listeners outside the sandbox: each connection's first bytes come back prefixed
    with b'echo:', so a cell knows for certain that it reached the listener."""

    def __init__(self):
        self._socks: list[socket.socket] = []
        self._stop = threading.Event()
        self.accepted = 0

    def listen(self, host: str = "127.0.0.1", port: int = 0) -> int:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        s.listen(16)
        s.settimeout(0.2)
        self._socks.append(s)
        threading.Thread(target=self._serve, args=(s,), daemon=True).start()
        return s.getsockname()[1]

    def _serve(self, s: socket.socket) -> None:
        while not self._stop.is_set():
            try:
                c, _ = s.accept()
            except OSError:
                continue
            self.accepted += 1
            threading.Thread(target=self._echo, args=(c,), daemon=True).start()

    @staticmethod
    def _echo(c: socket.socket) -> None:
        try:
            c.settimeout(10)
            c.sendall(b"echo:" + c.recv(64))
        except OSError:
            pass
        finally:
            c.close()

    def close(self) -> None:
        self._stop.set()
        for s in self._socks:
            s.close()


@pytest.fixture
def echo():
    srv = EchoServer()
    yield srv
    srv.close()


_HELD: list[socket.socket] = []


def closed_port() -> int:
    """A loopback port nothing listens on: a connection attempt gets ECONNREFUSED. The port stays
    bound (never listening) while the tests run, so that no other process, such as a parallel
    worker's kernel, can take it meanwhile and accept the connection."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _HELD.append(s)
    return s.getsockname()[1]


@pytest.fixture(scope="module")
def full_profile():
    kernelutil.write_profile("sidedoor-full", """
        extends: base
        network: {mode: full}
        """)
    return "sidedoor-full"


# --------------------------------------------------------------------------- cells

HELPERS = r"""
import ctypes, errno, json, os, socket, struct
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
MSG_FASTOPEN = 0x20000000
def ename(e):
    return errno.errorcode.get(e, str(e))
def attempt(fn):
    try:
        r = fn()
        return "ok" if r is None else r
    except OSError as e:
        return ename(e.errno)
def raw(nr, *args):
    conv = [ctypes.c_ulong(a & 0xFFFFFFFFFFFFFFFF) if isinstance(a, int) else a for a in args]
    r = libc.syscall(ctypes.c_long(nr), *conv)
    return "ok" if r >= 0 else ename(ctypes.get_errno())
def sockaddr_in(host, port):
    return struct.pack("<H", socket.AF_INET) + struct.pack(">H", port) + socket.inet_aton(host) + bytes(8)
def disconnect(s):
    # connect(fd, {AF_UNSPEC}) as libc would do it: the socket forgets its peer
    sa = ctypes.create_string_buffer(16)
    if libc.connect(s.fileno(), sa, 16) != 0:
        raise OSError(ctypes.get_errno(), "connect(AF_UNSPEC)")
def wait(s, writable=False):
    # inherited sockets are non-blocking (ZMQ's): wait for the connection or the answer
    import select
    r, w, _ = select.select([] if writable else [s], [s] if writable else [], [], 10)
    if not (r or w):
        raise TimeoutError("no answer")
def reply(s):
    wait(s)
    return s.recv(64).decode()
def connected(s, fn, data):
    # fn() starts a connection that carries `data` (or, on a non-blocking socket, is under way)
    try:
        fn()
    except BlockingIOError:  # EINPROGRESS: the SYN is out; finish as a tenant would
        wait(s, writable=True)
        err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err:
            raise OSError(err, os.strerror(err))
        s.sendall(data)
    return reply(s)
def inherited_tcp(port):
    # an established TCP socket the kernel holds (the heartbeat's, on the kernel's hb port),
    # found as a tenant would: /proc/self/fd, then SO_DOMAIN/SO_TYPE through socket(fileno=)
    for name in sorted(os.listdir("/proc/self/fd"), key=int):
        try:
            s = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if (s.family in (socket.AF_INET, socket.AF_INET6) and s.type == socket.SOCK_STREAM
                    and not s.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                    and s.getsockname()[1] == port):
                return s
        except OSError:
            pass
        s.close()
    raise RuntimeError("no inherited TCP socket on port %d" % port)
"""


def run(kernel, code: str) -> dict:
    return run_reporting(kernel, HELPERS, code)


def hb_port(kernel) -> int:
    return int(kernel.km.get_connection_info()["hb_port"])


# --------------------------------------------------------------------------- TCP Fast Open


@attempt("seccomp")
@pytest.mark.parametrize("profile", MODES)
def test_fast_open_on_a_new_socket(pool, who, echo, profile):
    """TCP Fast Open: sendto(MSG_FASTOPEN) connects without connect(), so Landlock's connect
    rule never sees it (github.com/landlock-lsm/linux/issues/41). Stopped by seccomp (flag rule on sendto)
    under `free`; under `offline` seccomp refuses the INET socket itself."""
    port = echo.listen()
    got = run(pool.get(profile, who), f"""
        def tfo():
            s = socket.socket()
            s.sendto(b"tfo", MSG_FASTOPEN, ("127.0.0.1", {port}))
            return reply(s)
        def plain():
            s = socket.socket()
            s.connect(("127.0.0.1", {port}))
            return reply(s)
        report({{"fastopen": attempt(tfo), "connect": attempt(plain)}})
        """)
    assert got["connect"] == ("EACCES" if profile == "free" else "EPERM"), got
    assert got["fastopen"] == "EPERM", got
    assert echo.accepted == 0


@attempt("seccomp")
@pytest.mark.parametrize("profile", MODES)
def test_fast_open_on_an_inherited_socket(make_kernel, who, echo, profile):
    """TCP Fast Open on a socket the kernel already holds: dup the heartbeat's TCP socket,
    connect(AF_UNSPEC) to forget its peer, then sendto(MSG_FASTOPEN) to any port. Works even
    where no INET socket can be created (`offline`). Stopped by seccomp (flag rule on sendto)."""
    port = echo.listen()
    k = make_kernel(profile, user=who)
    got = run(k, f"""
        s = inherited_tcp({hb_port(k)})
        disconnect(s)
        tfo = lambda: connected(s, lambda: s.sendto(b"tfo", MSG_FASTOPEN, ("127.0.0.1", {port})), b"tfo")
        report({{"fastopen": attempt(tfo)}})
        """)
    assert got["fastopen"] == "EPERM", got
    assert echo.accepted == 0


@attempt("seccomp")
@pytest.mark.parametrize("profile", MODES)
def test_fast_open_through_sendmsg_sendmmsg_and_the_socket_option(make_kernel, who, profile):
    """The neighbours of sendto(MSG_FASTOPEN): sendmsg and sendmmsg with MSG_FASTOPEN, the flag
    with garbage in the upper 32 bits of the register (the OS kernel reads an int), and
    setsockopt(IPPROTO_TCP, TCP_FASTOPEN_CONNECT). Aimed at a closed port: a flag that gets
    through ends in ECONNREFUSED (a SYN was sent). Stopped by seccomp."""
    target = closed_port()
    k = make_kernel(profile, user=who)
    got = run(k, f"""
        s = inherited_tcp({hb_port(k)})
        disconnect(s)
        addr = sockaddr_in("127.0.0.1", {target})
        buf = ctypes.create_string_buffer(b"tfo")
        class iovec(ctypes.Structure):
            _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
        class msghdr(ctypes.Structure):
            _fields_ = [("name", ctypes.c_char_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(iovec)),
                        ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                        ("flags", ctypes.c_int)]
        class mmsghdr(ctypes.Structure):
            _fields_ = [("hdr", msghdr), ("len", ctypes.c_uint)]
        iov = iovec(ctypes.cast(buf, ctypes.c_void_p), 3)
        m = mmsghdr(msghdr(addr, len(addr), ctypes.pointer(iov), 1, None, 0, 0), 0)
        one = ctypes.c_int(1)
        report({{
            "sendmsg": attempt(lambda: s.sendmsg([b"tfo"], [], MSG_FASTOPEN, ("127.0.0.1", {target}))),
            "sendmmsg": raw(307, s.fileno(), ctypes.byref(m), 1, MSG_FASTOPEN),
            "sendto_upper_bits": raw(44, s.fileno(), buf, 3, MSG_FASTOPEN | (1 << 40), addr, len(addr)),
            "sendmsg_upper_bits": raw(46, s.fileno(), ctypes.byref(m.hdr), MSG_FASTOPEN | 0xFFFF_0000_0000_0000),
            "fastopen_connect": raw(54, s.fileno(), 6, 30, ctypes.byref(one), 4),
            "fastopen_connect_upper_bits": raw(54, s.fileno(), 6 | (1 << 32), 30 | (1 << 33), ctypes.byref(one), 4),
        }})
        """)
    assert sorted(got) == sorted(["sendmsg", "sendmmsg", "sendto_upper_bits", "sendmsg_upper_bits", "fastopen_connect",
                                  "fastopen_connect_upper_bits"]), got
    for key, value in got.items():
        assert value == "EPERM", (key, got)


@attempt("seccomp")
def test_fast_open_is_left_alone_where_the_network_is_full(pool, who, full_profile):
    """Control: with network `full` the flag rules are not loaded (a SYN goes out and the
    closed port answers ECONNREFUSED), so the tests above can tell a refusal from a failure."""
    target = closed_port()
    got = run(pool.get(full_profile, who), f"""
        report({{"fastopen": attempt(lambda: socket.socket().sendto(b"x", MSG_FASTOPEN, ("127.0.0.1", {target})))}})
        """)
    assert got["fastopen"] == "ECONNREFUSED", got


# --------------------------------------------------------------------------- re-pointing an inherited socket


@attempt("landlock")
@pytest.mark.parametrize("profile", MODES)
def test_inherited_socket_repointed_at_another_host_on_a_kernel_port(make_kernel, who, echo, profile):
    """Re-pointing an inherited INET socket: connect(AF_UNSPEC) on the heartbeat's socket, then
    a plain connect() to another host on one of the kernel's own port numbers (a host that
    listens on every port receives it). Landlock used to grant TCP connect to the kernel's
    ports; nothing in the kernel connects to them, so `none` now means no TCP connect at all
    and `restricted` only the listed ports. Stopped by Landlock (ABI 4 connect rule)."""
    k = make_kernel(profile, user=who)
    info = k.km.get_connection_info()
    port = int(info["shell_port"])
    echo.listen("127.0.0.2", port)  # "another host" that listens on the kernel's port number
    got = run(k, f"""
        s = inherited_tcp({hb_port(k)})
        disconnect(s)
        def repoint():
            def go():
                s.connect(("127.0.0.2", {port}))
                s.sendall(b"hi")
            return connected(s, go, b"hi")
        def fresh():
            n = socket.socket()
            n.connect(("127.0.0.2", {port}))
            n.sendall(b"hi")
            return reply(n)
        report({{"repoint": attempt(repoint), "fresh": attempt(fresh),
                 "own_port": attempt(lambda: socket.create_connection(("127.0.0.1", {port}), timeout=5).close())}})
        """)
    assert got["repoint"] == "EACCES", got
    assert got["fresh"] == ("EACCES" if profile == "free" else "EPERM"), got
    assert got["own_port"] == ("EACCES" if profile == "free" else "EPERM"), got
    assert echo.accepted == 0


# --------------------------------------------------------------------------- other protocols and paths


@attempt("seccomp")
@pytest.mark.parametrize("profile", MODES)
def test_mptcp_and_sctp_sockets(pool, who, profile):
    """Multipath TCP (IPPROTO_MPTCP=262: Landlock took MPTCP out of its TCP rights, github.com/
    landlock-lsm/linux/issues/54) and SCTP (its sendmsg connects implicitly; Landlock has no SCTP rules). Stopped
    by seccomp (socket protocol rules)."""
    got = run(pool.get(profile, who), """
        report({
            "mptcp": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262).close()),
            "mptcp6": attempt(lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM, 262).close()),
            "mptcp_upper_bits": raw(41, 2, 1, 262 | (1 << 32)),
            "sctp_stream": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM, 132).close()),
            "sctp_seqpacket": attempt(lambda: socket.socket(socket.AF_INET, socket.SOCK_SEQPACKET, 132).close()),
            "sctp6_seqpacket": attempt(lambda: socket.socket(socket.AF_INET6, socket.SOCK_SEQPACKET, 132).close()),
            "family_upper_bits": raw(41, 2 | (1 << 32), 1, 0),
        })
        """)
    assert sorted(got) == sorted(["mptcp", "mptcp6", "mptcp_upper_bits", "sctp_stream", "sctp_seqpacket", "sctp6_seqpacket",
                                  "family_upper_bits"]), got
    for key, value in got.items():
        assert value == "EPERM", (key, got)


@attempt("seccomp")
@pytest.mark.parametrize("profile", MODES + ["full"])
def test_vsock_xdp_and_pf_key_in_every_mode(pool, who, full_profile, profile):
    """AF_VSOCK reaches the hypervisor's services on VM hosts (Firecracker's vsock proxy, guest
    agents), AF_XDP reads and writes raw frames, AF_KEY manages IPsec keys: none is "the
    network" a profile grants, so seccomp refuses them in every mode, `full` included."""
    got = run(pool.get(full_profile if profile == "full" else profile, who), """
        report({
            "vsock_stream": attempt(lambda: socket.socket(40, socket.SOCK_STREAM).close()),
            "vsock_seqpacket": attempt(lambda: socket.socket(40, socket.SOCK_SEQPACKET).close()),
            "xdp": attempt(lambda: socket.socket(44, socket.SOCK_RAW).close()),
            "pf_key": attempt(lambda: socket.socket(15, socket.SOCK_RAW, 2).close()),
            "vsock_socketpair": raw(53, 40, 1, 0, ctypes.byref((ctypes.c_int * 2)())),
        })
        """)
    assert sorted(got) == sorted(["vsock_stream", "vsock_seqpacket", "xdp", "pf_key", "vsock_socketpair"]), got
    for key, value in got.items():
        assert value == "EPERM", (key, got)


@attempt("seccomp")
def test_sendto_with_an_address_on_an_unconnected_tcp_socket(pool, who, echo):
    """sendto() with an address on an unconnected TCP socket, without MSG_FASTOPEN: Linux's TCP
    ignores the address and fails with EPIPE; nothing is connected (`free`, where TCP sockets
    exist). The OS kernel's TCP itself refuses; listed so that the path stays checked."""
    port = echo.listen()
    got = run(pool.get("free", who), f"""
        report({{"sendto": attempt(lambda: socket.socket().sendto(b"x", ("127.0.0.1", {port})))}})
        """)
    assert got["sendto"] == "EPIPE", got
    assert echo.accepted == 0


@attempt("seccomp")
@pytest.mark.parametrize("profile", MODES)
def test_io_uring_and_the_i386_socketcall(pool, who, profile):
    """io_uring's connect/send operations never pass through the socket system calls: its
    set-up is refused with ENOSYS (libraries fall back). socketcall(2) exists only in the i386
    ABI (int 0x80), whose system calls kill the process (seccomp's bad-architecture action)."""
    got = run(pool.get(profile, who), r'''
        import subprocess, sys
        shellcode = (
            "import ctypes, mmap, sys\n"
            "code = bytes.fromhex(sys.argv[1])\n"
            "buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
            "buf.write(code)\n"
            "ctypes.CFUNCTYPE(ctypes.c_long)(ctypes.addressof(ctypes.c_char.from_buffer(buf)))()\n"
            "print('survived')\n")
        # eax=102 (socketcall), ebx=1 (SYS_SOCKET), ecx=0; int 0x80; ret
        p = subprocess.run([sys.executable, "-c", shellcode, "b866000000bb0100000031c9cd80c3"],
                           capture_output=True, text=True)
        params = ctypes.create_string_buffer(120)
        report({"io_uring_setup": raw(425, 8, params), "io_uring_enter": raw(426, 0, 0, 0, 0, 0, 0),
                "io_uring_register": raw(427, 0, 0, 0, 0), "socketcall_i386": p.returncode,
                "survived": "survived" in p.stdout})
        ''')
    assert got["io_uring_setup"] == got["io_uring_enter"] == got["io_uring_register"] == "ENOSYS", got
    assert got["socketcall_i386"] == -31 and not got["survived"], got  # SIGSYS
