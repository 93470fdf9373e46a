"""The directory that holds a kernel's connection file: private whatever lies inside
it, or the kernel does not start.

A connection file holds the kernel's HMAC key: whoever reads it can run code in that kernel,
and whoever replaces it (or plants one where a restart will look) decides the key and ports
the next start uses. Kernel A shares a directory the tenant writes with kernel B (a common
working directory, a Jupyter runtime directory inside a writable home): A must neither read
B's key nor change the file B's next start reads. Where the launcher cannot make the directory
private (one the tenant writes itself, one other accounts may write, one under a /tmp that is
shared), it refuses to start, through the kernelspec's launcher, with one line that names the
directory and the fix. Through real kernels, as root and as an ordinary user; each effect is
checked from the host."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import kernelutil
import pytest
from rtutil import attempt, probe

pytestmark = pytest.mark.redteam

FIX = "Jupyter's runtime directory"


def _dir(prefix: str, who, base: str = "/var/tmp", mode: int = 0o700) -> str:
    d = tempfile.mkdtemp(prefix=prefix, dir=base)
    os.chmod(d, mode)
    if who is not None:
        os.chown(d, who.pw_uid, who.pw_gid)
    return d


def _conn_file(d: str, who) -> str:
    """A connection file as Jupyter writes one (mode 0600, the kernel's account), ports free."""
    import socket

    ports = []
    socks = []
    for _ in range(5):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    f = os.path.join(d, f"kernel-{os.urandom(4).hex()}.json")
    info = dict(zip(["shell_port", "iopub_port", "stdin_port", "control_port", "hb_port"], ports),
                ip="127.0.0.1", key=os.urandom(16).hex(), transport="tcp", signature_scheme="hmac-sha256")
    fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(info, fh)
    if who is not None:
        os.chown(f, who.pw_uid, who.pw_gid)
    return f


def _assert_refused(said: str, directory: str) -> None:
    """One clear line naming the directory and the fix, never a traceback."""
    lines = [ln for ln in said.splitlines() if "refusing to start" in ln]
    assert lines and "Traceback" not in said, said[-3000:]
    assert directory in lines[-1] and FIX in lines[-1], lines[-1]


def _start_or_refusal(kernels, *args, **kw):
    try:
        return kernels(*args, **kw), ""
    except RuntimeError as e:
        return None, str(e)


@attempt("connection_file")
def test_read_key_of_a_kernel_in_a_shared_working_directory(kernels, who):
    """Kernels A and B share a working directory (a notebook directory the tenant writes); B's
    connection file is kept there. A reads B's HMAC key from it."""
    shared = _dir("sbx-rt-connshared-", who)
    try:
        a = kernels("free", who, cwd=shared, spec_suffix="-connA")
        b, refused = _start_or_refusal(kernels, "free", who, cwd=shared, connection_dir=shared,
                                       spec_suffix="-connB")
        if b is None:  # B never ran: no kernel listens with a key kept in the shared directory
            _assert_refused(refused, shared)
            return
        key = json.loads(Path(b.km.connection_file).read_text())["key"]
        res = probe(a, f"rt_out({{'read': rt_try(lambda: open({b.km.connection_file!r}).read())}})")
        assert key not in json.dumps(res), "kernel A read kernel B's key in their shared working directory"
    finally:
        shutil.rmtree(shared, ignore_errors=True)


@attempt("connection_file")
def test_replace_connection_file_of_a_kernel_in_a_shared_working_directory(kernels, who):
    """A rewrites B's connection file in their shared working directory with a key of its own
    (Jupyter's restart reads the file again, it does not rewrite it)."""
    shared = _dir("sbx-rt-connshared-", who)
    try:
        a = kernels("free", who, cwd=shared, spec_suffix="-connA")
        b, refused = _start_or_refusal(kernels, "free", who, cwd=shared, connection_dir=shared,
                                       spec_suffix="-connB")
        if b is None:
            _assert_refused(refused, shared)
            return
        cf = b.km.connection_file
        original = Path(cf).read_text()
        planted = json.dumps(dict(json.loads(original), key="planted-by-kernel-A"))
        probe(a, f"rt_out({{'write': rt_try(lambda: rt_write({cf!r}, {planted!r}))}})")
        assert Path(cf).read_text() == original, "kernel A rewrote kernel B's connection file"
    finally:
        shutil.rmtree(shared, ignore_errors=True)


PLANT = r"""
import json, os
runtime, cf, planted = {runtime!r}, {cf!r}, {planted!r}
res = {{"read": rt_try(lambda: open(cf).read()), "write": rt_try(lambda: rt_write(cf, planted))}}
res["new"] = rt_try(lambda: rt_write(os.path.join(runtime, "kernel-planted.json"), planted))
# rename the runtime directory, or one of its parents inside the home, away and put a
# directory of A's own, with B's file name in it, where Jupyter and B's next start look
d = runtime
while d != {home!r}:
    moved = rt_try(lambda d=d: os.rename(d, d + ".rt-moved"))
    res["rename " + d] = moved
    if moved == "ok":
        os.makedirs(runtime, exist_ok=True)
        res["plant"] = rt_try(lambda: rt_write(cf, planted))
        break
    d = os.path.dirname(d)
rt_out(res)
"""


@pytest.mark.parametrize("rel", [".local/share/jupyter/runtime", "work/.runtime"])
@attempt("mount_namespace+landlock")
def test_plant_connection_file_in_a_runtime_directory_inside_the_home(kernels, who, rel):
    """Jupyter's runtime directory inside the tenant's writable home (JupyterHub's default,
    ~/.local/share/jupyter/runtime, or a JUPYTER_RUNTIME_DIR elsewhere in it): kernel A reads
    B's key there, writes or replaces B's file, or renames the runtime directory (or a parent
    inside the home) away and plants a directory holding a file of B's name, which Jupyter's
    restart of B would read."""
    home = _dir("sbx-rt-connhome-", who, mode=0o755)
    runtime = os.path.join(home, rel)
    os.makedirs(runtime, mode=0o700)
    if who is not None:
        d = runtime
        while d != home:
            os.chown(d, who.pw_uid, who.pw_gid)
            d = os.path.dirname(d)
    env = {"HOME": home, "JUPYTER_RUNTIME_DIR": runtime}
    try:
        b = kernels("free", who, cwd=home, env=env, connection_dir=runtime, spec_suffix="-rtB")
        a = kernels("free", who, cwd=home, env=env, connection_dir=runtime, spec_suffix="-rtA")
        cf = b.km.connection_file
        original = Path(cf).read_text()
        key = json.loads(original)["key"]
        inode = os.stat(runtime).st_ino
        planted = json.dumps(dict(json.loads(original), key="planted-by-kernel-A"))
        res = probe(a, PLANT.format(runtime=runtime, cf=cf, planted=planted, home=home))
        assert key not in json.dumps(res), f"kernel A read kernel B's key: {res}"
        assert os.stat(runtime).st_ino == inode, f"kernel A moved the runtime directory away: {res}"
        assert Path(cf).read_text() == original, f"kernel A changed the file B's restart reads: {res}"
        both = {os.path.basename(cf), os.path.basename(a.km.connection_file)}
        assert sorted(os.listdir(runtime)) == sorted(both), res
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _case(name: str, who, made: list[str]) -> tuple[str, str, dict, str]:
    """(connection file, working directory, environment, the directory the refusal names)."""
    cwd = _dir("sbx-rt-conncwd-", who)
    made.append(cwd)
    env: dict = {}
    if name == "working-directory":
        d = cwd
    elif name == "inside-notebook-dir":
        d = os.path.join(cwd, ".connections")
        os.mkdir(d, 0o700)
        if who is not None:
            os.chown(d, who.pw_uid, who.pw_gid)
    elif name == "symlink-to-working-directory":
        link = tempfile.mktemp(prefix="sbx-rt-connlink-", dir="/var/tmp")
        os.symlink(cwd, link)
        made.append(link)
        f = _conn_file(cwd, who)
        return os.path.join(link, os.path.basename(f)), cwd, env, cwd
    elif name == "working-directory-under-tmp":
        cwd = _dir("sbx-rt-conncwd-", who, base="/tmp")
        made.append(cwd)
        d = cwd
    elif name == "home-under-dev-shm":
        d = _dir("sbx-rt-connhome-", who, base="/dev/shm")
        made.append(d)
        env["HOME"] = d
    elif name == "writable-through-group":
        d = _dir("sbx-rt-conngrp-", who, mode=0o770)
    elif name == "writable-by-everyone":
        d = _dir("sbx-rt-connall-", who, mode=0o777)
    elif name == "owned-by-another-account":
        d = _dir("sbx-rt-connother-", None)
        os.chown(d, 65534, 65534)
        os.chmod(d, 0o755)
    elif name == "parent-writable-by-everyone":
        parent = _dir("sbx-rt-connparent-", None, mode=0o777)
        made.append(parent)
        d = os.path.join(parent, "runtime")
        os.mkdir(d, 0o700)
        if who is not None:
            os.chown(d, who.pw_uid, who.pw_gid)
        return _conn_file(d, who), cwd, env, d
    elif name == "under-shared-tmp-without-mount-namespace":
        d = _dir("sbx-rt-conntmp-", who, base="/tmp")
        env["SANDBOX_KERNEL_SIMULATE_MISSING"] = "mount_namespace"
    else:
        raise AssertionError(name)
    made.append(d)
    return _conn_file(d, who), cwd, env, d


NEIGHBOURS = ["working-directory", "inside-notebook-dir", "symlink-to-working-directory",
              "working-directory-under-tmp", "home-under-dev-shm", "writable-through-group",
              "writable-by-everyone", "owned-by-another-account", "parent-writable-by-everyone",
              "under-shared-tmp-without-mount-namespace"]


@pytest.mark.parametrize("case", NEIGHBOURS)
@attempt("connection_file")
def test_kernel_with_connection_file_in_a_directory_others_write(who, case):
    """The kernelspec's launcher with a connection file in a directory that is not private:
    the tenant's working directory (also through a symbolic link, under /tmp, or a directory
    inside it), its home under /dev/shm, a directory writable through its group or by everyone,
    one owned by another account, one inside a directory everyone may write, or under the host's
    /tmp where no mount namespace gives the kernel its own. A kernel started there could have its
    key read, or its file replaced, by another kernel or account: the command must not run."""
    made: list[str] = []
    try:
        f, cwd, env, named = _case(case, who, made)
        marker = os.path.join(cwd, "ran")  # (the working directory is writable for the command)
        p = kernelutil.run_launcher("free", "/bin/sh", "-c", f"echo ran > {marker}",
                                    user=who.pw_name if who else None, cwd=cwd, env=env, connection_file=f)
        assert not os.path.exists(marker), f"the kernel ran with its connection file in {case}: {p.stderr[-2000:]}"
        assert p.returncode == 1, p.stderr[-2000:]
        _assert_refused(p.stderr, named)
    finally:
        for m in made:
            if os.path.islink(m):
                os.unlink(m)
            else:
                shutil.rmtree(m, ignore_errors=True)


@attempt("landlock+mount_namespace")
def test_plant_a_connection_file_in_an_own_directory_outside_the_profile(who):
    """The connection file in a directory of the kernel's own account that the profile does not
    make writable (a platform's runtime directory; the account may write it, the kernel may not):
    the kernel starts, and a command inside it plants a file there, replaces its own connection
    file, or reads another file there."""
    d = _dir("sbx-rt-connown-", who)
    cwd = _dir("sbx-rt-conncwd-", who)
    try:
        f, other = _conn_file(d, who), _conn_file(d, who)
        before = {n: Path(d, n).read_bytes() for n in os.listdir(d)}
        planted = os.path.join(d, "kernel-planted.json")
        script = (f"echo own; cat {other}; echo '{{}}' > {planted}; echo '{{}}' > {f}; "
                  f"mv {other} {d}/moved.json; exit 0")
        p = kernelutil.run_launcher("free", "/bin/sh", "-c", script, user=who.pw_name if who else None, cwd=cwd,
                                    connection_file=f)
        assert p.returncode == 0 and "own" in p.stdout, p.stderr[-2000:]  # it started
        key = json.loads(before[os.path.basename(other)])["key"]
        assert key not in p.stdout, "the kernel read another connection file in its directory"
        assert {n: Path(d, n).read_bytes() for n in os.listdir(d)} == before, "the kernel changed its directory"
    finally:
        shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(cwd, ignore_errors=True)
