"""The supervisor's listen() decisions (sandbox_kernel/listen_broker.py) and the seccomp rules
that send listen() to it, without a Jupyter kernel: a forked child loads the layer's own
listen rules and calls listen() on real sockets, this process answers as the supervisor
does. The same through real kernels, as root and as an ordinary user, is in
tests/redteam/test_listeners.py."""

from __future__ import annotations

import errno
import json
import os
import select
import socket

import pytest

from sandbox_kernel import libseccomp, listen_broker
from sandbox_kernel.layers import seccomp


def test_decide():
    b = listen_broker.Broker(kernel_ports=[40001, 40002], listen_ports=[8000])
    assert b.decide(socket.AF_UNIX, None) == 0
    assert b.decide(socket.AF_INET, 0) == errno.EPERM  # never bound: autobind
    assert b.decide(socket.AF_INET6, 8000) == 0
    assert b.decide(socket.AF_INET, 8001) == errno.EPERM
    assert b.decide(socket.AF_INET, 40001) == 0  # ZMQ, once
    assert b.decide(socket.AF_INET6, 40001) == errno.EPERM  # again, on any address or family
    assert b.decide(socket.AF_INET, 40002) == 0
    assert b.decide(listen_broker.AF_SMC, 40002) == errno.EPERM
    assert b.decide(16, None) == errno.EPERM  # netlink and every other family


class _Ctx:
    def __init__(self, connection=None):
        self.connection = connection


@pytest.mark.parametrize("ports,supervised,conn,plan", [
    ("any", True, None, "allow"), ("any", False, object(), "allow"),
    ([], True, object(), "notify"), ([8000], True, None, "notify"),
    ([], False, object(), "later"), ([], False, None, "refuse"),
])
def test_listen_plan(ports, supervised, conn, plan):
    class P:
        network = {"listen_ports": ports}
    assert seccomp.listen_plan(P, _Ctx(conn), supervised) == plan
    rules = seccomp.listen_rules(plan)
    if plan == "notify":
        assert [r.action for r in rules if r.syscall == "listen"] == ["notify"]
        assert any(r.syscall == "seccomp" for r in rules)  # no competing notifier
    elif plan == "allow":
        assert rules == []
    else:
        assert [(r.syscall, r.action) for r in rules] == [("listen", "errno")]


CHILD_CALLS = """
import json, os, socket
def attempt(make):
    s = make()
    try:
        s.listen(4)
        r = "ok"
    except OSError as e:
        r = e.errno
    port = s.getsockname()[1] if s.family != socket.AF_UNIX else None
    s.close()
    return r, port
def bound(addr, port, fam=socket.AF_INET):
    def make():
        s = socket.socket(fam); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((addr, port)); return s
    return make
def unix():
    s = socket.socket(socket.AF_UNIX); s.bind("\\0sbx-broker-test-%d" % os.getpid()); return s
out = {"unix": attempt(unix), "autobind4": attempt(socket.socket),
       "autobind6": attempt(lambda: socket.socket(socket.AF_INET6)),
       "kernel_first": attempt(bound("127.0.0.1", KPORT)), "kernel_again": attempt(bound("127.0.0.2", KPORT)),
       "listed": attempt(bound("127.0.0.1", LPORT)), "other": attempt(bound("127.0.0.1", 0))}
import ctypes
out["new_listener"] = ctypes.CDLL(None, use_errno=True).syscall(SECCOMP_NR, 1, 8, 0) == -1 and ctypes.get_errno()
"""


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_the_supervisor_answers_listen_for_a_filtered_child():
    try:
        libseccomp.library()
    except OSError:
        pytest.skip("libseccomp is not installed")
    kport, lport = _free_port(), _free_port()
    broker = listen_broker.Broker(kernel_ports=[kport], listen_ports=[lport])
    sup, kern = listen_broker.pair()
    out_r, out_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the sandboxed side: the layer's rules, the listener handed over, then the calls
        try:
            sup.close()
            os.close(out_r)
            f = seccomp.build(libseccomp, seccomp.listen_rules("notify"))
            f.load()
            seccomp._hand_over(f, kern)
            kern.close()
            ns = {"KPORT": kport, "LPORT": lport, "SECCOMP_NR": libseccomp.resolve("seccomp")}
            exec(CHILD_CALLS, ns)
            os.write(out_w, json.dumps(ns["out"]).encode())
        finally:
            os._exit(0)
    kern.close()
    os.close(out_w)
    notify_fd = listen_broker.receive_listener(sup)
    sup.close()
    assert notify_fd is not None
    poller = select.poll()
    poller.register(notify_fd, select.POLLIN)
    poller.register(out_r, select.POLLIN)
    data = b""
    while True:
        events = dict(poller.poll(60_000))
        assert events, "the child neither called listen() nor finished"
        if notify_fd in events and events[notify_fd] & select.POLLIN:
            broker.handle(notify_fd)
        if out_r in events:
            chunk = os.read(out_r, 4096)
            if not chunk:
                break
            data += chunk
    os.waitpid(pid, 0)
    os.close(notify_fd)
    os.close(out_r)
    got = json.loads(data)
    assert got["unix"][0] == "ok"
    assert got["autobind4"] == [errno.EPERM, 0] and got["autobind6"] == [errno.EPERM, 0]
    assert got["kernel_first"][0] == "ok" and got["kernel_again"][0] == errno.EPERM
    assert got["listed"][0] == "ok"
    assert got["other"][0] == errno.EPERM
    assert got["new_listener"] == errno.EPERM
