"""Tenants that share a uid and $HOME must not reach each other:
kernel A attacks kernel B (its connection file and HMAC key, its /dev/shm and /tmp files,
the IPython history they share, /proc/<B>, signals, B's ZMQ ports), and a host daemon's
pathname UNIX socket under /run. The effect: the secret was read, the file changed, the
signal stopped B, the connection was accepted."""

from __future__ import annotations

import json
import os

import kernelutil
import pytest
from rtutil import UnixDaemon, attempt, probe, start, stop

pytestmark = pytest.mark.redteam

B_SETUP = r"""
import os
secret = {secret!r}
paths = {{"shm": "/dev/shm/" + secret, "tmp": "/tmp/" + secret}}
res = {{k: rt_try(lambda p=p: rt_write(p, secret)) for k, p in paths.items()}}
rt_secret_in_history = {secret!r}  # this cell's text goes to ~/.ipython/.../history.sqlite
rt_out({{"written": res, "paths": paths, "pid_in_ns": os.getpid()}})
"""


@pytest.fixture(scope="module")
def pair(mwho):
    """Kernels A and B: same profile, same uid, same $HOME, started as a platform would."""
    secret = f"rt-secret-{os.urandom(6).hex()}"
    b = start("free", mwho, spec_suffix="-tenantB")
    a = start("free", mwho, spec_suffix="-tenantA")
    try:
        setup = probe(b, B_SETUP.format(secret=secret))
        info = json.loads(open(b.km.connection_file).read())
        host_pid = b.km.provisioner.process.pid
        yield {"a": a, "b": b, "secret": secret, "paths": setup["paths"], "key": info["key"], "info": info,
               "pid": host_pid}
    finally:
        stop(a)
        stop(b)
        for p in (f"/dev/shm/{secret}", f"/tmp/{secret}"):
            try:
                os.unlink(p)
            except OSError:
                pass


def _a(pair, code: str) -> dict:
    return probe(pair["a"], "import os\n" + code)


@attempt("mount_namespace")
def test_read_other_kernels_connection_file(pair):
    res = _a(pair, f"rt_out({{'read': rt_try(lambda: open({pair['b'].km.connection_file!r}).read())}})")
    assert pair["key"] not in str(res["read"]), "kernel A read kernel B's HMAC key"


@attempt("mount_namespace")
def test_read_other_kernels_dev_shm(pair):
    res = _a(pair, f"rt_out({{'read': rt_try(lambda: open({pair['paths']['shm']!r}).read())}})")
    assert res["read"] != pair["secret"], "kernel A read kernel B's /dev/shm file"


@attempt("mount_namespace")
def test_write_other_kernels_dev_shm(pair):
    path = pair["paths"]["shm"]
    _a(pair, f"rt_out({{'write': rt_try(lambda: rt_write({path!r}, 'overwritten by A'))}})")
    seen_by_b = probe(pair["b"], f"rt_out({{'content': rt_try(lambda: open({path!r}).read())}})")
    assert seen_by_b["content"] == pair["secret"], f"kernel A changed kernel B's /dev/shm file: {seen_by_b}"


@attempt("mount_namespace")
def test_read_other_kernels_tmp(pair):
    res = _a(pair, f"rt_out({{'read': rt_try(lambda: open({pair['paths']['tmp']!r}).read())}})")
    assert res["read"] != pair["secret"], "kernel A read kernel B's /tmp file"


@pytest.fixture(scope="module")
def tenant_pair(mwho):
    """Kernels of tenants alice (A) and bob (B) that share a uid, each with its own home
    (filesystem.home with {tenant}; the tenants' parent directory hidden). Kernels that share a
    $HOME share everything in it, history included, as one user's notebooks do."""
    import shutil
    import tempfile

    root = tempfile.mkdtemp(prefix="sbx-rt-tenants-", dir="/var/tmp")
    os.chmod(root, 0o755)
    for t in ("alice", "bob"):
        os.mkdir(os.path.join(root, t))
        if mwho is not None:
            os.chown(os.path.join(root, t), mwho.pw_uid, mwho.pw_gid)
    kernelutil.write_profile("rt-tenants", f"extends: free\nfilesystem:\n  home: {root}/{{tenant}}\n  hidden: [{root}]\n")
    secret = f"rt-secret-{os.urandom(6).hex()}"
    b = start("rt-tenants", mwho, env={"SANDBOX_KERNEL_TENANT": "bob"}, spec_suffix="-bob")
    a = start("rt-tenants", mwho, env={"SANDBOX_KERNEL_TENANT": "alice"}, spec_suffix="-alice")
    try:
        probe(b, B_SETUP.format(secret=secret))
        yield {"a": a, "b": b, "secret": secret, "bob_home": os.path.join(root, "bob")}
    finally:
        stop(a)
        stop(b)
        shutil.rmtree(root, ignore_errors=True)


@attempt("mount_namespace")
def test_read_shared_ipython_history(tenant_pair):
    """Tenant A looks for tenant B's cell text in every IPython history it can find: its own
    home's and, by path, B's."""
    pair = tenant_pair
    res = _a(pair, f"""
import glob, os, sqlite3, time
secret = {pair['secret'][::-1]!r}[::-1]  # (spelled backwards: this cell's own text must not match)
def look():
    for db in glob.glob(os.path.expanduser("~/.ipython/profile_*/history.sqlite")) + glob.glob(
            {pair['bob_home']!r} + "/.ipython/profile_*/history.sqlite"):
        con = sqlite3.connect(f"file:{{db}}?mode=ro", uri=True)
        try:
            if any(secret in (row[0] or "") for row in con.execute("select source_raw from history")):
                return "found"
        finally:
            con.close()
    return "not found"
found = "not found"
for _ in range(50):  # IPython's history thread writes shortly after each cell
    found = rt_try(look)
    if found == "found":
        break
    time.sleep(0.1)
rt_out({{"history": found}})
""")
    assert res["history"] != "found", "kernel A read kernel B's cells from the shared IPython history"


@attempt("pid_namespace+landlock")
def test_list_other_kernels_proc_fd(pair):
    res = _a(pair, f"rt_out({{'fds': rt_try(lambda: len(os.listdir('/proc/{pair['pid']}/fd')))}})")
    assert not isinstance(res["fds"], int), f"kernel A listed kernel B's open files: {res}"


@attempt("pid_namespace+landlock")
def test_read_other_kernels_environ(pair):
    res = _a(pair, f"rt_out({{'environ': rt_try(lambda: len(open('/proc/{pair['pid']}/environ', 'rb').read()))}})")
    assert not isinstance(res["environ"], int) or res["environ"] == 0, f"kernel A read kernel B's environment: {res}"


@attempt("pid_namespace+landlock")
def test_stop_other_kernel_with_a_signal(pair):
    pid = pair["pid"]
    try:
        res = _a(pair, f"import signal\nrt_out({{'kill': rt_try(lambda: os.kill({pid}, signal.SIGSTOP))}})")
        with open(f"/proc/{pid}/stat") as fh:
            state = fh.read().rsplit(")", 1)[1].split()[0]
        assert state != "T", f"kernel A stopped kernel B: {res}"
    finally:
        os.kill(pid, 18)  # SIGCONT, whatever happened


@attempt("landlock")
def test_connect_to_other_kernels_shell_port(pair):
    info = pair["info"]
    if info.get("transport", "tcp") != "tcp":
        pytest.skip("kernel B uses the ipc transport")
    res = _a(pair, f"""
import socket
rt_out({{"connect": rt_try(lambda: socket.create_connection(({info['ip']!r}, {info['shell_port']}), timeout=3).close())}})
""")
    assert res["connect"] != "ok", "kernel A connected to kernel B's shell port"


@attempt("mount_namespace")
@pytest.mark.covers("filesystem.hidden")
def test_connect_to_host_daemon_unix_socket(pool, who):
    """A pathname UNIX socket of a daemon under /run (as docker.sock, containerd.sock)."""
    path = f"/run/sbx-redteam-{os.urandom(4).hex()}.sock"
    daemon = UnixDaemon(path)
    try:
        k = pool.get("free", who)
        res = probe(k, f"""
import socket
s = socket.socket(socket.AF_UNIX)
rt_out({{"connect": rt_try(lambda: s.connect({path!r}))}})
s.close()
""")
        kernelutil.wait_for(lambda: daemon.accepted > 0, timeout=2)  # let the accept loop count it
        assert res["connect"] != "ok" and daemon.accepted == 0, f"a cell connected to a host daemon's socket: {res}"
    finally:
        daemon.close()
