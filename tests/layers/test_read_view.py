"""The read view (layers/read_view.py): where the kernel has its own mount namespace, reads are
granted by what its root holds, not by Landlock's read rules (issue 21: no path walk on a
read-only open). Through real kernels, as root and as an ordinary user: what is absent, what is
there, what the host adds later, the kernel's own /dev and ptys, and where Landlock keeps the
reads (the platform's switch, an audit log, a GPU profile)."""

import json
import os
import shutil
import stat
import tempfile
import types

import pytest

from sandbox_kernel.layers import read_view

PROBE = r"""
import errno, json, os
def t(fn):
    try:
        return repr(fn())
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
layers = json.loads(os.environ["SANDBOX_KERNEL_LAYERS"])
out = {{
    "top": t(lambda: sorted(os.listdir("/"))),
    "dev": t(lambda: sorted(os.listdir("/dev"))),
    "secret_stat": t(lambda: os.stat({secret!r})),
    "secret_read": t(lambda: open({secret!r}).read()),
    "passwd": t(lambda: len(open("/etc/passwd").read()) > 0),
    "block": t(lambda: [e for e in os.scandir("/dev") if stat.S_ISBLK(e.stat(follow_symlinks=False).st_mode)]),
    "kmsg": t(lambda: os.stat("/dev/kmsg")),
    "write_cwd": t(lambda: open("rv-probe.txt", "w").write("x")),
    "truncate_etc": t(lambda: os.truncate("/etc/hostname", 0)),
    "proc_comm": t(lambda: open("/proc/self/comm", "w").write("rv")),
    "mount": layers["mount_namespace"]["detail"],
    "landlock": layers["landlock"]["detail"],
}}
import pty, stat
m, s = pty.openpty(); os.write(m, b"x\n"); out["pty"] = os.read(s, 2).decode(); os.close(m); os.close(s)
print("RV" + json.dumps(out))
"""


def _probe(k, secret: str) -> dict:
    out = k.ok("import stat\n" + PROBE.format(secret=secret)).stdout
    line = [x for x in out.splitlines() if x.startswith("RV")]
    assert line, out
    return json.loads(line[0][2:])


@pytest.fixture()
def host_secret():
    """A directory of the host outside every readable tree, readable by anyone by its mode."""
    d = tempfile.mkdtemp(prefix="sbx-rv-secret-", dir="/var/tmp")
    os.chmod(d, 0o755)
    path = os.path.join(d, "secret.txt")
    with open(path, "w") as fh:
        fh.write("the host's")
    os.chmod(path, 0o644)
    yield d, path
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.kernel
def test_the_view_holds_only_what_the_kernel_may_read(make_kernel, who, host_secret):
    """A host file outside filesystem.readable is not there at all (not even stat), the kernel's /dev
    holds no block device and no kernel log, ptys work, writes and truncate are refused where they
    were, /proc is read-only; Landlock says it handles no filesystem right (the view holds the
    file rules: filesystem.landlock_with_view is off by default)."""
    _d, secret = host_secret
    k = make_kernel("free", user=who)
    r = _probe(k, secret)
    assert r["secret_stat"] == "ENOENT" and r["secret_read"] == "ENOENT", r
    assert r["passwd"] == "True" and r["write_cwd"] == "1" and r["pty"] == "x\n", r
    assert r["truncate_etc"] in ("EROFS", "EACCES", "EPERM"), r
    assert r["proc_comm"] == "EROFS", r
    assert r["block"] == "[]" and r["kmsg"] == "ENOENT", r
    top, dev = eval(r["top"]), eval(r["dev"])
    assert "srv" not in top and "opt" not in top and "boot" not in top, top
    assert {"usr", "etc", "proc", "sys", "dev", "tmp"} <= set(top), top
    assert {"null", "zero", "urandom", "ptmx", "pts", "shm"} <= set(dev), dev
    assert "holds only what the kernel may read" in r["mount"], r["mount"]
    assert "files: the mount namespace's read view" in r["landlock"], r["landlock"]
    assert "no filesystem right handled here" in r["landlock"] and "path rules" not in r["landlock"], r["landlock"]


@pytest.fixture()
def readable_program():
    """A root-owned directory outside every exec.allow entry holding a copy of /usr/bin/true, on a
    mount that is not noexec, and a profile `free` plus that directory in filesystem.readable and
    Landlock as a second line (filesystem.landlock_with_view: true)."""
    import kernelutil
    from sandbox_kernel.policy import resolve

    d = tempfile.mkdtemp(prefix="sbx-rv-prog-", dir="/var/tmp")
    os.chmod(d, 0o755)
    prog = os.path.join(d, "mytrue")
    shutil.copy("/usr/bin/true", prog)
    os.chmod(prog, 0o755)
    readable = resolve("free").data["filesystem"]["readable"] + [d]
    kernelutil.write_profile("rv-second-line", f"""
        extends: free
        filesystem:
          readable: {json.dumps(readable)}
          landlock_with_view: true
        """)
    yield prog
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.kernel
def test_landlock_as_a_second_line_where_the_profile_asks(make_kernel, who, readable_program, host_secret):
    """filesystem.landlock_with_view: true: the read view is made as before (a host file outside
    filesystem.readable is absent), and Landlock handles its write, exec and device rights too:
    a program in a readable directory outside exec.allow, on a mount the view leaves executable,
    is refused by Landlock's exec rule (EACCES); /proc is read-only all the same."""
    _d, secret = host_secret
    k = make_kernel("rv-second-line", user=who)
    r = _probe(k, secret)
    assert r["secret_stat"] == "ENOENT" and r["write_cwd"] == "1" and r["proc_comm"] == "EROFS", r
    assert "holds only what the kernel may read" in r["mount"], r["mount"]
    assert "path rules" in r["landlock"] and "a second line" in r["landlock"], r["landlock"]
    out = k.ok(f"""
        import errno, os, subprocess
        try:
            print("RAN", subprocess.run([{readable_program!r}]).returncode)
        except OSError as e:
            print("REFUSED", errno.errorcode.get(e.errno))
        """).stdout.split()
    assert out == ["REFUSED", "EACCES"], out


@pytest.mark.kernel
def test_what_the_host_adds_later_is_not_there(make_kernel, who):
    """Entries are granted, not assumed: a directory the host makes after the kernel started,
    beside the notebook directory's parent, does not appear in the kernel's view."""
    k = make_kernel("free", user=who)
    later = tempfile.mkdtemp(prefix="sbx-rv-later-", dir="/var/tmp")
    try:
        os.chmod(later, 0o755)
        with open(os.path.join(later, "f"), "w") as fh:
            fh.write("x")
        os.chmod(os.path.join(later, "f"), 0o644)
        r = k.ok(f"import os; print(os.path.exists({later!r}), os.path.exists('/var/tmp'))").stdout.split()
        assert r[0] == "False", r
    finally:
        shutil.rmtree(later, ignore_errors=True)


@pytest.mark.kernel
def test_no_way_round_the_view_through_another_process_root(make_kernel, who, host_secret):
    """The neighbours of an absent path: /proc/1/root and /proc/1/cwd (the namespace's init, which
    is outside the kernel's Landlock domain) and the parent's root lead nowhere: Landlock's ptrace
    rule refuses them; open_by_handle_at, which names an inode without a path, is refused by
    seccomp (tests/redteam/test_syscalls.py)."""
    _d, secret = host_secret
    k = make_kernel("free", user=who)
    r = k.ok(f"""
        import errno, os
        def t(fn):
            try:
                return repr(fn())
            except OSError as e:
                return errno.errorcode.get(e.errno, str(e.errno))
        pp = os.getppid()
        print(t(lambda: os.listdir("/proc/1/root")), t(lambda: open("/proc/1/root" + {secret!r}).read()),
              t(lambda: os.listdir("/proc/1/cwd")), t(lambda: os.listdir(f"/proc/{{pp}}/root")),
              t(lambda: open(f"/proc/{{pp}}/root" + {secret!r}).read()))
        """).stdout.split()
    assert len(r) == 5, r
    for got in r:
        assert got in ("EACCES", "EPERM", "ENOENT"), r


@pytest.mark.kernel
def test_the_platform_can_keep_landlocks_reads(make_kernel, who, host_secret):
    """SANDBOX_KERNEL_READ_VIEW=off (the launcher's environment: the platform's, not a cell's):
    the view is the whole host read-only, and Landlock's read rules refuse the same file."""
    _d, secret = host_secret
    k = make_kernel("free", user=who, env={"SANDBOX_KERNEL_READ_VIEW": "off"})
    r = _probe(k, secret)
    assert r["secret_read"] == "EACCES", r
    assert r["secret_stat"] != "ENOENT", r  # (stat needs no read right: the old view shows it)
    assert "reads: Landlock's (SANDBOX_KERNEL_READ_VIEW=off)" in r["mount"], r["mount"]
    assert "reads and truncate" not in r["landlock"], r["landlock"]
    assert r["block"] == "[]" or "sd" not in r["block"], r  # (block nodes listed, not readable: test_devices)


def _policy(**over):
    gpu = {"enabled": False, "tool_dirs": []}
    gpu.update(over.pop("gpu", {}))
    data = {"user_namespace": {"host_uid": over.pop("host_uid", "same")}, "filesystem": {"writable": []},
            "exec": {"allow": []}, "capabilities": {"keep": over.pop("keep", {})}}
    return types.SimpleNamespace(gpu=gpu, tpu={"enabled": False}, data=data, audit_log=over.pop("audit_log", None))


class _Ctx:
    def __init__(self, readable, env=None, audit_fifo=None):
        self._readable = readable
        self.env = env or {}
        self.audit_fifo = self.audit_target = audit_fifo
        self.connection = self.ipc_dir = self.home = None

    def readable_paths(self, policy):
        return list(self._readable)

    def expand_paths(self, paths):
        return list(paths)

    def read_kept(self):
        return []


LOG = "/var/log/sk/audit.log"
FIFO = "/var/log/sk/.audit.log.k.1.fifo"


@pytest.mark.parametrize("case, policy, readable, env, fifo, why", [
    ("read-everywhere", _policy(), ["/"], {}, None, "filesystem.readable grants /"),
    ("no /proc", _policy(), ["/usr", "/etc"], {}, None, "leaves out /proc"),
    ("gpu", _policy(gpu={"enabled": True}), ["/usr", "/proc"], {}, None, "accelerator profile"),
    ("subordinate", _policy(host_uid="subordinate"), ["/usr", "/proc"], {}, None, "subordinate"),
    ("audit, no supervisor", _policy(audit_log=LOG), ["/usr", "/proc"], {}, None, "writes itself"),
    ("audit, its dir read", _policy(audit_log=LOG), ["/usr", "/proc", "/var/log"], {}, FIFO, "lies in /var/log"),
    ("audit", _policy(audit_log=LOG), ["/usr", "/proc"], {}, FIFO, None),
    ("switch", _policy(), ["/usr", "/proc"], {"SANDBOX_KERNEL_READ_VIEW": "off"}, None, "SANDBOX_KERNEL_READ_VIEW=off"),
    ("made", _policy(), ["/usr", "/proc"], {}, None, None),
])
def test_where_landlock_keeps_the_reads(case, policy, readable, env, fifo, why, monkeypatch):
    monkeypatch.setattr(os.path, "lexists", lambda p: True)  # (the paths need not exist on this host)
    got = read_view.why_not(policy, _Ctx(readable, env, fifo))
    assert (got is None) if why is None else (why in got), (case, got)


@pytest.mark.skipif(os.getuid() != 0, reason="a root tenant's capability")
def test_an_audit_log_with_dac_override_kept_keeps_landlocks_reads(monkeypatch):
    monkeypatch.setattr(os.path, "lexists", lambda p: True)
    policy = _policy(audit_log=LOG, keep={"CAP_DAC_OVERRIDE": "the platform's reason"})
    assert "CAP_DAC_OVERRIDE" in read_view.why_not(policy, _Ctx(["/usr", "/proc"], {}, FIFO))


@pytest.mark.parametrize("case, reads, second_line, mode, abi, handled", [
    ("no mount namespace", None, False, "none", 7, True),
    ("no read view", False, False, "none", 7, True),
    ("read view", True, False, "none", 7, False),
    ("read view, second line asked", True, True, "none", 7, True),
    ("read view, TCP rules, no scopes", True, False, "restricted", 5, False),
    ("read view, nothing else to handle", True, False, "full", 5, True),  # (a domain keeps ptrace in)
    ("read view, scopes only", True, False, "full", 6, False),
])
def test_where_landlock_handles_the_file_rights(case, reads, second_line, mode, abi, handled):
    """Landlock handles filesystem rights unless the read view holds the file rules and the profile
    asks for no second line; never so that its domain would handle nothing at all."""
    from sandbox_kernel.layers import landlock

    policy = _policy()
    policy.data["filesystem"]["landlock_with_view"] = second_line
    policy.network = {"mode": mode}
    mounted = None if reads is None else types.SimpleNamespace(reads=reads)
    assert landlock.files_handled(policy, mounted, abi) is handled, case


def test_the_dev_of_the_view_never_holds_raw_devices():
    """Whatever filesystem.readable names under /dev, block devices, raw memory and the kernel log
    stay out of the view's /dev; the standard devices and /dev/shm are in it."""
    from sandbox_kernel.policy import resolve

    blocks = [e.path for e in os.scandir("/dev") if stat.S_ISBLK(e.stat(follow_symlinks=False).st_mode)]
    asked = ["/dev", "/dev/kmsg", "/dev/null"] + blocks
    devs = read_view.devices(resolve("free"), _Ctx(asked))
    assert "/dev/null" in devs and "/dev/urandom" in devs, devs
    assert "/dev/kmsg" not in devs and "/dev/mem" not in devs, devs
    assert not [d for d in devs if os.path.exists(d) and stat.S_ISBLK(os.stat(d).st_mode)], devs
