"""Device opens and file reads Landlock refuses reach the trail through the supervisor (docs/audit.md).

A cell removes the import guard and the in-process audit first, then opens a (fake) GPU node
the profile does not list and reads a file outside filesystem.readable, in the kernel and in a
program it runs. Landlock refuses each (the EFFECT: nothing was opened or read); the supervisor,
outside the sandbox, reads Landlock's kernel audit records (AUDIT_LANDLOCK_ACCESS, Landlock ABI
7) and writes them to the trail with tenant, profile, kernel id, rule and layer.

Kernel audit is host-wide and off on many hosts: the fixture turns it on for the test only and
restores what it found. As an ordinary user the supervisor has no CAP_AUDIT_READ: the refusals
still happen, and the trail's first record says that they are not recorded, and why.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
import textwrap

import pytest

import kernelutil
from rtutil import attempt, probe, user_name
from test_audit_trail import BY_DESCRIPTOR, DISABLE_HOOKS, _lines



@pytest.fixture
def fake_world():
    """A fake GPU 0 (listed) and GPU 1 (present, not listed), and a world-readable file outside
    filesystem.readable, in directories the tenant cannot write."""
    d = tempfile.mkdtemp(prefix="sbx-llaudit-", dir="/var/tmp")
    os.chmod(d, 0o755)
    for n in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        os.mknod(os.path.join(d, n), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod(os.path.join(d, n), 0o666)
    secret = os.path.join(d, "secret.txt")
    with open(secret, "w") as fh:
        fh.write("host data\n")
    os.chmod(secret, 0o644)
    yield d, secret
    shutil.rmtree(d, ignore_errors=True)


def _profile(name, log, d, **more) -> None:
    kernelutil.write_profile(name, json.dumps({
        "extends": "free", **more,
        "audit": {"log": str(log)},
        "accelerators": {"gpu": {"enabled": True, "devices": [0], "device_pattern": os.path.join(d, "nvidia{index}"),
                                 "shared_nodes": [os.path.join(d, "nvidiactl"), os.path.join(d, "nvidia-uvm")],
                                 "caps_dir": os.path.join(d, "nvidia-caps"),
                                 "capabilities_root": os.path.join(d, "capabilities")}}}))


@attempt(layer="landlock")
def test_device_open_and_file_read_refused_by_landlock_reach_the_trail(who, kernels, host_audit, fake_world):
    d, secret = fake_world
    log = kernelutil.AUDIT_DIR / f"llkaudit-{user_name(who)}.jsonl"
    log.unlink(missing_ok=True)
    _profile("audit-llkaudit", log, d)
    k = kernels("audit-llkaudit", who)
    gpu0, gpu1 = os.path.join(d, "nvidia0"), os.path.join(d, "nvidia1")
    out = probe(k, DISABLE_HOOKS + textwrap.dedent(f"""
        import subprocess
        def rw(p):
            os.close(os.open(p, os.O_RDWR))
            return "opened"
        def rd(p):
            with open(p) as fh:
                return "read " + fh.read()
        res = {{"gpu0": rt_try(lambda: rw({gpu0!r})), "gpu1": rt_try(lambda: rw({gpu1!r})),
                "secret": rt_try(lambda: rd({secret!r}))}}
        p = subprocess.run(["cat", {secret!r}], capture_output=True, text=True)
        res["cat"] = p.stdout or p.stderr.strip()
        rt_out(res)
        """))
    assert out["gpu0"] == "opened", f"the listed GPU must open (control): {out}"
    assert out["gpu1"] in ("EACCES", "EPERM"), out
    assert out["secret"] in ("EACCES", "EPERM") and "host data" not in out["cat"], out
    start = _lines(log)[0]
    assert start["what"] == "kernel started"
    if who is not None:
        # an ordinary user's supervisor cannot join the kernel audit group: the trail says so
        assert start["landlock_audit"].startswith("not recorded by the supervisor") \
            and "CAP_AUDIT_READ" in start["landlock_audit"], start
        return
    assert start["landlock_audit"].startswith("read by the supervisor"), start

    def seen():
        ev = [e for e in _lines(log) if e["source"] == "supervisor"]
        dev = any(e["what"] == "device open refused" and e.get("path") == gpu1 for e in ev)
        files = [e for e in ev if e["what"] == "file access refused" and e.get("path") == secret]
        return dev and len({e.get("pid") for e in files}) >= 2  # the kernel's open and cat's
    assert kernelutil.wait_for(seen, timeout=30), [e for e in _lines(log) if e["source"] == "supervisor"]
    for e in _lines(log):
        if e["what"] in ("device open refused", "file access refused"):
            assert e["source"] == "supervisor" and e["verified"] is True and e["seen"] == "kernel audit"
            assert e["tenant"] == "root" and e["profile"] == "audit-llkaudit" and e["kernel_id"] == start["kernel_id"]
            assert e["rule"].startswith("landlock fs.")
            assert e["path"] != gpu0, f"a granted open was recorded as refused: {e}"
            if e["what"] in ("device open refused", "device ioctl refused"):
                assert e["layer"] == "accelerators" and e["category"] == "device"
            else:
                assert e["layer"] == "landlock" and e["category"] == "file"


STACK = r"""
import ctypes, errno, json, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl(38, 1, 0, 0, 0)
class Attr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]
out = {}
for name, flag in (("same_exec_off", 1), ("subdomains_off", 4)):
    r = libc.syscall(446, -1 if flag == 4 else 0, flag)
    out[name] = "ok" if r == 0 else errno.errorcode.get(ctypes.get_errno())
attr = Attr(1 << 2, 0, 0)  # handles read_file, grants nothing: denies every file read
fd = libc.syscall(444, ctypes.byref(attr), ctypes.sizeof(attr), 0)
out["stack"] = "ok" if libc.syscall(446, fd, 0) == 0 else errno.errorcode.get(ctypes.get_errno())
try:
    open(sys.argv[1]).read()
    out["read"] = "read"
except OSError as e:
    out["read"] = errno.errorcode.get(e.errno)
print(json.dumps(out), flush=True)
"""


@attempt(layer="seccomp+landlock")
def test_a_stacked_landlock_domain_neither_silences_nor_hides_the_refusals(who, kernels, host_audit, fake_world):
    """A cell's process turns Landlock's refusal logs off (LANDLOCK_RESTRICT_SELF_LOG_*_OFF:
    refused by seccomp), then stacks a domain of its own that refuses every read and reads the
    file outside the grants: refused, and (as root) in the trail, marked as decided by the
    stacked domain."""
    d, secret = fake_world
    log = kernelutil.AUDIT_DIR / f"llstack-{user_name(who)}.jsonl"
    log.unlink(missing_ok=True)
    _profile("audit-llstack", log, d)
    k = kernels("audit-llstack", who)
    out = probe(k, DISABLE_HOOKS + textwrap.dedent(f"""
        import json, subprocess, sys
        p = subprocess.run([sys.executable, "-c", {STACK!r}, {secret!r}], capture_output=True, text=True)
        rt_out(json.loads(p.stdout) if p.stdout else {{"err": p.stderr[-500:]}})
        """))
    assert out.get("same_exec_off") == "EPERM" and out.get("subdomains_off") == "EPERM", out
    assert out.get("stack") == "ok" and out.get("read") in ("EACCES", "EPERM"), out
    if who is not None:
        return  # (an ordinary user's supervisor reads no kernel audit: see the test above)

    def seen():
        return any(e["what"] == "file access refused" and e.get("path") == secret and e.get("stacked")
                   for e in _lines(log))
    assert kernelutil.wait_for(seen, timeout=30), [e for e in _lines(log) if e["source"] == "supervisor"]
    rec = next(e for e in _lines(log) if e["what"] == "file access refused" and e.get("path") == secret)
    assert rec["source"] == "supervisor" and rec["profile"] == "audit-llstack" and "stacked" in rec["rule"]


@attempt(layer="landlock")
def test_refusals_reach_the_trail_from_a_kernel_on_a_host_uid_of_its_own(kernels, host_audit, fake_world):
    """user_namespace.host_uid: subordinate (the supervisor's child is a relay on a host uid of the
    kernel's own): the supervisor still finds the kernel's Landlock domain and records its refusals."""
    d, secret = fake_world
    log = kernelutil.AUDIT_DIR / "llsubuid-root.jsonl"
    log.unlink(missing_ok=True)
    _profile("audit-llsubuid", log, d, user_namespace={"host_uid": "subordinate"})
    k = kernels("audit-llsubuid", None)
    out = probe(k, DISABLE_HOOKS + f"""
def rw(p):
    os.close(os.open(p, os.O_RDWR))
    return "opened"
rt_out({{"gpu1": rt_try(lambda: rw({os.path.join(d, "nvidia1")!r})), "secret": rt_try(lambda: open({secret!r}).read())}})
""")
    assert out == {"gpu1": "EACCES", "secret": "EACCES"}, out

    def seen():
        ev = [e for e in _lines(log) if e["source"] == "supervisor"]
        return {e["what"] for e in ev if e.get("seen") == "kernel audit"} >= {"device open refused", "file access refused"}
    assert kernelutil.wait_for(seen, timeout=30), _lines(log)



# connect()s whose sockaddr a second thread flips between an allowed port (443: nothing listens,
# ECONNREFUSED) and a refused one while the call waits for the supervisor: the broker may read
# one port and the kernel use the other.
RACE = textwrap.dedent("""
    import ctypes, errno, socket, struct, threading
    libc = ctypes.CDLL(None, use_errno=True)
    addr = ctypes.create_string_buffer(struct.pack("=H", socket.AF_INET) + struct.pack(">H", 443)
                                       + socket.inet_aton("127.0.0.1") + bytes(8), 16)
    ports = [struct.pack(">H", 443), struct.pack(">H", {port})]
    stop = []
    def flip():
        i = 0
        while not stop:
            ctypes.memmove(ctypes.addressof(addr) + 2, ports[i & 1], 2)
            i += 1
    th = threading.Thread(target=flip)
    th.start()
    codes = []
    for _ in range({n}):
        s = socket.socket()
        r = libc.connect(s.fileno(), addr, 16)
        codes.append("ok" if r == 0 else errno.errorcode.get(ctypes.get_errno()))
        s.close()
    stop.append(1)
    th.join()
    res["raced"] = {{c: codes.count(c) for c in set(codes)}}
    """)


@attempt(layer="landlock")
def test_each_refused_exec_and_connect_is_recorded_once_with_kernel_audit_on(kernels, host_audit, fake_world,
                                                                            listener):
    """With kernel audit on, the supervisor hears of a refused connect or exec twice: from the
    call's arguments (the broker, before Landlock decides) and from Landlock's log. It wrote the
    first and dropped every second one, so a thread that changed the arguments while the
    broker read them (the seccomp_unotify(2) race) hid the refusal; now Landlock's record is
    kept where no record of the broker's stands for it. Each refusal is in the trail once: one
    connect and the execs by descriptor exactly once, and of racing connects at least as many
    records of the refused port as connects Landlock refused."""
    d, secret = fake_world
    log = kernelutil.AUDIT_DIR / "llonce-root.jsonl"
    log.unlink(missing_ok=True)
    _profile("audit-llonce", log, d)
    k = kernels("audit-llonce", None)
    out = probe(k, DISABLE_HOOKS + BY_DESCRIPTOR.replace("rt_out(res)", "") + textwrap.dedent(f"""
        import socket
        res["connect"] = rt_try(lambda: socket.create_connection(("127.0.0.1", {listener.port}), timeout=3).close())
        """) + RACE.format(port=listener.port, n=300) + textwrap.dedent(f"""
        res["marker"] = rt_try(lambda: open({secret!r}).read())
        rt_out(res)
        """))
    assert out["fexecve"] == "EPERM" and out["proc_self_fd"] == out["execveat_relative"] == "EACCES", out
    assert out["connect"] == "EACCES" and out["marker"] == "EACCES", out
    assert set(out["raced"]) <= {"EACCES", "ECONNREFUSED"}, out
    assert listener.accepted == 0

    def marker():  # Landlock's log is read in order: once the last refusal is in, so is every earlier one
        return any(e["what"] == "file access refused" and e.get("path") == secret for e in _lines(log))
    assert kernelutil.wait_for(marker, timeout=30), [e for e in _lines(log) if e["source"] == "supervisor"]
    ev = [e for e in _lines(log) if e["source"] == "supervisor"]
    execs = [e for e in ev if e["what"] == "exec refused" and e.get("path", "").endswith("/mytrue")]
    calls = [e for e in ev if e["what"] == "syscall refused" and e.get("syscall") == "execveat"]
    assert len(execs) == 2 and len(calls) == 1, ev
    connects = [e for e in ev if e["what"] == "connect refused" and e.get("port") == listener.port]
    refused = 1 + out["raced"].get("EACCES", 0)
    seen = {s: sum(e.get("seen") == s for e in connects) for s in ("arguments", "kernel audit")}
    print(f"refused connects {refused}, records {len(connects)} {seen}")
    assert len(connects) >= refused, (refused, seen)
    assert all(e["layer"] == "landlock" and e["category"] == "network" and e["verified"] for e in connects)
