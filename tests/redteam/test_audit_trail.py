"""The audit trail: a cell cannot rewrite, truncate or flood it (docs/audit.md).

The trail is written by the supervisor (outside the kernel's mount namespace and Landlock
domain); the kernel's own events reach it over a FIFO and are marked ``source: kernel``,
``verified: false``. These attempts assert the EFFECT: the bytes already in the file stay
as they were, the file stays bounded and valid JSON lines.
"""

from __future__ import annotations

import json
import os
import signal
import textwrap

import kernelutil
import pytest
from rtutil import attempt, probe, user_name

FORGED = "FORGED-RECORD"


def _profile(name: str, log, extra: str = "") -> None:
    kernelutil.write_profile(name, f"""
        extends: free
        audit:
          log: {log}
        {extra}
        """)


def _lines(path) -> list[dict]:
    with open(path, "rb") as fh:
        data = fh.read()
    assert data == b"" or data.endswith(b"\n"), "the trail ends in a partial line"
    return [json.loads(line) for line in data.splitlines()]


def _wait_record(path, pred, timeout=30) -> bool:
    def found():
        try:
            return any(pred(e) for e in _lines(path))
        except (OSError, ValueError, AssertionError):
            return False
    return kernelutil.wait_for(found, timeout=timeout)


@attempt(layer="mount_namespace+landlock")
@pytest.mark.covers("audit.log")
def test_a_cell_cannot_rewrite_or_truncate_the_trail(who, kernels):
    """Open the audit log O_WRONLY/O_RDWR and pwrite a forged record at offset 0, truncate it,
    rename or unlink it: the records already written stay byte for byte; a forged event sent
    over the kernel's channel is one extra line marked unverified, with the supervisor's ids."""
    log = kernelutil.AUDIT_DIR / f"rewrite-{user_name(who)}.jsonl"
    log.unlink(missing_ok=True)
    _profile("audit-rewrite", log)
    k = kernels("audit-rewrite", who)
    assert k.run("import roop").status == "error"
    assert _wait_record(log, lambda e: e.get("what") == "import roop")
    before = log.read_bytes()
    out = probe(k, f"""
        import os
        log = {str(log)!r}
        forged = ('{{"kernel_id": "someone-else", "what": "{FORGED}"}}' + " " * 200 + "\\n").encode()
        res = {{}}
        def pw(flags):
            fd = os.open(log, flags)
            try:
                os.pwrite(fd, forged, 0)
            finally:
                os.close(fd)
        res["pwrite_wronly"] = rt_try(lambda: pw(os.O_WRONLY))
        res["pwrite_rdwr"] = rt_try(lambda: pw(os.O_RDWR))
        res["append"] = rt_try(lambda: pw(os.O_WRONLY | os.O_APPEND))
        res["trunc_open"] = rt_try(lambda: os.close(os.open(log, os.O_WRONLY | os.O_TRUNC)))
        res["truncate"] = rt_try(lambda: os.truncate(log, 0))
        res["rename"] = rt_try(lambda: os.rename(log, log + ".gone"))
        res["unlink"] = rt_try(lambda: os.unlink(log))
        res["read"] = rt_try(lambda: os.close(os.open(log, os.O_RDONLY)))  # (other kernels' records)
        fifo = os.environ.get("SANDBOX_KERNEL_AUDIT_FIFO")
        res["fifo_read"] = rt_try(lambda: os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))) if fifo else "none"
        res["fifo_unlink"] = rt_try(lambda: os.unlink(fifo)) if fifo else "none"
        # the documented channel: at most one extra line, marked as the kernel's
        ch = os.environ.get("SANDBOX_KERNEL_AUDIT_FIFO")
        if ch:
            fd = os.open(ch, os.O_WRONLY)
            os.write(fd, ('{{"kernel_id": "someone-else", "source": "supervisor", "verified": true, '
                          '"layer": "landlock", "what": "{FORGED}"}}\\n').encode())
            os.close(fd)
        res["channel"] = bool(ch)
        rt_out(res)
        """)
    after = log.read_bytes()
    assert after.startswith(before), f"records were rewritten: {out}"
    assert out["channel"], out
    assert _wait_record(log, lambda e: e.get("what") == FORGED)
    after = log.read_bytes()
    assert after.startswith(before), f"records were rewritten: {out}"
    events = _lines(log)
    forged = [e for e in events if FORGED in json.dumps(e)]
    assert len(forged) == 1, forged
    f = forged[0]
    assert f["source"] == "kernel" and f["verified"] is False, f
    assert f["kernel_id"] != "someone-else" and f["kernel_id"] == events[0]["kernel_id"], f
    assert not os.path.exists(str(log) + ".gone")
    # nor read the trail, nor steal the kernel's events from its channel, nor remove the channel
    assert "ok" not in (out["read"], out["fifo_read"], out["fifo_unlink"]), json.dumps(out)


@attempt(layer="pid_namespace")
def test_a_flood_from_a_cell_is_bounded(who, kernels):
    """200 MiB of audit events from a cell (through the kernel's own audit API and raw writes on
    its channel): the trail grows by a bounded amount and says how many events it suppressed."""
    log = kernelutil.AUDIT_DIR / f"flood-{user_name(who)}.jsonl"
    log.unlink(missing_ok=True)
    _profile("audit-flood", log)
    k = kernels("audit-flood", who)
    out = probe(k, f"""
        import os
        from sandbox_kernel import audit
        detail = "x" * 3000
        total = 0
        i = 0
        while total < 100 * 1024 * 1024:
            e = audit.record({str(log)!r}, profile="audit-flood", layer="landlock", what=f"flood {{i}}", detail=detail)
            total += len(detail) + 200
            i += 1
        sent = i
        ch = os.environ.get("SANDBOX_KERNEL_AUDIT_FIFO")
        raw = 0
        if ch:
            fd = os.open(ch, os.O_WRONLY)
            chunk = (b'{{"what": "raw flood", "detail": "' + b"y" * 1000 + b'"}}\\n') * 60
            while raw < 100 * 1024 * 1024:
                raw += os.write(fd, chunk)
            os.close(fd)
        rt_out({{"sent": sent, "raw": raw}})
        """, timeout=600)
    assert out["raw"] >= 100 * 1024 * 1024, out
    assert _wait_record(log, lambda e: e.get("what") == "flood" and e.get("suppressed", 0) > 0, timeout=60)
    k.run("1")  # the kernel stays usable
    assert log.stat().st_size < 4 * 1024 * 1024, log.stat().st_size
    events = _lines(log)
    floods = [e for e in events if e.get("what") == "flood"]
    assert all(e["source"] == "supervisor" for e in floods)


@attempt(layer="pid_namespace")
def test_kill_9_of_kernel_or_supervisor_leaves_valid_json_lines(who, kernels):
    """The kernel kills itself with SIGKILL in the middle of a flood; then the supervisor of a
    second kernel is killed with SIGKILL in the middle of one: every line of the trail is whole
    JSON, and the supervisor recorded the first kernel's end."""
    log = kernelutil.AUDIT_DIR / f"kill9-{user_name(who)}.jsonl"
    log.unlink(missing_ok=True)
    _profile("audit-kill9", log)
    k = kernels("audit-kill9", who)
    k.kc.execute("""
import os, threading
from sandbox_kernel import audit
def flood():
    while True:
        audit.record("", profile="p", layer="t", what="k9", detail="z" * 2000)
threading.Thread(target=flood, daemon=True).start()
import time; time.sleep(1)
os.kill(os.getpid(), 9)
""")  # (no reply: the kernel is gone)
    # (the namespace's init exits like the kernel: 128 + the signal)
    assert _wait_record(log, lambda e: e.get("what") == "kernel exited"
                        and (e.get("signal") == signal.SIGKILL or e.get("exit_status") == 128 + signal.SIGKILL))
    assert _wait_record(log, lambda e: e.get("what") == "k9")
    _lines(log)
    k2 = kernels("audit-kill9", who)
    k2.run("""
import os, threading
from sandbox_kernel import audit
def flood():
    while True:
        audit.record("", profile="p", layer="t", what="k9b", detail="z" * 2000)
threading.Thread(target=flood, daemon=True).start()
""", timeout=60)
    assert _wait_record(log, lambda e: e.get("what") == "k9b")
    os.kill(k2.km.provisioner.process.pid, signal.SIGKILL)
    assert kernelutil.wait_for(lambda: not k2.is_alive(), timeout=30)
    _lines(log)


DISABLE_HOOKS = """
import os, sys
import sandbox_kernel.audit as _a, sandbox_kernel.trail as _t
_a.record = lambda *a, **k: {}
_t.send = lambda *a, **k: True
os.environ.pop("SANDBOX_KERNEL_AUDIT_FIFO", None)
sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != "ImportGuard"]
"""


@attempt(layer="seccomp")
def test_refused_syscalls_and_listen_reach_the_trail_with_the_hooks_disabled(who, kernels):
    """With the import guard and the in-process audit removed first, unshare(), mount() and bpf()
    are still refused (EPERM), and so is listen() on a port the profile does not allow; each is in
    the trail, written by the supervisor, naming tenant, profile, kernel id, rule and layer."""
    log = kernelutil.AUDIT_DIR / f"oshard-{user_name(who)}.jsonl"
    log.unlink(missing_ok=True)
    _profile("audit-oshard", log)
    k = kernels("audit-oshard", who)
    out = probe(k, DISABLE_HOOKS + textwrap.dedent("""
        import ctypes, socket
        libc = ctypes.CDLL(None, use_errno=True)
        res = {}
        for name, nr, args in (("unshare", 272, (0x20000,)), ("mount", 165, (0, 0, 0, 0, 0)), ("bpf", 321, (0, 0, 0))):
            r = libc.syscall(nr, *args)
            res[name] = "ok" if r == 0 else _rt_errno.errorcode.get(ctypes.get_errno())
        s = socket.socket()
        res["listen"] = rt_try(lambda: s.listen(1))
        s.close()
        # a flood of refused calls: recorded in part, counted, never rotating older records away
        for _ in range(3000):
            libc.syscall(272, 0x20000)
        rt_out(res)
        """))
    assert out == {"unshare": "EPERM", "mount": "EPERM", "bpf": "EPERM", "listen": "EPERM"}, out

    def refused():
        ev = _lines(log)
        return {e.get("syscall") for e in ev if e.get("what") == "syscall refused"} >= {"unshare", "mount", "bpf"} \
            and any(e.get("what") == "listen refused" for e in ev)
    assert kernelutil.wait_for(refused, timeout=30)
    events = _lines(log)
    start = events[0]
    tenant = user_name(who)
    for e in events:
        if e["what"] in ("syscall refused", "listen refused"):
            assert e["source"] == "supervisor" and e["verified"] is True
            assert e["tenant"] == tenant and e["profile"] == "audit-oshard" and e["kernel_id"] == start["kernel_id"]
            assert e["layer"] == "seccomp" and e["rule"] and e["category"] in ("syscall", "network")
    assert kernelutil.wait_for(lambda: any(e["what"] == "flood" and e["suppressed_refusals"] for e in _lines(log)),
                               timeout=30)
    assert len([e for e in _lines(log) if e.get("syscall") == "unshare"]) < 1000


@attempt(layer="pid_namespace")
@pytest.mark.covers("audit.violations.categories", "audit.violations.notice", "audit.violations.stop_after",
                    "audit.violations.window_seconds", "audit.violations.block_seconds")
def test_the_violation_policy_warns_then_stops_then_blocks(who, kernels):
    """Two refusals of a banned category: the first shows the platform's notice in the notebook,
    the second stops the kernel with the reason in the trail and in the notebook; the tenant's
    next kernel is refused, saying why; the counters match the records."""
    import uuid

    import pytest

    tenant = f"t{uuid.uuid4().hex[:8]}"
    log = kernelutil.AUDIT_DIR / f"policy-{user_name(who)}.jsonl"
    log.unlink(missing_ok=True)
    kernelutil.write_profile("audit-policy", f"""
        extends: free
        audit:
          log: {log}
          violations:
            notice: "NOTICE: you may be executing code that is prohibited"
            stop_after: 2
            block_seconds: 600
        """)
    k = kernels("audit-policy", who, env={"SANDBOX_KERNEL_TENANT": tenant})
    cell = "try:\n    __import__(''.join(chr(c) for c in (114, 111, 111, 112)))\nexcept ImportError:\n    print('refused')\nimport time; time.sleep(3)\n"
    # the pre-execution check refuses this cell at once: the notice is in that cell, once
    r1 = k.run("import roop")
    assert r1.ename == "ProhibitedImportError" and \
        r1.stderr.count("NOTICE: you may be executing code that is prohibited") == 1, r1
    k.kc.execute(cell)  # the kernel is stopped during it: no reply comes
    said = []

    def stopped():
        try:
            msg = k.kc.get_iopub_msg(timeout=1)
            if msg["msg_type"] == "stream":
                said.append(msg["content"]["text"])
        except Exception:
            pass
        return not k.is_alive()
    assert kernelutil.wait_for(stopped, timeout=60)
    events = _lines(log)
    stops = [e for e in events if e["what"] == "kernel stopped"]
    assert len(stops) == 1 and stops[0]["tenant"] == tenant and "violation policy" in stops[0]["detail"]
    assert len([e for e in events if e["what"] == "violation"]) == 2
    assert any("this kernel was stopped by the platform's violation policy" in t for t in said), said
    with pytest.raises(RuntimeError):
        kernels("audit-policy", who, env={"SANDBOX_KERNEL_TENANT": tenant})
    assert any(e["what"] == "kernel refused" and e["tenant"] == tenant for e in _lines(log))
    prom = open(str(log) + ".prom").read()
    counted = [line for line in prom.splitlines()
               if line.startswith(f'sandbox_kernel_refusals_total{{tenant="{tenant}",category="deepfake"')]
    assert counted and sum(int(line.rsplit(" ", 1)[1]) for line in counted) == \
        len([e for e in events if e.get("category") == "deepfake" and e["what"] != "violation"
             and e["what"] != "kernel stopped"])


def _exec_layer(k) -> str:
    """The layer that refuses an exec outside exec.allow in kernel `k`: the mount namespace where its
    read view holds the file rules (Landlock then handles no filesystem right), else Landlock."""
    detail = probe(k, "import json, os\nrt_out(json.loads(os.environ['SANDBOX_KERNEL_LAYERS'])['landlock'])")["detail"]
    return "mount_namespace" if "no filesystem right handled" in detail else "landlock"


@attempt(layer="landlock+mount_namespace")
def test_refused_connect_and_exec_reach_the_trail_with_the_hooks_disabled(who, kernels, listener):
    """With the in-process hooks removed first, a TCP connect() to a port outside
    tcp_connect_ports (Landlock) and the exec of a program copied into the working directory
    (the noexec mount, or Landlock where there is no read view) are refused, and each is in
    the trail, recorded by the supervisor from the call's arguments, naming the layer that
    refused it."""
    log = kernelutil.AUDIT_DIR / f"llhard-{user_name(who)}.jsonl"
    log.unlink(missing_ok=True)
    _profile("audit-llhard", log)
    k = kernels("audit-llhard", who)
    out = probe(k, DISABLE_HOOKS + textwrap.dedent(f"""
        import shutil, socket, subprocess
        res = {{}}
        res["connect"] = rt_try(lambda: socket.create_connection(("127.0.0.1", {listener.port}), timeout=3).close())
        shutil.copy("/bin/true", "./mytrue")
        os.chmod("./mytrue", 0o755)
        res["exec"] = rt_try(lambda: subprocess.run([os.path.abspath("./mytrue")]).returncode)
        rt_out(res)
        """))
    assert out["connect"] in ("EACCES", "EPERM") and out["exec"] in ("EACCES", "EPERM"), out
    assert listener.accepted == 0
    exec_layer = _exec_layer(k)

    def seen():
        ev = _lines(log)
        return any(e.get("what") == "connect refused" and e.get("port") == listener.port for e in ev) \
            and any(e.get("what") == "exec refused" and e.get("path", "").endswith("/mytrue") for e in ev)
    assert kernelutil.wait_for(seen, timeout=30), [e for e in _lines(log) if e["source"] == "supervisor"]
    for e in _lines(log):
        if e["what"] in ("connect refused", "exec refused"):
            assert e["source"] == "supervisor" and e["rule"]
            assert e["layer"] == ("landlock" if e["what"] == "connect refused" else exec_layer), (e, exec_layer)
            assert e["tenant"] == user_name(who) and e["profile"] == "audit-llhard"
            assert e["category"] in ("network", "exec")


# Three execs of a program the cell wrote, none by a path the call's arguments name directly: by
# descriptor (fexecve: execveat(fd, "", AT_EMPTY_PATH)), through /proc/self/fd/N (whose "self" is
# the caller), and relative to a directory descriptor (execveat(dirfd, "mytrue", 0)). Each runs
# in a forked child that reports the errno through a pipe.
BY_DESCRIPTOR = textwrap.dedent("""
    import ctypes, errno, shutil
    shutil.copy("/bin/true", "./mytrue")
    os.chmod("./mytrue", 0o755)
    libc = ctypes.CDLL(None, use_errno=True)
    SYS_execveat = 322

    def in_child(go):
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            try:
                go()
                code = "ran"
            except OSError as e:
                code = errno.errorcode.get(e.errno, str(e.errno))
            os.write(w, code.encode())
            os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        with os.fdopen(r) as fh:
            return fh.read() or "ran"

    def fexecve():
        fd = os.open("./mytrue", os.O_RDONLY)
        os.execve(fd, ["mytrue"], {})

    def proc_self_fd():
        fd = os.open("./mytrue", os.O_RDONLY)
        os.execv(f"/proc/self/fd/{fd}", ["mytrue"])

    def execveat_relative():
        dirfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
        argv = (ctypes.c_char_p * 2)(b"mytrue", None)
        envp = (ctypes.c_char_p * 1)(None)
        if libc.syscall(SYS_execveat, dirfd, b"mytrue", argv, envp, 0) != 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))

    res = {name: in_child(go) for name, go in
           (("fexecve", fexecve), ("proc_self_fd", proc_self_fd), ("execveat_relative", execveat_relative))}
    rt_out(res)
    """)


@attempt(layer="mount_namespace+landlock")
def test_an_exec_by_descriptor_reaches_the_trail_with_the_hooks_disabled(who, kernels):
    """The supervisor recorded an exec Landlock refused only from execve()'s path argument, and
    no refusal of seccomp's execveat(AT_EMPTY_PATH) rule: an exec relative to a directory
    descriptor (execveat), through /proc/self/fd/N (the supervisor's own /proc/self is not the
    caller's) or from a descriptor (fexecve) was refused and left no record. Each must be
    refused and recorded once, naming the program or call, the rule and the layer."""
    log = kernelutil.AUDIT_DIR / f"llfd-{user_name(who)}.jsonl"
    log.unlink(missing_ok=True)
    _profile("audit-llfd", log)
    k = kernels("audit-llfd", who)
    out = probe(k, DISABLE_HOOKS + BY_DESCRIPTOR)
    assert out["fexecve"] == "EPERM", f"seccomp refuses execveat(AT_EMPTY_PATH): {out}"
    assert out["proc_self_fd"] == "EACCES" and out["execveat_relative"] == "EACCES", \
        f"Landlock refuses an exec of a program the cell wrote: {out}"

    def refused():
        ev = _lines(log)
        return ([e for e in ev if e.get("what") == "exec refused" and e.get("path", "").endswith("/mytrue")],
                [e for e in ev if e.get("what") == "syscall refused" and e.get("syscall") == "execveat"])
    assert kernelutil.wait_for(lambda: [len(x) for x in refused()] == [2, 1], timeout=30), \
        [e for e in _lines(log) if e["source"] == "supervisor"]
    execs, calls = refused()
    for e in execs + calls:
        assert e["source"] == "supervisor" and e["verified"] is True and e["rule"]
        assert e["tenant"] == user_name(who) and e["profile"] == "audit-llfd"
    layer = _exec_layer(k)
    assert all(e["layer"] == layer and e["category"] == "exec" for e in execs), (layer, execs)
    assert calls[0]["layer"] == "seccomp" and "AT_EMPTY_PATH" in calls[0]["rule"], calls
