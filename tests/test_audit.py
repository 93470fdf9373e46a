"""Audit log: one JSON line per refusal, from the kernel and its children; atomic lines; never fatal."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import kernelutil

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
    events = _events(log)
    for e in events:
        assert FIELDS <= set(e), e
        assert e["profile"] == "audited"
    kernel_ids = {e["kernel_id"] for e in events}
    assert len(kernel_ids) == 1 and kernel_ids != {""}
    whats = [(e["layer"], e["what"]) for e in events]
    assert ("precheck", "import roop") in whats
    assert ("import_guard", "import libtorrent") in whats
    child = [e for e in events if e["what"] == "import pyngrok"]
    assert child and child[0]["pid"] != events[0]["pid"], "the child interpreter logs its own refusal"
    assert any(e["layer"] == "landlock" and "restricted" in e["detail"] for e in events)


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
