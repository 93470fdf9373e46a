"""Mixed tenants: twelve kernels at once under four profiles, all of one uid and
one $HOME (the hardest case: nothing but the sandbox separates them). Each probes the
network, devices, imports, exec, the others' connection files, /dev/shm, /tmp and
processes. Every kernel gets exactly its own profile and reaches nothing of another.

Started through jupyter_client's MultiKernelManager, as a Jupyter server would, as root
and as an ordinary user.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import tempfile
import uuid

import kernelutil
import pytest
from testenv import IS_ROOT
from jupyter_client.multikernelmanager import MultiKernelManager

pytestmark = pytest.mark.kernel  # every test here starts a real kernel

PROFILES = {  # name -> (extends, extra YAML)
    "mt-full": ("research", ""),
    "mt-free": ("free", "imports:\n  deny: [tabnanny]\n"),
    "mt-gpu0": ("gpu", ""),
    "mt-offline": ("offline", ""),
}

PROBE = r'''
import errno, importlib, json, os, socket, subprocess
me = {me!r}
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    except ImportError as e:
        return type(e).__name__
def dyn(name):  # decided at run time: the import guard, not the pre-execution check, answers
    return "".join(chr(ord(c)) for c in name)
def tcp(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=3); s.close()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b"x", ("127.0.0.1", {listed})); s.close()
open("/tmp/" + me, "w").write(me)
open("/dev/shm/" + me, "w").write(me)
cmdlines = []
for p in os.listdir("/proc"):
    if p.isdigit():
        try:
            cmdlines.append(open(f"/proc/{{p}}/cmdline", "rb").read().decode(errors="replace"))
        except OSError:
            pass
out = {{
    "profile": json.loads(os.environ["SANDBOX_KERNEL_POLICY"])["name"],
    "tcp_listed": attempt(lambda: tcp({listed})),
    "tcp_unlisted": attempt(lambda: tcp({unlisted})),
    "udp": attempt(udp),
    "gpu0": attempt(lambda: os.close(os.open({gpu0!r}, os.O_RDWR))),
    "gpu1": attempt(lambda: os.close(os.open({gpu1!r}, os.O_RDWR))),
    "roop": attempt(lambda: importlib.import_module(dyn("roop"))),
    "tabnanny": attempt(lambda: importlib.import_module(dyn("tabnanny"))),
    "exec": attempt(lambda: subprocess.run(["/usr/bin/true"], check=True)),
    "others_conn": {{n: attempt(lambda f=f: open(f).read()) for n, f in {others!r}.items()}},
    "others_tmp": [n for n in {names!r} if n != me and (os.path.exists("/tmp/" + n) or os.path.exists("/dev/shm/" + n))],
    "others_procs": [n for n, f in {others!r}.items() if any(os.path.basename(f) in c for c in cmdlines)],
}}
print("PROBE" + json.dumps(out))
'''


@pytest.fixture(scope="module")
def listeners():
    """127.0.0.1:443 (listed by free and gpu) and another port no profile lists."""
    if not IS_ROOT:
        pytest.skip("binding port 443 needs root")
    socks = []
    for port in (443, 0):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            pytest.skip(f"cannot listen on 127.0.0.1:{port} ({e.strerror})")
        s.listen(64)
        socks.append(s)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 443))
    u.settimeout(0.2)

    acceptors = [kernelutil.Acceptor(s) for s in socks]
    yield {"listed": 443, "unlisted": socks[1].getsockname()[1]}
    for a in acceptors:
        a.close()
    u.close()


@pytest.fixture(scope="module")
def fake_gpus():
    d = tempfile.mkdtemp(prefix="sbx-mt-dev-", dir="/var/tmp")
    os.chmod(d, 0o755)
    for n in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"):
        try:
            os.mknod(os.path.join(d, n), 0o666 | stat.S_IFCHR, os.makedev(1, 3))
            os.chmod(os.path.join(d, n), 0o666)  # (mknod applies the umask)
        except PermissionError as e:
            pytest.skip(f"mknod is not permitted here ({e.strerror})")
    yield d
    __import__("shutil").rmtree(d, ignore_errors=True)


def _write_profiles(dev: str) -> None:
    gpu = (f"accelerators:\n  gpu:\n    device_pattern: {dev}/nvidia{{index}}\n"
           f"    shared_nodes: [{dev}/nvidiactl, {dev}/nvidia-uvm]\n")
    for name, (parent, extra) in PROFILES.items():
        body = f"extends: {parent}\n{extra}"
        if parent in ("gpu", "research"):
            body += gpu
        kernelutil.write_profile(name, body)


EXPECT = {
    # profile: (tcp_listed, tcp_unlisted, udp, gpu0, gpu1, tabnanny, exec). A GPU-less profile's kernel
    # does not see the device nodes at all (the mount namespace's read view: ENOENT); a GPU profile's
    # Landlock refuses the node it does not allow (EACCES).
    "mt-full": ("ok", "ok", "ok", "ok", "ok", "ok", "ok"),
    "mt-free": ("ok", "EACCES", "EPERM", "ENOENT", "ENOENT", "ProhibitedImportError", "ok"),
    "mt-gpu0": ("ok", "EACCES", "EPERM", "ok", "EACCES", "ok", "ok"),
    "mt-offline": ("EPERM", "EPERM", "EPERM", "ENOENT", "ENOENT", "ok", "EACCES"),
}


def test_twelve_kernels_four_profiles_one_uid_and_home(who, listeners, fake_gpus, tmp_path):
    _write_profiles(fake_gpus)
    user = who.pw_name if who else None
    specs = {p: kernelutil.install_spec(p, user) for p in PROFILES}
    mkm = MultiKernelManager()
    if who:  # connection files readable by the user the kernels run as
        mkm.kernel_manager_class = kernelutil.user_kernel_manager_class(who)
    cwd = kernelutil.user_workdir(who) if who else str(tmp_path)  # one working directory for all
    runtime = tempfile.mkdtemp(prefix="sbx-mt-runtime-", dir="/var/tmp")  # Jupyter's runtime dir, as a server's
    if who:
        os.chown(runtime, who.pw_uid, who.pw_gid)
    mkm.connection_dir = runtime
    run_env = dict(os.environ, JUPYTER_RUNTIME_DIR=runtime)
    if who:
        run_env.update(HOME=who.pw_dir, USER=user, LOGNAME=user)
        run_env.pop("TMPDIR", None)
    names = [f"{p}-{i}" for p in PROFILES for i in range(3)]
    ids = {}
    try:
        for n in names:
            profile = n.rsplit("-", 1)[0]
            kid = f"{n}-{uuid.uuid4().hex[:8]}"
            ids[n] = mkm.start_kernel(kernel_name=specs[profile], kernel_id=kid, cwd=cwd, env=run_env)
        conn = {n: mkm.get_kernel(ids[n]).connection_file for n in names}
        results = {}
        for n in names:
            kc = mkm.get_kernel(ids[n]).client()
            kc.start_channels()
            try:
                kc.wait_for_ready(timeout=120)
                code = PROBE.format(me=n, names=names, others={o: f for o, f in conn.items() if o != n},
                                    gpu0=f"{fake_gpus}/nvidia0", gpu1=f"{fake_gpus}/nvidia1", **listeners)
                out = []
                kc.execute_interactive(code, timeout=120, output_hook=lambda m: out.append(  # noqa: B023 - called in this iteration
                    m["content"].get("text", "") + "\n".join(m["content"].get("traceback", []))))
                lines = [line for line in "".join(out).splitlines() if line.startswith("PROBE")]
                assert lines, (n, "".join(out)[-3000:])
                line = lines[0]
                results[n] = json.loads(line[len("PROBE"):])
            finally:
                kc.stop_channels()
    finally:
        mkm.shutdown_all(now=True)
        __import__("shutil").rmtree(runtime, ignore_errors=True)
    for n, r in results.items():
        profile = n.rsplit("-", 1)[0]
        assert r["profile"] == profile, (n, r)
        got = tuple(r[k] for k in ("tcp_listed", "tcp_unlisted", "udp", "gpu0", "gpu1", "tabnanny", "exec"))
        assert got == EXPECT[profile], (n, got, EXPECT[profile])
        assert r["roop"] == "ProhibitedImportError", (n, r)
        assert all(v in ("ENOENT", "EACCES") for v in r["others_conn"].values()), (n, r["others_conn"])
        assert r["others_tmp"] == [] and r["others_procs"] == [], (n, r)
    assert len(results) == 12
