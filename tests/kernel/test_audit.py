"""Audit log: one JSON line per refusal, from the kernel and its children; atomic lines; never fatal."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import kernelutil
import pytest
from testenv import IS_ROOT

from sandbox_kernel import audit

FIELDS = {"time", "kernel_id", "profile", "layer", "what", "detail"}


def _profile_with_log(name, log):
    return kernelutil.write_profile(name, f"""
        extends: free
        audit:
          log: {log}
        """)


def _events(path):
    with open(path) as fh:
        return [json.loads(line) for line in fh]


def _last_kernel(path):
    """The records from the last `kernel started` on (kernelutil.Kernel starts a second kernel
    where the first lost a port to another process, and the first has exited by then)."""
    events = _events(path)
    starts = [i for i, e in enumerate(events) if e["what"] == "kernel started"]
    return events[starts[-1]:] if starts else events


@pytest.mark.kernel
@pytest.mark.covers("audit.log")
def test_refusals_are_logged_from_kernel_and_children(make_kernel, tmp_path):
    log = kernelutil.AUDIT_DIR / "kernel.jsonl"
    _profile_with_log("audited", log)
    (tmp_path / "run.py").write_text("import importlib\nimportlib.import_module('py' + 'ngrok')\n")
    k = make_kernel("audited", cwd=tmp_path)
    assert k.run("import roop").status == "error"
    assert k.run("__import__(bytes([108, 105, 98, 116, 111, 114, 114, 101, 110, 116]).decode())").status == "error"
    k.ok("!python run.py")
    r = k.run("import socket; socket.create_connection(('127.0.0.1', 9), timeout=1)")
    assert r.ename == "PermissionError"
    assert "sandbox: refused by profile 'audited'" in r.traceback and "network.mode is 'restricted'" in r.traceback
    # the supervisor writes the trail: the kernel's events arrive over its channel, marked
    assert kernelutil.wait_for(lambda: any(e["layer"] == "landlock" for e in _events(log)), timeout=20)
    all_events = _events(log)
    for e in all_events:
        assert FIELDS <= set(e), e
        assert e["profile"] == "audited"
    kernel_ids = {e["kernel_id"] for e in all_events}
    assert len(kernel_ids) == 1 and kernel_ids != {""}
    assert all_events[0]["what"] == "kernel started" and all_events[0]["source"] == "supervisor"
    events = [e for e in all_events if e["source"] == "kernel"]
    assert all(e["verified"] is False for e in events)
    whats = [(e["layer"], e["what"]) for e in events]
    assert ("precheck", "import roop") in whats
    assert ("import_guard", "import libtorrent") in whats
    child = [e for e in events if e["what"] == "import pyngrok"]
    assert child and child[0]["pid"] != events[0]["pid"], "the child interpreter logs its own refusal"
    assert any(e["layer"] == "landlock" and "restricted" in e["detail"] for e in events)


@pytest.mark.kernel
def test_a_failing_log_never_crashes_the_kernel(make_kernel):
    missing = kernelutil.AUDIT_DIR / "no-such-dir" / "x.jsonl"
    kernelutil.write_profile("audit-missing-dir", f"""
        extends: free
        audit:
          log: {missing}
        """)
    # The launcher cannot create the log: it refuses to start with a clear message.
    p = subprocess.run([sys.executable, "-I", "-m", "sandbox_kernel.cli", "run", "--profile", "audit-missing-dir",
                        "--", "/usr/bin/true"], capture_output=True, text=True)
    assert p.returncode == 1 and "audit.log" in p.stderr and "Traceback" not in p.stderr
    # A log that becomes unwritable while the kernel runs: refusals still happen, no crash.
    log = kernelutil.AUDIT_DIR / "vanishing.jsonl"
    _profile_with_log("audit-vanishing", log)
    k = make_kernel("audit-vanishing")
    os.unlink(log)
    os.mkdir(log)  # now a directory: every open for append fails
    try:
        r = k.run("import roop")
        assert r.ename == "ProhibitedImportError"
        assert k.ok("print('alive')").stdout.strip() == "alive"
    finally:
        os.rmdir(log)


def _writer(path, n, tag):
    for i in range(n):
        audit.record(str(path), profile="p", layer="test", what=f"{tag}-{i}", detail="x" * 300)


def test_concurrent_writers_never_interleave(tmp_path):
    path = tmp_path / "a.jsonl"
    procs = [multiprocessing.Process(target=_writer, args=(path, 300, t)) for t in range(6)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    events = _events(path)
    assert len(events) == 1800
    assert {e["what"] for e in events} == {f"{t}-{i}" for t in range(6) for i in range(300)}


def test_kill_9_loses_at_most_the_event_being_written(tmp_path):
    path = tmp_path / "k.jsonl"
    p = multiprocessing.Process(target=_writer, args=(path, 10**7, "k"))
    p.start()
    assert kernelutil.wait_for(lambda: path.exists() and path.stat().st_size > 200_000, timeout=20)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    lines = path.read_text().split("\n")
    assert lines[-1] == "" or len(lines[-1]) < 500, "at most one partial event at the end"
    complete = [json.loads(line) for line in lines[:-1]]
    assert len(complete) > 100
    assert [e["what"] for e in complete] == [f"k-{i}" for i in range(len(complete))]
    time.sleep(0)


# --------------------------------------------------------------------------- the supervisor's trail (trail.py)

from sandbox_kernel import trail  # noqa: E402


def _trail(path, **kw):
    return trail.Trail(str(path), tenant="t1", profile="p", kernel_id="k1", **kw)


def test_trail_marks_kernel_events_and_keeps_its_own_identity(tmp_path):
    t = _trail(tmp_path / "a.jsonl")
    t.feed(b'{"kernel_id": "other", "tenant": "t2", "source": "supervisor", "verified": true, "what": "x"}\n'
           b'not json\n{"what": "partial')
    t.feed(b'"}\n')
    t.write("kernel started", layer="pid_namespace")
    a, b, c, d = _events(tmp_path / "a.jsonl")
    assert (a["what"], a["source"], a["verified"], a["kernel_id"], a["tenant"]) == ("x", "kernel", False, "k1", "t1")
    assert a["claimed"]["kernel_id"] == "other" and a["claimed"]["source"] == "supervisor"
    assert b["what"] == "malformed event" and b["raw"] == "not json"
    assert c["what"] == "partial" and c["source"] == "kernel"
    assert d["source"] == "supervisor" and d["verified"] is True


def test_trail_floods_are_counted_not_written(tmp_path):
    t = _trail(tmp_path / "f.jsonl")
    n = trail.FLOOD_BURST * 50
    t.feed(b"".join(b'{"what": "e%d"}\n' % i for i in range(n)))
    t.maybe_summarize(final=True)
    events = _events(tmp_path / "f.jsonl")
    written = [e for e in events if e["what"].startswith("e")]
    floods = [e for e in events if e["what"] == "flood"]
    assert len(written) <= trail.FLOOD_BURST + 1
    assert len(floods) == 1 and floods[0]["suppressed"] + len(written) == n


@pytest.mark.covers("audit.max_bytes", "audit.keep")
def test_trail_rotates_at_its_size_and_keeps_n_files(tmp_path):
    path = tmp_path / "r.jsonl"
    t = _trail(path, max_bytes=65536, keep=2)
    for i in range(2000):
        t.write(f"w{i}", layer="test", detail="x" * 200)
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("r.jsonl") and not p.name.endswith(".lock"))
    assert files == ["r.jsonl", "r.jsonl.1", "r.jsonl.2"]
    for name in files:
        assert (tmp_path / name).stat().st_size <= 65536
        _events(tmp_path / name)  # whole JSON lines
    last = _events(path)[-1]
    assert last["what"] == "w1999"


def _trail_writer(path):
    t = _trail(path, max_bytes=1 << 20, keep=3)
    i = 0
    while True:
        t.write(f"s{i}", layer="test", detail="y" * 300)
        i += 1


def test_kill_9_of_the_trail_writer_leaves_whole_lines(tmp_path):
    path = tmp_path / "s.jsonl"
    p = multiprocessing.Process(target=_trail_writer, args=(path,))
    p.start()
    assert kernelutil.wait_for(lambda: (tmp_path / "s.jsonl.2").exists(), timeout=60)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    for f in tmp_path.iterdir():
        if f.name.startswith("s.jsonl") and not f.name.endswith(".lock"):
            data = f.read_bytes()
            assert data.endswith(b"\n")
            [json.loads(line) for line in data.splitlines()]


def test_audit_cli_summarizes_the_trail_and_rotated_files(tmp_path):
    path = tmp_path / "c.jsonl"
    t = _trail(path, max_bytes=65536, keep=3)
    for _i in range(400):
        t.write("syscall refused", layer="seccomp", category="syscall", detail="x" * 200)
    t.feed(b'{"layer": "import_guard", "what": "import roop", "category": "deepfake"}\n')
    assert (tmp_path / "c.jsonl.1").exists()
    p = subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", "audit", "--log", str(path)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    rows = {tuple(line.split()[:3]): int(line.split()[3]) for line in p.stdout.splitlines()[2:] if line.startswith("t1")}
    n_sys = sum(1 for f in tmp_path.iterdir() if f.name.startswith("c.jsonl") and not f.name.endswith(".lock")
                for e in _events(f) if e["what"] == "syscall refused")
    assert rows == {("t1", "syscall", "supervisor"): n_sys, ("t1", "deepfake", "kernel"): 1}
    p = subprocess.run([sys.executable, "-m", "sandbox_kernel.cli", "audit", "--log", str(tmp_path / "none")],
                       capture_output=True, text=True)
    assert p.returncode == 1 and "cannot read the audit log" in p.stderr and "Traceback" not in p.stderr


def test_kernel_audit_facts_say_what_this_process_can_read():
    """doctor's audit line: an ordinary user cannot read the kernel's audit records (no
    CAP_AUDIT_READ), and says why; root reads whether audit is enabled."""
    code = "import json; from sandbox_kernel import audit_policy as a; print(json.dumps(a.kernel_audit_facts()))"
    mine = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    if IS_ROOT:
        assert mine["enabled"] in (True, False) or mine["why"], mine
        user = kernelutil.ensure_user()
        p = subprocess.run(kernelutil.setpriv(user.pw_name) + [sys.executable, "-c", code], capture_output=True,
                           text=True, cwd="/")
        theirs = json.loads(p.stdout)
        assert theirs["readable"] is False and theirs["why"], theirs
    from sandbox_kernel import audit_policy
    line = audit_policy.kernel_audit_line()
    assert line.startswith("audit trail: ") and "refused by Landlock" in line, line
    if mine["enabled"] is False and mine["readable"] and mine["landlock_abi"] >= 7:
        assert "kernel audit is OFF" in line and "host-wide" in line, line
    p = subprocess.run(kernelutil.setpriv(user.pw_name) + [sys.executable, "-c", "from sandbox_kernel import "
                       "audit_policy as a; print(a.kernel_audit_line())"], capture_output=True, text=True, cwd="/") \
        if IS_ROOT else None
    if p is not None:
        assert "unavailable to this user" in p.stdout and "CAP_AUDIT_READ" in p.stdout, p.stdout + p.stderr


def test_the_supervisors_own_refusal_records_are_bounded_too(tmp_path):
    """A cell repeating a refused call: the supervisor's records of it are limited like the
    kernel's events, and counted by kind, so older records are not rotated away."""
    t = _trail(tmp_path / "s.jsonl")
    n = trail.FLOOD_BURST * 20
    began = time.monotonic()
    for _ in range(n):
        t.write("syscall refused", layer="seccomp", category="syscall", syscall="unshare")
    took = time.monotonic() - began
    t.write("kernel exited", layer="pid_namespace")  # bookkeeping is never limited
    t.maybe_summarize(final=True)
    events = _events(tmp_path / "s.jsonl")
    written = [e for e in events if e["what"] == "syscall refused"]
    floods = [e for e in events if e["what"] == "flood"]
    assert len(written) <= trail.FLOOD_BURST + trail.FLOOD_RATE * took + 1
    assert sum(f["suppressed_refusals"].get("syscall: syscall refused", 0) for f in floods) + len(written) == n
    assert any(e["what"] == "kernel exited" for e in events)


def test_fifos_of_supervisors_that_are_gone_are_swept(tmp_path):
    log = str(tmp_path / "w.jsonl")
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".w.jsonl.k1.{dead.pid}.fifo"
    live = tmp_path / f".w.jsonl.k2.{os.getpid()}.fifo"
    os.mkfifo(stale)
    os.mkfifo(live)
    mine = trail.make_fifo(log, "k3")
    assert not stale.exists() and live.exists() and os.path.exists(mine)


@pytest.mark.covers("audit.metrics")
def test_categories_and_the_prometheus_text():
    from sandbox_kernel import audit_policy as ap

    assert ap.category_of({"what": "import roop", "category": "deepfake"}) == "deepfake"
    assert ap.category_of({"what": "syscall refused", "layer": "seccomp"}) == "syscall"
    assert ap.category_of({"what": "PermissionError: x", "layer": "landlock", "detail": "exec.allow: /tmp/x"}) == "exec"
    assert ap.category_of({"what": "PermissionError: x", "layer": "landlock",
                           "detail": "network.mode is 'restricted'"}) == "network"
    assert ap.category_of({"what": "PermissionError: x", "layer": "landlock", "detail": "/dev/nvidia1"}) == "device"
    assert ap.category_of({"what": "kernel started", "category": "syscall"}) is None
    assert ap.category_of({"what": "restore finder", "layer": "import_guard"}) is None
    text = ap.prometheus({"tenants": {'a"b\\c': {"refusals": {"syscall|supervisor": 3}, "stops": 1,
                                                    "blocked_until": 5}}})
    assert 'sandbox_kernel_refusals_total{tenant="a\\"b\\\\c",category="syscall",source="supervisor"} 3' in text
    assert 'sandbox_kernel_violation_stops_total{tenant="a\\"b\\\\c"} 1' in text
    for line in text.splitlines():  # every sample line: name{labels} value
        assert line.startswith("# ") or line.rsplit(" ", 1)[1].isdigit(), line


def test_landlock_audit_records_are_attributed_by_domain():
    """kaudit's reader: a denial of the kernel's domain is recorded (device nodes as accelerators,
    paths in hex decoded), another kernel's is not, a refused exec or connect the broker recorded
    is skipped once per record of the broker's, and a domain whose maker is gone is attributed
    through its parent."""
    from sandbox_kernel import kaudit

    class T:
        def __init__(self):
            self.recs = []

        def write(self, what, **kw):
            self.recs.append(dict(kw, what=what))

    assert kaudit.parse('audit(1.5:7): domain=1a blockers=fs.read_file path=2F746D702F612062')[1]["path"] == "/tmp/a b"
    t = T()
    child = os.getpid()
    broker_had = [("exec", "/x")]  # the broker recorded this exec from the call's arguments
    r = kaudit.LandlockAudit(socket_pair_stub(), t, child, pid_namespace=False,
                             recorded=lambda key: key in broker_had and not broker_had.remove(key))
    dead = 2 ** 22 + 12345  # above pid_max's default range: no such process
    r._event([(kaudit.AUDIT_LANDLOCK_ACCESS, {"domain": "a1", "blockers": "fs.write_file,fs.read_file",
                                              "path": "/dev/nvidia1"}),
              (kaudit.AUDIT_LANDLOCK_DOMAIN, {"domain": "a1", "status": "allocated", "pid": str(child)}),
              (kaudit.AUDIT_SYSCALL, {"pid": str(child), "ppid": "1"})])
    r._event([(kaudit.AUDIT_LANDLOCK_ACCESS, {"domain": "a1", "blockers": "fs.execute", "path": "/x"})])
    # ... its second refusal the broker did not see (a thread changed the arguments): recorded here
    r._event([(kaudit.AUDIT_LANDLOCK_ACCESS, {"domain": "a1", "blockers": "fs.execute", "path": "/x"})])
    r._event([(kaudit.AUDIT_LANDLOCK_ACCESS, {"domain": "a1", "blockers": "net.connect_tcp", "daddr": "127.0.0.1",
                                              "dest": "9"})])
    r._event([(kaudit.AUDIT_LANDLOCK_ACCESS, {"domain": "a1", "blockers": "fs.ioctl_dev", "path": "/dev/tty",
                                              "ioctlcmd": "0x5401"})])
    r._event([(kaudit.AUDIT_LANDLOCK_ACCESS, {"domain": "b2", "blockers": "fs.read_file", "path": "/etc/x"}),
              (kaudit.AUDIT_LANDLOCK_DOMAIN, {"domain": "b2", "status": "allocated", "pid": "1"})])
    r._event([(kaudit.AUDIT_LANDLOCK_ACCESS, {"domain": "c3", "blockers": "fs.read_file", "path": "/srv/s"}),
              (kaudit.AUDIT_LANDLOCK_DOMAIN, {"domain": "c3", "status": "allocated", "pid": str(dead)}),
              (kaudit.AUDIT_SYSCALL, {"pid": str(dead), "ppid": str(child)})])
    got = [(x["what"], x["layer"], x.get("path"), bool(x.get("stacked"))) for x in t.recs]
    assert got == [("device open refused", "accelerators", "/dev/nvidia1", False),
                   ("exec refused", "landlock", "/x", False),
                   ("connect refused", "landlock", None, False),
                   ("device ioctl refused", "accelerators", "/dev/tty", False),
                   ("file access refused", "landlock", "/srv/s", True)], got
    assert t.recs[0]["category"] == "device" and t.recs[0]["pid"] == child and t.recs[4]["category"] == "file"
    assert t.recs[1]["category"] == "exec" and t.recs[2]["port"] == 9 and t.recs[2]["category"] == "network"


def test_a_broker_record_stands_for_one_refusal_for_a_while(monkeypatch):
    """listen_broker.Broker.recorded: each record answers one refusal Landlock logs of the same
    port or program (by its path or its real path), and none after RECENT_S seconds."""
    from sandbox_kernel import listen_broker

    now = [100.0]
    monkeypatch.setattr("time.monotonic", lambda: now[0])
    b = listen_broker.Broker([], [])
    b._remember(("connect", 9))
    b._remember(("exec", "/w/link"), ("exec", "/w/mytrue"))
    assert b.recorded(("connect", 9)) and not b.recorded(("connect", 9))
    assert b.recorded(("exec", "/w/mytrue")) and not b.recorded(("exec", "/w/link"))
    b._remember(("connect", 9))
    now[0] += listen_broker.RECENT_S
    assert not b.recorded(("connect", 9))
    # a cell refused on every port: what it leaves behind is pruned, not scanned at every call
    for port in range(5000):
        b._remember(("connect", port))
    now[0] += listen_broker.RECENT_S
    for port in range(5000, 10000):
        b._remember(("connect", port))
    assert set(b.recent) == {("connect", p) for p in range(5000, 10000)}
    assert b.recorded(("connect", 9999)) and not b.recorded(("connect", 1))


def socket_pair_stub():
    import socket

    a, b = socket.socketpair()
    b.close()
    return a


@pytest.mark.kernel
@pytest.mark.parametrize("base", ["free", "default", "offline"])
def test_a_kernel_that_runs_nothing_leaves_no_refusal_in_the_trail(make_kernel, who, base):
    """Starting, running a harmless cell and shutting down is not a violation: the trail holds the
    start and the exit and nothing refused (a refusal there counts against the tenant: `audit`
    counters, the violation policy). ipykernel connects a socket of its debugger to the kernel's
    own shell port at start, which the network rules refuse where the debugger is off."""
    tag = f"quiet-{base}-{'user' if who else 'root'}"
    log = kernelutil.AUDIT_DIR / f"{tag}.jsonl"
    if log.exists():
        log.unlink()
    kernelutil.write_profile(tag, f"""
        extends: {base}
        audit:
          log: {log}
        """)
    if who:
        open(log, "a").close()
        os.chown(log, who.pw_uid, who.pw_gid)
    k = make_kernel(tag, user=who)
    k.ok("x = 6 * 7")
    k.kc.stop_channels()
    k.km.shutdown_kernel(now=False)
    assert kernelutil.wait_for(lambda: any(e["what"] == "kernel exited" for e in _last_kernel(log)), timeout=20), \
        _events(log)
    whats = [(e["layer"], e["what"], e.get("detail", "")) for e in _last_kernel(log)]
    assert [w[1] for w in whats] == ["kernel started", "kernel exited"], whats


@pytest.mark.kernel
@pytest.mark.parametrize("base", ["free", "default", "offline", "research"])
def test_a_kernel_that_runs_nothing_leaves_no_refusal_with_kernel_audit_on(host_audit, make_kernel, base):
    """With kernel audit on (Landlock's refusals reach the trail), a kernel's own start, a harmless
    cell and its shutdown are not refusals: nothing the kernel, IPython or ipykernel read or
    opened at start may land in the trail as a tenant's violation."""
    log = kernelutil.AUDIT_DIR / f"llquiet-{base}.jsonl"
    log.unlink(missing_ok=True)
    kernelutil.write_profile(f"audit-llquiet-{base}", json.dumps({"extends": base, "audit": {"log": str(log)}}))
    k = make_kernel(f"audit-llquiet-{base}")
    k.ok("import numpy, json, os\nx = sum(range(10))")
    k.kc.stop_channels()
    k.km.shutdown_kernel(now=False)
    assert kernelutil.wait_for(lambda: any(e["what"] == "kernel exited" for e in _last_kernel(log)), timeout=20), \
        _events(log)
    records = _last_kernel(log)
    assert records[0]["landlock_audit"].startswith("read by the supervisor"), records[0]
    assert [e["what"] for e in records] == ["kernel started", "kernel exited"], \
        [(e["layer"], e["what"], e.get("path") or e.get("detail")) for e in records]
