"""Red team: servers inside the sandbox (issue 16, "listening servers get past the bind rule").

Landlock's TCP rules see bind(), not listen(): listen() on a socket that was never bound
makes Linux give it an ephemeral port (autobind), and a port Landlock lets the kernel
bind (its own ZMQ ports) can be bound again on another local address. The supervisor
now decides every listen() (sandbox_kernel/listen_broker.py, through a seccomp user
notification). Each attempt here runs in a real kernel, as root and as an ordinary
user, keeps its sockets open, and the test process (the host) then connects to every
address of this machine the socket could have been bound to, with a bounded timeout:
the effect asserted is that no connection was accepted. docs/network.md has the rules.
"""

from __future__ import annotations

import fcntl
import socket
import struct

import kernelutil
import pytest
from rtutil import attempt, run_reporting

pytestmark = pytest.mark.redteam

# `free` (restricted, as `default`) and a `full` network without servers
PROFILES = ["free", "rt-listen-full"]


@pytest.fixture(scope="module", autouse=True)
def profiles():
    kernelutil.write_profile("rt-listen-full", """
        extends: base
        network: {mode: full}
        limits:
          memory: 4GiB
          processes: 256
        """)
    kernelutil.write_profile("rt-listen-nosup", """
        extends: free
        enforcement: {pid_namespace: "off", cgroup: "off"}
        limits:
          memory: 4GiB
          processes: 256
        """)
    port = free_port()
    kernelutil.write_profile("rt-listen-servers", f"""
        extends: free
        network: {{listen_ports: [{port}]}}
        limits:
          memory: 4GiB
          processes: 256
        """)
    return {"server_port": port}


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def local_addresses() -> list[str]:
    """Every address of this machine a listener on a wildcard address would answer on:
    loopback (127.0.0.1, 127.0.0.2, ::1) and the non-loopback addresses of the interfaces."""
    out = ["127.0.0.1", "127.0.0.2"]
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for _, name in socket.if_nameindex():
            try:
                req = struct.pack("256s", name.encode()[:15])
                addr = socket.inet_ntoa(fcntl.ioctl(probe.fileno(), 0x8915, req)[20:24])  # SIOCGIFADDR
            except OSError:
                continue
            if not addr.startswith("127.") and addr not in out:
                out.append(addr)
    finally:
        probe.close()
    try:
        with open("/proc/net/if_inet6") as fh:
            for line in fh:
                hexaddr, _idx, _plen, scope = line.split()[:4]
                if scope in ("00", "10"):  # global, host (::1); link-local needs a scope id
                    out.append(socket.inet_ntop(socket.AF_INET6, bytes.fromhex(hexaddr)))
    except OSError:
        pass
    return out


ADDRESSES = local_addresses()


def reachable(ports, addresses=ADDRESSES) -> list[str]:
    """The address:port pairs where the host's connect() was accepted."""
    hits = []
    for port in sorted({p for p in ports if p}):
        for addr in addresses:
            family = socket.AF_INET6 if ":" in addr else socket.AF_INET
            s = socket.socket(family, socket.SOCK_STREAM)
            s.settimeout(2)
            try:
                s.connect((addr, port))
                hits.append(f"[{addr}]:{port}")
            except OSError:
                pass
            finally:
                s.close()
    return hits


HELPERS = r"""
import errno, os, socket, subprocess, sys
_rt_keep = globals().setdefault("_rt_keep", [])
def name(e):
    return errno.errorcode.get(e.errno, str(e.errno))
def try_listen(family=socket.AF_INET, addr=None, port=0, v6only=None):
    s = socket.socket(family, socket.SOCK_STREAM)
    _rt_keep.append(s)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(v6only))
    try:
        if addr is not None:
            s.bind((addr, port))
    except OSError as e:
        return {"bind": name(e), "port": 0}
    try:
        s.listen(8)
        res = "ok"
    except OSError as e:
        res = name(e)
    return {"listen": res, "port": s.getsockname()[1]}
"""

CLEANUP = r"""
for _s in globals().get("_rt_keep", []):
    try:
        _s.close()
    except OSError:
        pass
_rt_keep.clear()
for _p in globals().get("_rt_children", []):
    _p.kill()
"""


def cleanup(kernel) -> None:
    kernel.run(CLEANUP)


@attempt("seccomp")
@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.covers("network.listen_ports")
def test_listen_on_an_unbound_socket(pool, who, profile):
    """listen() on a socket that was never bound (IPv4, IPv6 `::` dual-stack and v6-only):
    Linux would give it an ephemeral port on every address; the host connects to each."""
    _assert_unreachable(pool.get(profile, who), """
        report({"v4": try_listen(), "v6_dual": try_listen(socket.AF_INET6, v6only=False),
                "v6_only": try_listen(socket.AF_INET6, v6only=True)})
    """)


def _assert_unreachable(k, cell: str) -> None:
    """Run `cell` (it reports {name: try_listen(...)}) and connect from the host to every port it got."""
    try:
        got = run_reporting(k, HELPERS, cell)
        hits = reachable([r["port"] for r in got.values()])
    finally:
        cleanup(k)
    assert hits == [], (hits, got)


@attempt("seccomp")
@pytest.mark.parametrize("profile", PROFILES)
def test_listen_after_bind_to_port_zero_and_wildcards(pool, who, profile):
    """bind() to port 0 (Landlock's rule sees it) or to a wildcard, v4-mapped or loopback
    address, then listen(): refused wherever the port is not listed."""
    _assert_unreachable(pool.get(profile, who), """
        report({"any4": try_listen(addr="0.0.0.0"), "lo2": try_listen(addr="127.0.0.2"),
                "any6": try_listen(socket.AF_INET6, addr="::", v6only=False),
                "mapped": try_listen(socket.AF_INET6, addr="::ffff:127.0.0.1", v6only=False),
                "lo6": try_listen(socket.AF_INET6, addr="::1")})
    """)


@attempt("seccomp")
@pytest.mark.parametrize("profile", PROFILES)
def test_kernel_port_bound_again_on_another_address(pool, who, profile):
    """The kernel's own ZMQ ports (Landlock lets them be bound) bound again on 127.0.0.2,
    0.0.0.0, `::` and this machine's other addresses, then listen()."""
    k = pool.get(profile, who)
    others = [a for a in ADDRESSES if a not in ("127.0.0.1",)]
    try:
        got = run_reporting(k, HELPERS, f"""
            from ipykernel.kernelapp import IPKernelApp
            app = IPKernelApp.instance()
            ports = [app.shell_port, app.iopub_port, app.stdin_port, app.control_port, app.hb_port]
            out = {{"ports": ports}}
            for p in ports:
                for a in {others!r} + ["0.0.0.0", "::"]:
                    fam = socket.AF_INET6 if ":" in a else socket.AF_INET
                    out[f"{{a}}:{{p}}"] = try_listen(fam, addr=a, port=p, v6only=True if fam == socket.AF_INET6 else None)
            report(out)
        """)
        ports = got.pop("ports")
        assert all(ports)
        hits = reachable(ports, others + ["::1"])
    finally:
        cleanup(k)
    assert hits == [], (hits, got)


CHILD = ("import os, socket, sys, time\n"
         "s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)\n"
         "try:\n s.listen(8); print(s.getsockname()[1], os.getpid(), flush=True)\n"
         "except OSError as e:\n print(0, os.getpid(), e.errno, flush=True)\n"
         "time.sleep(60)\n")


@attempt("seccomp")
@pytest.mark.parametrize("profile", PROFILES)
def test_listen_in_a_child_process(pool, who, profile):
    """The same from a child interpreter (subprocess), from a shell line (`!python ... &`),
    and on a socket created in the kernel and listened on in a forked child."""
    k = pool.get(profile, who)
    try:
        got = run_reporting(k, HELPERS, f"""
            import time
            _rt_children = globals().setdefault("_rt_children", [])
            child = {CHILD!r}
            p = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
            _rt_children.append(p)
            out = {{"subprocess": p.stdout.readline().split()}}
            with open("rt-child.py", "w") as fh:
                fh.write(child)
            import threading  # a `!` line in the foreground, in a thread: the cell goes on meanwhile
            threading.Thread(target=get_ipython().system, args=("python rt-child.py > rt-child.out 2>&1",),
                             daemon=True).start()
            for _ in range(300):
                if os.path.exists("rt-child.out") and open("rt-child.out").read().strip():
                    break
                time.sleep(0.1)
            out["shell"] = open("rt-child.out").read().split()
            s = socket.socket(); _rt_keep.append(s)
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    s.listen(8); msg = str(s.getsockname()[1])
                except OSError as e:
                    msg = "0 " + str(e.errno)
                os.write(w, msg.encode()); time.sleep(30); os._exit(0)
            os.close(w)
            out["fork"] = os.read(r, 64).decode().split()
            out["fork_pid"] = pid
            report(out)
        """)
        ports = [int(got[key][0]) for key in ("subprocess", "shell", "fork") if got[key]]
        hits = reachable(ports)
    finally:
        pids = []
        if isinstance(locals().get("got"), dict):
            pids = [int(got["shell"][1])] if len(got.get("shell", [])) > 1 else []
            pids += [got["fork_pid"]] if got.get("fork_pid") else []
        k.run("import os, signal\n"
              f"for _pid in {pids!r}:\n"
              "    try:\n        os.kill(_pid, signal.SIGKILL)\n    except OSError:\n        pass\n")
        cleanup(k)
    assert hits == [], (hits, got)


@attempt("seccomp")
@pytest.mark.covers("network.listen_ports")
def test_only_the_listed_server_port_listens(pool, who, profiles):
    """A profile that allows servers (network.listen_ports) gets exactly those ports: a server
    there is reachable, an unbound socket or another port still cannot listen, and UNIX
    sockets (multiprocessing) keep working."""
    k = pool.get("rt-listen-servers", who)
    port = profiles["server_port"]
    try:
        got = run_reporting(k, HELPERS, f"""
            import multiprocessing
            out = {{"listed": try_listen(addr="0.0.0.0", port={port}), "autobind": try_listen(),
                    "other": try_listen(addr="0.0.0.0", port={port} + 1 if {port} < 65535 else {port} - 1)}}
            u = socket.socket(socket.AF_UNIX); _rt_keep.append(u)
            u.bind("\\0rt-listen-" + str(os.getpid())); u.listen(1)
            with multiprocessing.Manager() as m:
                d = m.dict(); d["x"] = 1
                out["manager"] = d["x"]
            try:  # DataLoader workers hand tensors back through multiprocessing.resource_sharer (UNIX listen)
                import torch
                from torch.utils.data import DataLoader
                out["dataloader"] = float(sum(b.sum() for b in DataLoader(torch.ones(64, 4), batch_size=8,
                                                                           num_workers=2)))
            except ImportError:
                out["dataloader"] = "no torch"
            report(out)
        """)
        refused = k.run("import socket\n_rt_s = socket.socket()\n_rt_s.listen(1)")
        k.run("_rt_s.close()")
        listed = reachable([got["listed"]["port"]], ["127.0.0.1"])
        others = reachable([got["autobind"]["port"], got["other"]["port"]])
    finally:
        cleanup(k)
    assert got["manager"] == 1
    # the refusal names the profile rule (explain.py)
    assert refused.ename == "PermissionError" and f"only on ports {port}" in refused.traceback + refused.stderr, refused
    assert got["dataloader"] in (256.0, "no torch"), got
    assert listed == [f"[127.0.0.1]:{port}"], got
    assert others == [], (others, got)
    assert got["other"].get("listen", got["other"].get("bind")) in ("EPERM", "EACCES"), got


@attempt("seccomp")
def test_listen_without_a_supervisor(pool, who):
    """Without a supervisor (pid_namespace and cgroup off) nothing outside the sandbox can
    decide listen() by socket: it is refused outright once the kernel listens, UNIX sockets
    included (closed, not open); the kernel still serves."""
    k = pool.get("rt-listen-nosup", who)
    try:
        got = run_reporting(k, HELPERS, """
            u = socket.socket(socket.AF_UNIX); _rt_keep.append(u)
            u.bind("\\0rt-nosup-" + str(os.getpid()))
            try:
                u.listen(1); unix = "ok"
            except OSError as e:
                unix = name(e)
            report({"v4": try_listen(), "v6": try_listen(socket.AF_INET6, v6only=False), "unix": unix})
        """)
        hits = reachable([got["v4"]["port"], got["v6"]["port"]])
        said = k.ok("%sandbox").stdout
    finally:
        cleanup(k)
    assert hits == [], (hits, got)
    assert got["unix"] == "EPERM", got
    assert "listen() refused once the kernel's sockets listen" in said
